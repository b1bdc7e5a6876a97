"""The pieces networks are made of.

    blocks.py       the convolution and the dense layer, ConvBlock (conv -> BatchNorm -> activation -> pooling),
                    ConvBN, DenseHead, Embedding (token ids -> a sequence); ConvBlock and the poolings serve images
                    and sequences
    pooling.py      every pooling layer, by name
    activations.py  non-linearities, by name
    losses.py       loss layers, by name
"""

from cnn_jax.layers.blocks import Conv, ConvBlock, ConvBN, Dense, DenseHead, Embedding

__all__ = ["Conv", "ConvBN", "ConvBlock", "Dense", "DenseHead", "Embedding"]
