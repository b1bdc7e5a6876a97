"""The networks, by name: the registry every command and sweep builds models from.

Each model is a Flax linen module called as `model.apply(variables, inputs,
train)`, giving logits `[batch, num_classes]`. Most take `[batch, height,
width, channels]` float images; a 1-D model takes `[batch, length, channels]`
signals or `[batch, length]` token ids, and says so (`inputs_of`). A name is
one of `MODELS` (the seed network and the classic architectures, a module per
family) or a text spec of a conv stack (`cnn_jax.models.spec`).
"""

from collections.abc import Callable

import flax.linen as nn

from cnn_jax.data.dataset import IMAGES, SIGNALS, TOKENS
from cnn_jax.errors import UserError
from cnn_jax.models import alexnet, allconv, convnet, googlenet, inception, lenet, resnet, spec, textcnn, variants, vgg
from cnn_jax.models.base import SMALL_INPUT, Entry, input_spec, inputs_of
from cnn_jax.models.convnet import ConvNet

__all__ = ["DEFAULT_MODELS", "MODELS", "SMALL_INPUT", "ConvNet", "Entry", "input_spec", "inputs_of", "lookup"]

MODELS: dict[str, Entry] = {
    **convnet.MODELS,
    **lenet.MODELS,
    **alexnet.MODELS,
    **vgg.MODELS,
    **googlenet.MODELS,
    **inception.MODELS,
    **resnet.MODELS,
    **allconv.MODELS,
    **variants.MODELS,
    **textcnn.MODELS,
}

DEFAULT_MODELS = {IMAGES: "convnet", SIGNALS: "convnet1d", TOKENS: "textcnn"}
"""The model a run trains when none is named, by what its dataset holds."""


def lookup(name: str) -> Callable[..., nn.Module]:
    """The model called `name` (a zoo name or a text spec), as a constructor taking `num_classes=`."""
    if name in MODELS:
        return MODELS[name].build
    if spec.is_spec(name):
        return spec.parse(name)
    raise UserError(f"unknown model '{name}': choose one of {', '.join(MODELS)}, or write a conv stack as a "
                    "text spec (README: 'Any stack from the command line')")
