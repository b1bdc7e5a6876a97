"""The Flax module of the fused training-mode BatchNorm -> ReLU -> 2×2 max-pool kernel (`ffi.batch_norm_relu_max_pool`).

`cnn_jax.kernels.dispatch` decides when a `ConvBlock` uses it.
"""

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from cnn_jax.kernels import ffi


class BatchNormReluMaxPool(nn.Module):
    """Training-mode `nn.BatchNorm` of x + offset -> ReLU -> 2×2 max-pool, stride 2, as one compiled CPU kernel.

    Its variables are exactly `nn.BatchNorm`'s (params `scale`, `bias`;
    batch_stats `mean`, `var`), so a `ConvBlock` uses it under BatchNorm's
    name while training and `nn.BatchNorm` itself otherwise; `offset` is the
    convolution's bias, which the kernel adds. Needs `ffi.load()`, float32
    NHWC input and even height and width. Given `conv = (input, kernel,
    strides, padding)` of a convolution with few input channels that computed
    x, the kernel's gradient comes from `ffi.batch_norm_relu_max_pool_after_conv`,
    which never stores x's gradient whole.
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
