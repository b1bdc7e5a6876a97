"""The Flax modules of the fused training-mode BatchNorm kernels: BatchNorm -> ReLU -> 2×2 max-pool
(`ffi.batch_norm_relu_max_pool`) and BatchNorm -> ReLU or nothing (`ffi.batch_norm_act`).

`cnn_jax.kernels.dispatch` decides when a `ConvBlock` or `ConvBN` uses them.
"""

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from cnn_jax.kernels import ffi


class _TrainingBatchNorm(nn.Module):
    """`nn.BatchNorm`'s variables (params `scale`, `bias`; batch_stats `mean`, `var`) and running averages, around a
    kernel (`normalise`) that computes the layer from the batch's statistics, which it returns with its output.

    So a block uses a subclass under BatchNorm's name while training and
    `nn.BatchNorm` itself otherwise. `offset` is a convolution's bias, which
    the kernels add (BatchNorm cancels it, its running mean keeps it). Needs
    `ffi.load()` and float32 or bfloat16 NHWC input; the output is of the
    input's dtype, the statistics and the kernels' arithmetic float32 (with
    parameters cast to bfloat16, `cnn_jax.models.precision`, they are read
    back as float32, as Flax's BatchNorm reads them).
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    scale_init: nn.initializers.Initializer = nn.initializers.ones

    def normalise(self, x, offset, scale, bias, conv):
        raise NotImplementedError

    @nn.compact
    def __call__(self, x: jnp.ndarray, offset: jnp.ndarray | None = None, conv: tuple | None = None) -> jnp.ndarray:
        features = x.shape[-1]
        scale = self.param("scale", self.scale_init, (features,)).astype(jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,)).astype(jnp.float32)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,))
        running_var = self.variable("batch_stats", "var", jnp.ones, (features,))
        offset = jnp.zeros((features,), jnp.float32) if offset is None else offset.astype(jnp.float32)
        y, mean, var = self.normalise(x, offset, scale, bias, conv)
        if not self.is_initializing():
            running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
            running_var.value = self.momentum * running_var.value + (1 - self.momentum) * var
        return y


class BatchNormReluMaxPool(_TrainingBatchNorm):
    """Training-mode BatchNorm of x + offset -> ReLU -> 2×2 max-pool, stride 2, as one compiled CPU kernel.

    Needs even height and width. Given `conv = (input, kernel, strides,
    padding)` of a convolution with few input channels that computed x, the
    kernel's gradient comes from `ffi.batch_norm_relu_max_pool_after_conv`,
    which never stores x's gradient whole.
    """

    def normalise(self, x, offset, scale, bias, conv):
        if conv is None:
            return ffi.batch_norm_relu_max_pool(x, offset, scale, bias, self.epsilon)
        conv_input, kernel, strides, padding = conv
        return ffi.batch_norm_relu_max_pool_after_conv(lax.stop_gradient(x), conv_input, kernel, offset, scale, bias,
                                                       strides, padding, self.epsilon)


class BatchNormAct(_TrainingBatchNorm):
    """Training-mode BatchNorm of x + offset, then a ReLU if `relu`, as one compiled CPU kernel each way."""

    relu: bool = True

    def normalise(self, x, offset, scale, bias, conv):
        del conv  # Only the pooled kernel computes a convolution's weight gradient.
        return ffi.batch_norm_act(x, offset, scale, bias, self.epsilon, self.relu)
