"""All-CNN-C (Springenberg, Dosovitskiy, Brox & Riedmiller 2014, "Striving for Simplicity").

Tensors are `[batch, height, width, channels]`.
"""

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.layers import Conv, ConvBlock
from cnn_jax.layers.pooling import global_avg_pool
from cnn_jax.models.base import Entry


class AllConvNet(nn.Module):
    """INPUT -> [[CONV 3×3 -> RELU] * 2 -> CONV 3×3/2 -> RELU] * 2 -> CONV 3×3 -> CONV 1×1 -> CONV 1×1 -> GAP.

    The paper's All-CNN-C (Table 2): widths 96, 96, 96/2, 192, 192, 192/2,
    then a 3×3 convolution without padding (8×8 -> 6×6 at 32×32), a 1×1
    convolution of 192 and a 1×1 convolution with one map per class, averaged
    over space into logits. No pooling layer and no dense layer. Dropout 20%
    on the input and 50% after each stride-2 convolution, as in the paper.
    The class convolution has no ReLU here (the paper's table gives it one),
    so the logits can be negative.

    1,369,738 parameters at 32×32×3 and 10 classes, and the same layers at
    every input size (28×28 ends on 5×5, 224×224 on 54×54, before the global
    average): only the first convolution's input channels and the class
    convolution's width change the count. At 224×224×3 and 1000 classes this
    is All-CNN-C applied as is (1,560,808 parameters), not the larger ImageNet
    network the paper sketches in its Section 4.
    """

    num_classes: int = 10
    widths: tuple[int, int] = (96, 192)
    input_dropout: float = 0.2
    dropout: float = 0.5

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = nn.Dropout(self.input_dropout, deterministic=not train)(x)
        for width in self.widths:
            for strides in (1, 1, 2):
                x = ConvBlock(width, 3, strides=strides, padding=1, batch_norm=False)(x, train)
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        x = ConvBlock(self.widths[-1], 3, padding=0, batch_norm=False)(x, train)
        x = ConvBlock(self.widths[-1], 1, padding=0, batch_norm=False)(x, train)
        x = Conv(self.num_classes, (1, 1))(x)
        return global_avg_pool(x)


MODELS = {
    "allconv": Entry(
        AllConvNet, "Strided convolutions can replace pooling, and global averaging the dense layers (2014)."
    ),
}
