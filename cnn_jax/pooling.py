"""Pooling layers: downsampling a `[batch, height, width, channels]` map window by window.

A pooling layer is a function of the map, or a linen module called as
`pool(x, train=...)` when it has parameters or randomness (`apply_pool` calls
either).
"""

import functools
from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

Pooling = Callable[[jnp.ndarray], jnp.ndarray] | nn.Module
"""A pooling layer: a function of `[b, h, w, c]`, or a linen module called as `pool(x, train=...)`."""


def apply_pool(pool: Pooling | None, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    """`pool(x)`, telling a module-pooling whether it is training; None is no pooling."""
    if pool is None:
        return x
    return pool(x, train=train) if isinstance(pool, nn.Module) else pool(x)


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


max_pool_2x2 = functools.partial(max_pool, window=2, stride=2)
