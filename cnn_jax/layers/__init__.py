"""The pieces networks are made of.

    blocks.py       the convolution, ConvBlock (conv -> BatchNorm -> activation -> pooling), ConvBN, DenseHead,
                    Embedding (token ids -> a sequence); ConvBlock and the poolings serve images and sequences
    pooling.py      every pooling layer, by name
    activations.py  non-linearities, by name
    losses.py       loss layers, by name
"""

from cnn_jax.layers.blocks import Conv, ConvBlock, ConvBN, DenseHead, Embedding

__all__ = ["Conv", "ConvBN", "ConvBlock", "DenseHead", "Embedding"]
