"""Reusable building blocks: pooling and the conv and dense blocks the models are made of.

All tensors are NHWC: `[batch, height, width, channels]`.
"""

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

Activation = Callable[[jnp.ndarray], jnp.ndarray]
Pooling = Callable[[jnp.ndarray], jnp.ndarray]


def max_pool(x: jnp.ndarray, window: int = 2, stride: int | None = None, padding: int = 0) -> jnp.ndarray:
    """Max-pooling over `window`×`window` patches, `[b, h, w, c] -> [b, h', w', c]`.

    `stride` defaults to `window` (PyTorch's convention); `padding` pads each
    side with -inf. Output size is floor((h + 2·padding − window) / stride) + 1.

    Non-overlapping windows that tile the input exactly (the common 2×2,
    stride 2 case) are computed as a reshape and a max: XLA fuses that and its
    gradient into a few elementwise loops, where the general windowed reduction
    (and its select-and-scatter gradient) is about twice as slow on CPU. The
    two differ only in how a gradient is shared between tied maxima.
    """
    stride = window if stride is None else stride
    b, h, w, c = x.shape
    if stride == window and padding == 0 and h % window == 0 and w % window == 0:
        return x.reshape(b, h // window, window, w // window, window, c).max(axis=(2, 4))
    pad = ((padding, padding), (padding, padding))
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pad)


class ConvBlock(nn.Module):
    """Convolution -> optional BatchNorm -> activation -> optional pooling.

    BatchNorm uses PyTorch's defaults (momentum 0.1 in PyTorch's sense, eps
    1e-5) so results compare with the PyTorch code the seeds show. `padding` is
    the number of zeros added on each side, or "SAME"/"VALID".
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
        x = nn.Conv(self.features, (self.kernel_size, self.kernel_size), strides=self.strides, padding=padding)(x)
        if self.batch_norm:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
        x = self.activation(x)
        if self.pool is not None:
            x = self.pool(x)
        return x


class DenseHead(nn.Module):
    """Flatten -> [Dense -> activation] * len(hidden) -> Dense(num_classes), giving logits."""

    num_classes: int
    hidden: Sequence[int] = ()
    activation: Activation = nn.relu

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = x.reshape(x.shape[0], -1)
        for width in self.hidden:
            x = self.activation(nn.Dense(width)(x))
        return nn.Dense(self.num_classes)(x)


max_pool_2x2 = functools.partial(max_pool, window=2, stride=2)
