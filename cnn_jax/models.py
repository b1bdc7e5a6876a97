"""The networks, by name. Each is a Flax linen module called as `model.apply(variables, images, train)`.

Images are `[batch, height, width, channels]` floats; the output is logits
`[batch, num_classes]`. A name is the seed network (`convnet`), a classic
architecture from `cnn_jax.zoo`, or a text spec of a conv stack
(`cnn_jax.spec`).
"""

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import spec
from cnn_jax.errors import UserError
from cnn_jax.layers import ConvBlock, DenseHead
from cnn_jax.pooling import Pooling, max_pool_2x2
from cnn_jax.zoo import Entry, alexnet, allconv, googlenet, lenet, resnet, variants, vgg


class ConvNet(nn.Module):
    """INPUT -> [CONV -> BN -> RELU -> POOL 2×2] * len(features) -> FC.

    The defaults are the network of seed 000 (29,034 trainable parameters at
    28×28×1 and 10 classes): two 5×5 convolutions with 16 and 32 filters,
    stride 1, padding 2, each halving the image with 2×2 max-pooling.
    """

    num_classes: int = 10
    features: Sequence[int] = (16, 32)
    kernel_size: int = 5
    pool: Pooling = max_pool_2x2

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        for width in self.features:
            x = ConvBlock(width, self.kernel_size, padding=self.kernel_size // 2, pool=self.pool)(x, train)
        return DenseHead(self.num_classes)(x)


MODELS: dict[str, Entry] = {
    "convnet": Entry(ConvNet, "The seed network: conv-BN-ReLU-pool twice and one FC layer reach 91% on Fashion-MNIST."),
    **lenet.MODELS,
    **alexnet.MODELS,
    **vgg.MODELS,
    **googlenet.MODELS,
    **resnet.MODELS,
    **allconv.MODELS,
    **variants.MODELS,
}


def lookup(name: str) -> Callable[..., nn.Module]:
    """The model called `name` (a zoo name or a text spec), as a constructor taking `num_classes=`."""
    if name in MODELS:
        return MODELS[name].build
    if spec.is_spec(name):
        return spec.parse(name)
    raise UserError(f"unknown model '{name}': choose one of {', '.join(MODELS)}, or write a conv stack as a "
                    "text spec (README: 'Any stack from the command line')")


def count_params(params) -> int:
    """The number of scalars in a parameter pytree (trainable parameters, not batch statistics)."""
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
