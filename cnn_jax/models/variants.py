"""Small networks that differ in one block, to compare design choices at equal receptive field or width.

Each is stem -> block -> mean over the map -> FC, where the stem is a 3×3
convolution to C channels and the block maps C channels to C; every
convolution is followed by BatchNorm and ReLU and has no bias. Only the
block differs. Its convolution weights, for width C:

    conv7x7     one 7×7                                 49·C²   (7×7 receptive field)
    conv3x3x3   three stacked 3×3                       27·C²   (7×7 receptive field)
    plain3x3    one 3×3                                  9·C²
    bottleneck  1×1 C→C/2, 3×3 C/2→C/2, 1×1 C/2→C       3.25·C²
    factorised  1×3 then 3×1                             6·C²   (3×3 receptive field)

Images are `[batch, height, width, channels]`, of any size.
"""

import functools
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.errors import UserError
from cnn_jax.layers import ConvBN, Dense
from cnn_jax.layers.pooling import global_avg_pool
from cnn_jax.models.base import Entry


class ConvSpec(NamedTuple):
    """One convolution of a block: its kernel (height, width), and output channels C // width_divisor."""

    kernel: tuple[int, int]
    width_divisor: int = 1


class ConvStack(nn.Module):
    """The convolutions `specs` in order, each -> BatchNorm -> ReLU, padded to keep the map's size."""

    width: int
    specs: Sequence[ConvSpec]

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        for spec in self.specs:
            if self.width % spec.width_divisor:
                raise UserError(f"{self.name}: width {self.width} does not divide by {spec.width_divisor} for its "
                                f"{spec.kernel[0]}×{spec.kernel[1]} convolution; choose a multiple of {spec.width_divisor}")
            x = ConvBN(self.width // spec.width_divisor, spec.kernel)(x, train)
        return x


class VariantNet(nn.Module):
    """3×3 conv C -> `block` (C -> C) -> mean over the map -> FC; every conv -> BN -> ReLU.

    Parameters: stem 27·C + 2·C (for 3 input channels), the block's weights and
    2 BatchNorm scalars per conv, head (C + 1)·num_classes.
    """

    block: Sequence[ConvSpec]
    num_classes: int = 10
    width: int = 32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = ConvBN(self.width, (3, 3), name="stem")(x, train)
        x = ConvStack(self.width, self.block, name="block")(x, train)
        return Dense(self.num_classes, name="head")(global_avg_pool(x))


BLOCKS = {
    "conv7x7": (ConvSpec((7, 7)),),
    "conv3x3x3": (ConvSpec((3, 3)),) * 3,
    "plain3x3": (ConvSpec((3, 3)),),
    "bottleneck": (ConvSpec((1, 1), 2), ConvSpec((3, 3), 2), ConvSpec((1, 1))),
    "factorised": (ConvSpec((1, 3)), ConvSpec((3, 1))),
}

LESSONS = {
    "conv7x7": "One 7×7 convolution: a 7×7 receptive field for 49·C² weights.",
    "conv3x3x3": "Three stacked 3×3 convolutions: the same 7×7 receptive field for 27·C² weights, and two more ReLUs.",
    "plain3x3": "A plain 3×3 C→C convolution: 9·C² weights, the baseline for bottleneck and factorised.",
    "bottleneck": "1×1 down to C/2, 3×3, 1×1 back up: 3.25·C² weights instead of 9·C².",
    "factorised": "A 3×3 factorised into 1×3 then 3×1: the same receptive field for 6·C² weights.",
}

MODELS = {name: Entry(functools.partial(VariantNet, block), LESSONS[name]) for name, block in BLOCKS.items()}
