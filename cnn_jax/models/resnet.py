"""ResNet (He et al. 2015, "Deep Residual Learning for Image Recognition"), in torchvision's layout.

Every block adds its input back to its output (`y = F(x) + x`), so a deep stack
can fall back to the identity and gradients reach the first layers unchanged.
At 224×224×3 and 1000 classes the parameter counts equal torchvision's:
ResNet-18 11,689,512; ResNet-34 21,797,672; ResNet-50 25,557,032; ResNet-101
44,549,160. Images are `[batch, height, width, channels]`.
"""

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.layers import ConvBN, Dense
from cnn_jax.layers.pooling import global_avg_pool, max_pool
from cnn_jax.models.base import SMALL_INPUT, Entry


class ResidualBlock(nn.Module):
    """relu(F(x) + shortcut(x)); the shortcut is a 1×1 conv + BN wherever F changes the shape, else x."""

    width: int
    strides: int = 1

    def residual(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        raise NotImplementedError

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        y = self.residual(x, train)
        if x.shape != y.shape:
            x = ConvBN(y.shape[-1], (1, 1), self.strides, relu=False, name="shortcut")(x, train)
        return nn.relu(y + x)


class BasicBlock(ResidualBlock):
    """3×3 (stride s) -> 3×3, `width` channels out (ResNet-18/34)."""

    def residual(self, x, train):
        y = ConvBN(self.width, (3, 3), self.strides)(x, train)
        return ConvBN(self.width, (3, 3), relu=False)(y, train)


class Bottleneck(ResidualBlock):
    """1×1 down to `width` -> 3×3 (stride s) -> 1×1 up to 4·`width` (ResNet-50/101).

    The stride is on the 3×3 convolution ("ResNet v1.5", as torchvision), not
    the first 1×1 as in the paper.
    """

    def residual(self, x, train):
        y = ConvBN(self.width, (1, 1))(x, train)
        y = ConvBN(self.width, (3, 3), self.strides)(y, train)
        return ConvBN(4 * self.width, (1, 1), relu=False)(y, train)


class ResNet(nn.Module):
    """stem -> stages of residual blocks (64, 128, 256, 512 wide; the last three halve the map) -> mean -> FC.

    The stem depends on the input's height, at call time: from `SMALL_INPUT`
    (64) rows up it is torchvision's 7×7/2 convolution and 3×3/2 max-pool
    (224 -> 56 -> 28 -> 14 -> 7); below, as in CIFAR ResNets, a 3×3/1
    convolution and no max-pool (32 -> 32 -> 16 -> 8 -> 4; 28 -> ... -> 4),
    which has 64·3·3·c instead of 64·7·7·c stem weights for c input channels.
    """

    stage_sizes: Sequence[int]
    block: type[ResidualBlock]
    num_classes: int = 1000

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        if x.shape[1] >= SMALL_INPUT:
            x = ConvBN(64, (7, 7), strides=2, name="stem")(x, train)
            x = max_pool(x, window=3, stride=2, padding=1)
        else:
            x = ConvBN(64, (3, 3), name="stem")(x, train)
        for stage, num_blocks in enumerate(self.stage_sizes):
            for i in range(num_blocks):
                strides = 2 if stage > 0 and i == 0 else 1
                x = self.block(64 * 2**stage, strides, name=f"stage{stage + 1}_block{i + 1}")(x, train)
        x = global_avg_pool(x)
        return Dense(self.num_classes)(x)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block=BasicBlock)
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=BasicBlock)
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=Bottleneck)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block=Bottleneck)

MODELS = {
    "resnet18": Entry(ResNet18, "Residual connections let 18 layers train as easily as 8: blocks learn F(x) in y = F(x) + x."),
    "resnet34": Entry(ResNet34, "Deeper plain-block ResNet: depth helps once shortcuts keep gradients flowing."),
    "resnet50": Entry(ResNet50, "Bottleneck blocks (1×1 down, 3×3, 1×1 up) make 50 layers cost about what 34 plain ones do."),
    "resnet101": Entry(ResNet101, "Depth through bottlenecks: 101 layers, 44.5M parameters, most of them in stage 3."),
}
