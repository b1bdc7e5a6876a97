"""AlexNet (Krizhevsky, Sutskever & Hinton 2012) and ZFNet (Zeiler & Fergus 2013): one class, two layer tables.

Tensors are `[batch, height, width, channels]`.
"""

import functools
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.layers import Conv, DenseHead
from cnn_jax.layers.pooling import adaptive_avg_pool, max_pool
from cnn_jax.models.base import SMALL_INPUT, Entry


class ConvLayer(NamedTuple):
    """One convolution -> ReLU, then a 3×3 stride-2 max-pool padded by `pool_padding` (None: no pool)."""

    features: int
    kernel_size: int
    stride: int
    padding: int
    pool_padding: int | None = None


ALEXNET_LAYERS = (  # torchvision's single-GPU AlexNet (the "one weird trick" widths): 224 -> 55 -> 27 -> 13 -> 6.
    ConvLayer(64, 11, 4, 2, pool_padding=0),
    ConvLayer(192, 5, 1, 2, pool_padding=0),
    ConvLayer(384, 3, 1, 1),
    ConvLayer(256, 3, 1, 1),
    ConvLayer(256, 3, 1, 1, pool_padding=0),
)

ZFNET_LAYERS = (  # Zeiler & Fergus 2013, Figure 3: 224 -> 110 -> 55 -> 26 -> 13 -> 13 -> 13 -> 6.
    ConvLayer(96, 7, 2, 1, pool_padding=1),
    ConvLayer(256, 5, 2, 0, pool_padding=1),
    ConvLayer(384, 3, 1, 1),
    ConvLayer(384, 3, 1, 1),
    ConvLayer(256, 3, 1, 1, pool_padding=0),
)


class AlexNet(nn.Module):
    """INPUT -> [CONV -> RELU -> (overlapping 3×3/2 MAX POOL)] * 5 -> AVG POOL to a grid -> FC 4096 -> FC 4096 -> FC.

    `layers` is the convolution table: `ALEXNET_LAYERS` (torchvision's
    AlexNet, 61,100,840 parameters at 224×224×3 and 1000 classes) or
    `ZFNET_LAYERS` (62,357,608). Neither has the papers' local response /
    contrast normalisation (parameter-free; torchvision's AlexNet drops it
    too, and BatchNorm later replaced it).

    Small inputs (height or width < `SMALL_INPUT`, e.g. 28×28 or 32×32)
    would vanish under the stride-4 (or stride-2) stem and three poolings, so
    there every convolution runs at stride 1 (same kernels, same parameters);
    and the classifier sees the final map averaged to 1×1 instead of 6×6
    (`adaptive_avg_pool`), so its first layer has 256·4096 + 4096 weights
    rather than 9216·4096 + 4096. At 224×224 the 6×6 average is the identity.
    `grid=None` leaves the averaging out, as the 2012 network had it: the
    classifier sees the body's map as it is, so `cnn_jax.analysis.convert` can turn it
    into convolutions that slide over larger images (OverFeat).
    """

    num_classes: int = 1000
    layers: Sequence[ConvLayer] = ALEXNET_LAYERS
    grid: int | None = 6

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        small = min(x.shape[1:3]) < SMALL_INPUT
        for layer in self.layers:
            stride = 1 if small else layer.stride
            x = Conv(layer.features, (layer.kernel_size,) * 2, strides=stride, padding=[(layer.padding,) * 2] * 2)(x)
            x = nn.relu(x)
            if layer.pool_padding is not None:
                x = max_pool(x, window=3, stride=2, padding=layer.pool_padding)
        if self.grid is not None:
            x = adaptive_avg_pool(x, 1 if small else self.grid)
        return DenseHead(self.num_classes, hidden=(4096, 4096), dropout=0.5)(x, train)


MODELS = {
    "alexnet": Entry(
        functools.partial(AlexNet, layers=ALEXNET_LAYERS),
        "ReLU, dropout and overlapping max-pooling let a deep CNN train on ImageNet (2012).",
    ),
    "zfnet": Entry(
        functools.partial(AlexNet, layers=ZFNET_LAYERS),
        "Visualising AlexNet's filters led to a 7×7/2 first layer that keeps more detail (2013).",
    ),
}
