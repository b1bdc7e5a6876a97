"""VGG (Simonyan & Zisserman 2014): stacks of 3×3 convolutions, configurations A, B, D and E (VGG-11/13/16/19).

Tensors are `[batch, height, width, channels]`.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.layers import ConvBlock, DenseHead
from cnn_jax.layers.pooling import adaptive_avg_pool, max_pool_2x2
from cnn_jax.models.base import SMALL_INPUT, Entry

STAGE_WIDTHS = (64, 128, 256, 512, 512)
"""Filters in each of VGG's five stages; every stage ends in a 2×2 max-pool."""

CONVS_PER_STAGE = {  # The paper's Table 1.
    11: (1, 1, 2, 2, 2),  # A
    13: (2, 2, 2, 2, 2),  # B
    16: (2, 2, 3, 3, 3),  # D
    19: (2, 2, 4, 4, 4),  # E
}


class VGG(nn.Module):
    """INPUT -> [[CONV 3×3 -> (BN) -> RELU] * n -> MAX POOL 2×2] * 5 -> AVG POOL to 7×7 -> FC 4096 -> FC 4096 -> FC.

    `convs_per_stage` is a row of `CONVS_PER_STAGE`; `batch_norm` adds
    BatchNorm after every convolution (torchvision's vgg*_bn, which keeps the
    convolution biases). At 224×224×3 and 1000 classes the parameter counts
    are torchvision's (vgg16: 138,357,544).

    Small inputs (height or width < `SMALL_INPUT`): a max-pool is skipped when
    the map is already 1×1 (28×28 reaches 1×1 after four poolings:
    28-14-7-3-1), and the classifier sees the final map averaged to 1×1
    instead of 7×7, so its first layer has 512·4096 + 4096 weights rather
    than 25088·4096 + 4096. At 224×224 the 7×7 average is the identity.
    `grid=None` leaves the averaging out (the 2014 paper's network): the
    classifier sees the body's map as it is, so `cnn_jax.analysis.convert` can turn it
    into convolutions that slide over larger images.
    """

    num_classes: int = 1000
    convs_per_stage: Sequence[int] = CONVS_PER_STAGE[16]
    batch_norm: bool = False
    grid: int | None = 7

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        small = min(x.shape[1:3]) < SMALL_INPUT
        for width, convs in zip(STAGE_WIDTHS, self.convs_per_stage, strict=True):
            for i in range(convs):
                # 3×3 convolutions with padding 1 keep the size, so the pool is decided before the last one.
                pool = max_pool_2x2 if i == convs - 1 and min(x.shape[1:3]) >= 2 else None
                x = ConvBlock(width, 3, padding=1, batch_norm=self.batch_norm, pool=pool)(x, train)
        if self.grid is not None:
            x = adaptive_avg_pool(x, 1 if small else self.grid)
        return DenseHead(self.num_classes, hidden=(4096, 4096), dropout=0.5)(x, train)


MODELS = {
    f"vgg{depth}{suffix}": Entry(
        functools.partial(VGG, convs_per_stage=CONVS_PER_STAGE[depth], batch_norm=bool(suffix)),
        f"VGG-{depth}: depth from stacked 3×3 convolutions ({depth - 3} conv + 3 FC layers)"
        + (", with BatchNorm after every convolution" if suffix else "") + ".",
    )
    for suffix in ("", "_bn")
    for depth in CONVS_PER_STAGE
}
