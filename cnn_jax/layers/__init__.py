"""The pieces networks are made of.

    blocks.py       the convolution, ConvBlock (conv -> BatchNorm -> activation -> pooling), ConvBN, DenseHead
    pooling.py      every pooling layer, by name
    activations.py  non-linearities, by name
    losses.py       loss layers, by name
"""

from cnn_jax.layers.blocks import Conv, ConvBlock, ConvBN, DenseHead

__all__ = ["Conv", "ConvBN", "ConvBlock", "DenseHead"]
