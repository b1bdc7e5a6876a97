"""Reusable building blocks: the convolution, and the conv and dense blocks the models are made of.

Maps are NHWC, `[batch, height, width, channels]`, or sequences NLC,
`[batch, length, channels]`: a `ConvBlock` convolves and pools over the axes
between the batch and the channels, so one block serves both (a kernel size
k is k×k on an image and k long on a sequence). `Embedding` turns token ids
`[batch, length]` into a sequence. How each block is computed (XLA's
operations or a compiled CPU kernel) is decided in `cnn_jax.kernels.dispatch`.
"""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import canonicalize_dtype, promote_dtype

from cnn_jax.kernels import dispatch
from cnn_jax.kernels.fused import BatchNormAct, BatchNormReluMaxPool
from cnn_jax.layers import activations, pooling
from cnn_jax.layers.pooling import Pooling, apply_pool

Activation = Callable[[jnp.ndarray], jnp.ndarray]

def _promote_keeping_bias_wide(inputs, kernel, bias=None, dtype=None) -> tuple:
    """Flax's `promote_dtype` for a convolution or dense layer, but the bias cast to float32 (or wider) rather than
    to the compute dtype, so that `inputs · kernel + bias` adds in float32 (`add_bias`)."""
    inputs, kernel = promote_dtype(inputs, kernel, dtype=canonicalize_dtype(inputs, kernel, bias, dtype=dtype))
    return inputs, kernel, None if bias is None else jnp.asarray(bias, jnp.promote_types(inputs.dtype, jnp.float32))


def _in_compute_dtype(layer: nn.Conv | nn.Dense, inputs: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """`layer`'s output `y` (float32 where it added its bias, `_promote_keeping_bias_wide`) in the dtype flax computes
    it in."""
    if not layer.use_bias:
        return y
    params = layer.variables["params"]
    return y.astype(canonicalize_dtype(inputs, params["kernel"], params["bias"], dtype=layer.dtype))


class Conv(nn.Conv):
    """`flax.linen.Conv` (same variables and arguments) on `dispatch.conv_general_dilated`, adding its bias as
    `add_bias` does: the convolution every cnn_jax model uses.

    The output is in flax's dtype (the compute dtype), the values flax's (op
    by op; under jit XLA may leave out a rounding to bfloat16 in either, its
    "excess precision"); only the bias's gradient differs, summed in float32
    where flax sums it in bfloat16 under mixed precision
    (`cnn_jax.models.precision`).
    """

    promote_dtype: Callable = _promote_keeping_bias_wide
    conv_general_dilated: Callable = dispatch.conv_general_dilated

    @nn.compact
    def __call__(self, inputs: jnp.ndarray) -> jnp.ndarray:
        return _in_compute_dtype(self, inputs, super().__call__(inputs))


class Dense(nn.Dense):
    """`flax.linen.Dense` (same variables and arguments), adding its bias as `Conv` does: the dense layer every
    cnn_jax model uses."""

    promote_dtype: Callable = _promote_keeping_bias_wide

    @nn.compact
    def __call__(self, inputs: jnp.ndarray) -> jnp.ndarray:
        return _in_compute_dtype(self, inputs, super().__call__(inputs))


class ConvWithoutBias(Conv):
    """`Conv`'s variables (`kernel`, `bias`), returning the convolution and the bias separately.

    Construct it with `use_bias=False` (the bias is then declared here, after
    the kernel, as nn.Conv declares it): for a consumer that adds the bias
    itself, such as `BatchNormReluMaxPool`, saving a pass over the output.
    """

    @nn.compact
    def __call__(self, inputs: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        return super().__call__(inputs), self.param("bias", self.bias_init, (self.features,), self.param_dtype)


def add_bias(x: jnp.ndarray, bias: jnp.ndarray) -> jnp.ndarray:
    """`x + bias` over the last axis, added in float32 (or wider) and rounded to `x`'s dtype: the same values as
    adding in `x`'s dtype, but the bias's gradient then sums in float32. In bfloat16 (`cnn_jax.models.precision`)
    XLA:CPU summed it in bfloat16, rounding every partial sum: gradients off by up to 10× their size, in a loop it
    does not vectorise, where All-CNN-C spent a third of its step (BENCHMARKS.md)."""
    wide = jnp.promote_types(x.dtype, jnp.float32)
    return (x.astype(wide) + bias.astype(wide)).astype(x.dtype)


# The names Flax gives a ConvBlock's first Conv and BatchNorm, fixed so that both ways of computing the block (and
# checkpoints and initial values from before the fused kernel existed) share the same variables.
CONV, NORM = "Conv_0", "BatchNorm_0"
MOMENTUM, EPSILON = 0.9, 1e-5  # PyTorch's BatchNorm defaults (its momentum 0.1 is Flax's 0.9).


class ConvBlock(nn.Module):
    """Convolution -> optional BatchNorm -> activation -> optional pooling.

    BatchNorm uses PyTorch's defaults (momentum 0.1 in PyTorch's sense, eps
    1e-5) so results compare with the PyTorch code the seeds show. `padding` is
    the number of zeros added on each side, or "SAME"/"VALID". On a sequence
    `[b, l, c]` the kernel is `kernel_size` long. `pool` is any
    pooling (`cnn_jax.layers.pooling`) or None. While training,
    `dispatch.fuses_batch_norm_relu_max_pool` may compute BatchNorm, the
    activation and the pooling as one kernel, or `dispatch.fuses_batch_norm_act`
    BatchNorm and a ReLU; the variables are those of `nn.Conv` and
    `nn.BatchNorm` either way.
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    padding: int | str = "SAME"
    batch_norm: bool = True
    activation: Activation = nn.relu
    pool: Pooling | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        dims = x.ndim - 2  # 2 on an image, 1 on a sequence.
        padding = self.padding if isinstance(self.padding, str) else ((self.padding, self.padding),) * dims
        conv = ConvWithoutBias(self.features, (self.kernel_size,) * dims, strides=self.strides,
                               padding=padding, use_bias=False, name=CONV)
        z, bias = conv(x)
        activation = activations.name_of(self.activation)
        if train and dispatch.fuses_batch_norm_relu_max_pool(self.batch_norm, activation, pooling.describe(self.pool),
                                                             z):
            norm = BatchNormReluMaxPool(MOMENTUM, EPSILON, name=NORM)
            kernel = conv.variables["params"]["kernel"]
            if dispatch.fuses_conv_weight_gradient(x, kernel.shape, padding):
                return norm(z, bias, conv=(x, kernel, (self.strides,) * dims, padding))
            return norm(z, bias)
        if train and self.batch_norm and activation == "relu" and dispatch.fuses_batch_norm_act(z):
            return apply_pool(self.pool, BatchNormAct(MOMENTUM, EPSILON, name=NORM)(z, bias), train)
        x = add_bias(z, bias)
        if self.batch_norm:
            x = nn.BatchNorm(use_running_average=not train, momentum=MOMENTUM, epsilon=EPSILON, name=NORM)(x)
        return apply_pool(self.pool, self.activation(x), train)


kaiming_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # torchvision's conv init.


class ConvBN(nn.Module):
    """Convolution (no bias) -> BatchNorm -> optional ReLU, `[b, h, w, c] -> [b, h/s, w/s, features]`.

    Pads `kernel // 2` zeros on each side (PyTorch's padding for odd kernels),
    so a stride-s convolution gives ceil(h / s) rows; with `valid`, none
    (floor((h − kernel) / s) + 1 rows). The BatchNorm's bias makes a
    convolution bias redundant. While training, BatchNorm and the ReLU may run
    as one kernel (`dispatch.fuses_batch_norm_act`), with `nn.BatchNorm`'s
    variables.
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    strides: int = 1
    valid: bool = False
    relu: bool = True
    epsilon: float = 1e-5
    kernel_init: nn.initializers.Initializer = kaiming_normal
    scale_init: nn.initializers.Initializer = nn.initializers.ones

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        padding = "VALID" if self.valid else [(k // 2, k // 2) for k in self.kernel_size]
        x = Conv(self.features, self.kernel_size, strides=self.strides, padding=padding, use_bias=False,
                 kernel_init=self.kernel_init)(x)
        if train and dispatch.fuses_batch_norm_act(x):  # BatchNorm's own name: the variables are the same.
            return BatchNormAct(MOMENTUM, self.epsilon, self.scale_init, self.relu, name="BatchNorm_0")(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=MOMENTUM, epsilon=self.epsilon,
                         scale_init=self.scale_init)(x)
        return nn.relu(x) if self.relu else x


class DenseHead(nn.Module):
    """Flatten -> [Dense -> activation -> Dropout] * len(hidden) -> Dense(num_classes), giving logits.

    Dropout (rate `dropout`, training only) follows each hidden layer, as in
    AlexNet's and VGG's papers.
    """

    num_classes: int
    hidden: Sequence[int] = ()
    activation: Activation = nn.relu
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = nn.Dropout(self.dropout, deterministic=not train)(self.activation(Dense(width)(x)))
        return Dense(self.num_classes)(x)


def symmetric_uniform(limit: float) -> nn.initializers.Initializer:
    """Draws uniformly from [−limit, limit] (`nn.initializers.uniform` draws from [0, scale))."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -limit, limit)

    return init


class Embedding(nn.Module):
    """Token ids `[b, length]` -> vectors `[b, length, features]`: row `id` of a `[vocab_size, features]` table.

    Id 0 is padding (`cnn_jax.data.text`): its vector is always zeros, so
    padded positions add nothing to a convolution and take no gradient, as
    Kim (2014) keeps them. `embedding_init` draws the table; Kim's random
    vectors are uniform in [−0.25, 0.25].
    """

    vocab_size: int
    features: int
    embedding_init: nn.initializers.Initializer = symmetric_uniform(0.25)

    @nn.compact
    def __call__(self, tokens: jnp.ndarray) -> jnp.ndarray:
        vectors = nn.Embed(self.vocab_size, self.features, embedding_init=self.embedding_init)(tokens)
        return jnp.where((tokens != 0)[..., None], vectors, 0.0)
