"""Reusable building blocks: the convolution, and the conv and dense blocks the models are made of.

All tensors are NHWC: `[batch, height, width, channels]`.
"""

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax.kernels import ffi
from cnn_jax.layers.pooling import Pooling, apply_pool, max_pool_2x2

Activation = Callable[[jnp.ndarray], jnp.ndarray]


def _conv_by_tap_sum(x, kernel, strides, padding):
    """NHWC × HWIO convolution as a sum over kernel taps and input channels of shifted input × filter row.

    With one to a few input channels, XLA's CPU convolution runs at a few
    GFLOP/s; this form is one fused elementwise loop.
    """
    x = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    kh, kw, cin, _ = kernel.shape
    (sh, sw) = strides
    oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    out = 0
    for i in range(kh):
        for j in range(kw):
            tap = x[:, i : i + (oh - 1) * sh + 1 : sh, j : j + (ow - 1) * sw + 1 : sw, :]
            for c in range(cin):
                out = out + tap[..., c : c + 1] * kernel[i, j, c]
    return out


def _xla_conv(x, kernel, strides, padding):
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _with_xla_gradients(forward):
    """The convolution `forward(x, kernel, strides, padding)`, differentiated by XLA's convolution gradients."""

    @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
    def conv(x, kernel, strides, padding):
        return forward(x, kernel, strides, padding)

    def conv_fwd(x, kernel, strides, padding):
        return forward(x, kernel, strides, padding), (x, kernel)

    def conv_bwd(strides, padding, residuals, cotangent):
        _, vjp = jax.vjp(lambda x, kernel: _xla_conv(x, kernel, strides, padding), *residuals)
        return vjp(cotangent)

    conv.defvjp(conv_fwd, conv_bwd)
    return conv


_tap_sum_conv = _with_xla_gradients(_conv_by_tap_sum)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, **kwargs):
    """`jax.lax.conv_general_dilated`, computed the fastest way we know for plain NHWC convolutions on CPU.

    A drop-in for `flax.linen.Conv(conv_general_dilated=...)`. Plain means
    NHWC × HWIO, explicit padding ≥ 0, no dilation, no groups, float32. On the
    CPU backend a plain convolution runs on `cnn_jax.ffi.conv`
    (oneDNN, and a weight gradient of our own for few input channels); without
    oneDNN, one with up to `ffi.FEW_CHANNELS` input channels runs as a tap sum
    (with XLA's gradients). Every other case, and every other backend, goes to
    XLA's convolution.
    """
    plain = (
        jax.default_backend() == "cpu"
        and rhs.ndim == 4
        and lhs.dtype == rhs.dtype == jnp.float32
        and feature_group_count == 1
        and not isinstance(padding, str)
        and all(p >= 0 for pair in padding for p in pair)
        and all(d == 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
        and dimension_numbers is not None  # Flax always passes them; NHWC/HWIO is what the fast paths handle.
        and tuple(dimension_numbers.lhs_spec) == tuple(dimension_numbers.out_spec) == (0, 3, 1, 2)
        and tuple(dimension_numbers.rhs_spec) == (3, 2, 0, 1)
    )
    if plain:
        strides, pads = tuple(window_strides), tuple(tuple(p) for p in padding)
        if ffi.load():
            return ffi.conv(lhs, rhs, strides, pads)
        if rhs.shape[2] <= ffi.FEW_CHANNELS:
            return _tap_sum_conv(lhs, rhs, strides, pads)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, **kwargs)


Conv = functools.partial(nn.Conv, conv_general_dilated=conv_general_dilated)
"""`flax.linen.Conv` on `conv_general_dilated`: the convolution every cnn_jax model uses (same variables and arguments)."""


class ConvWithoutBias(nn.Conv):
    """`nn.Conv`'s variables (`kernel`, `bias`), returning the convolution and the bias separately.

    Construct it with `use_bias=False` (the bias is then declared here, after
    the kernel, as nn.Conv declares it): for a consumer that adds the bias
    itself, such as `BatchNormReluMaxPool`, saving a pass over the output.
    """

    @nn.compact
    def __call__(self, inputs: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        return super().__call__(inputs), self.param("bias", self.bias_init, (self.features,), self.param_dtype)


class BatchNormReluMaxPool(nn.Module):
    """Training-mode `nn.BatchNorm` of x + offset -> ReLU -> `max_pool_2x2`, fused in one compiled CPU kernel.

    Its variables are exactly `nn.BatchNorm`'s (params `scale`, `bias`;
    batch_stats `mean`, `var`), so a `ConvBlock` uses it under BatchNorm's
    name while training and `nn.BatchNorm` itself otherwise; `offset` is the
    convolution's bias, which the kernel adds. Needs `ffi.load()`,
    float32 NHWC input and even height and width. Given `conv = (input,
    kernel, strides, padding)` of the convolution that computed x, where
    `ffi.few_channels(kernel.shape)`, the kernel's gradient comes from
    `ffi.batch_norm_relu_max_pool_after_conv`, which never stores x's
    gradient whole.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jnp.ndarray, offset: jnp.ndarray, conv: tuple | None = None) -> jnp.ndarray:
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,))
        bias = self.param("bias", nn.initializers.zeros, (features,))
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,))
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,))
        if conv is None:
            y, mean, var = ffi.batch_norm_relu_max_pool(x, offset, scale, bias, self.epsilon)
        else:
            conv_input, kernel, strides, padding = conv
            y, mean, var = ffi.batch_norm_relu_max_pool_after_conv(
                lax.stop_gradient(x), conv_input, kernel, offset, scale, bias, strides, padding, self.epsilon)
        if not self.is_initializing():
            running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
            running_var.value = self.momentum * running_var.value + (1 - self.momentum) * var
        return y


class ConvBlock(nn.Module):
    """Convolution -> optional BatchNorm -> activation -> optional pooling.

    BatchNorm uses PyTorch's defaults (momentum 0.1 in PyTorch's sense, eps
    1e-5) so results compare with the PyTorch code the seeds show. `padding` is
    the number of zeros added on each side, or "SAME"/"VALID". On the CPU,
    training-mode BatchNorm -> ReLU -> `max_pool_2x2` runs as one fused kernel
    (`BatchNormReluMaxPool`), which also adds the convolution's bias, and
    after a float32 convolution with few input channels and integer padding
    (a first layer) computes that convolution's weight gradient too. The
    variables are those of `nn.Conv` and `nn.BatchNorm` either way.
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
        padding = self.padding if isinstance(self.padding, str) else [(self.padding, self.padding)] * 2
        conv = ConvWithoutBias(self.features, (self.kernel_size, self.kernel_size), strides=self.strides,
                               padding=padding, use_bias=False, conv_general_dilated=conv_general_dilated,
                               name="Conv_0")
        z, bias = conv(x)
        if train and self._fusable(z):
            batch_norm = BatchNormReluMaxPool(momentum=0.9, epsilon=1e-5, name="BatchNorm_0")
            kernel = conv.variables["params"]["kernel"]
            few_channel_conv = (isinstance(self.padding, int) and self.padding >= 0 and x.dtype == jnp.float32
                                and ffi.few_channels(kernel.shape))
            if few_channel_conv:
                return batch_norm(z, bias, conv=(x, kernel, (self.strides,) * 2, ((self.padding,) * 2,) * 2))
            return batch_norm(z, bias)
        x = z + bias
        if self.batch_norm:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
        x = self.activation(x)
        return apply_pool(self.pool, x, train)

    def _fusable(self, x: jnp.ndarray) -> bool:
        """Whether BatchNorm, activation and pooling are what `BatchNormReluMaxPool` computes, on its backend."""
        return (
            self.batch_norm
            and self.activation is nn.relu
            and self.pool is max_pool_2x2
            and x.dtype == jnp.float32
            and x.shape[1] % 2 == 0
            and x.shape[2] % 2 == 0
            and jax.default_backend() == "cpu"
            and ffi.load()
        )


kaiming_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # torchvision's conv init.


class ConvBN(nn.Module):
    """Convolution (no bias) -> BatchNorm -> optional ReLU, `[b, h, w, c] -> [b, h/s, w/s, features]`.

    Pads `kernel // 2` zeros on each side (PyTorch's padding for odd kernels),
    so a stride-s convolution gives ceil(h / s) rows. The BatchNorm's bias
    makes a convolution bias redundant.
    """

    features: int
    kernel_size: tuple[int, int] = (3, 3)
    strides: int = 1
    relu: bool = True
    epsilon: float = 1e-5
    kernel_init: nn.initializers.Initializer = kaiming_normal
    scale_init: nn.initializers.Initializer = nn.initializers.ones

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        padding = [(k // 2, k // 2) for k in self.kernel_size]
        x = Conv(self.features, self.kernel_size, strides=self.strides, padding=padding, use_bias=False,
                 kernel_init=self.kernel_init)(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=self.epsilon,
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
            x = nn.Dropout(self.dropout, deterministic=not train)(self.activation(nn.Dense(width)(x)))
        return nn.Dense(self.num_classes)(x)
