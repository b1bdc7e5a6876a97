"""Every layer's output with positions from one forward pass, by name, and the forward pass with one output changed.

    logits, outputs = forward(model, variables, images)             # outputs: {name: [b, h, w, c]}, in call order
    logits = forward(model, variables, images, edit=("ConvBlock_1", lambda a: a + delta))[0]

A layer is a module call that returns a map, `[b, h, w, c]` in a model of
images and `[b, length, c]` in one of signals or token ids (`MAP_RANK`): a
convolution, a BatchNorm, a block (a `ConvBlock` after its pooling, a ResNet
block after its addition, an Inception block after its concatenation), a
text model's word vectors (`embedding_layer`), or a
`cnn_jax.layers.pooling` pooling (a function, named after the module that
applies it, `stem/max_pool_0`, as `experiments.summary` names it). The
outputs are recorded as the one forward pass computes them, with Flax's
`nn.intercept_methods` (the mechanism behind `capture_intermediates`) and
`pooling.watch`; nothing is run twice. A block that returns its last layer's
array unchanged (a ConvBlock's pooling) is listed once, under the block's
name. `layers.ConvWithoutBias`, which returns (convolution, bias) for the
fused kernel to add, is recorded as their sum: the convolution's output.

The forward pass runs in test mode (BatchNorm's running averages, no
dropout) and on XLA's own operations (`dispatch.xla_only`), which every JAX
transformation (vmap, forward- and reverse-mode gradients w.r.t. the input)
accepts. Call it inside `jax.jit`.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from cnn_jax import data, models
from cnn_jax.errors import UserError
from cnn_jax.kernels import dispatch
from cnn_jax.layers import pooling
from cnn_jax.layers.blocks import ConvWithoutBias

MANY_LAYERS = 24
"""Above this many layers, a model's layers to show default to its outermost ones (a ResNet's blocks, not their
convolutions)."""

MAP_RANK = {data.IMAGES: 4, data.SIGNALS: 3, data.TOKENS: 3}
"""The rank of a layer's output with positions, by what the model takes (`models.inputs_of`): `[b, h, w, c]` in
a model of images, `[b, length, c]` in one of signals or token ids."""

Edit = tuple[str, Callable[[jnp.ndarray], jnp.ndarray]]
"""(layer name, f): the forward pass continues from f(output) of that layer instead of its output."""


class Layer(NamedTuple):
    """A layer's output shape, one example's (`(height, width, channels)`, or `(length, channels)` in a model of
    sequences), and what it is: a module's class name ("Conv", "BatchNorm", "ConvBlock", "Embed", ...) or a
    pooling's name ("max_pool", ...)."""

    shape: tuple[int, ...]
    kind: str
    editable: bool  # Whether `forward(edit=...)` can change it: not a pooling (edit its module) nor a ConvWithoutBias.


class _Recorder:
    """The interceptor and pooling watcher: names each layer's output as the model computes it."""

    def __init__(self, edit: Edit | None, rank: int):
        self.rank = rank  # A layer's output with positions has this many dimensions (`MAP_RANK`).
        self.outputs: dict[str, jnp.ndarray] = {}
        self.scope: list[str] = []
        self.pools: dict[tuple[str, str], int] = {}
        self.kinds: dict[str, tuple[str, bool]] = {}  # name -> (kind, editable)
        self.edit = edit
        self.edited = False

    def _record(self, name: str, kind: tuple[str, bool], out):
        if not (isinstance(out, jax.Array) and out.ndim == self.rank):
            return
        for earlier, array in list(self.outputs.items()):
            if array is out:  # A block returning its last layer's output: listed under the block's name.
                del self.outputs[earlier], self.kinds[earlier]
        self.outputs[name], self.kinds[name] = out, kind

    def pooled(self, kind, x, out, window, stride, padding):
        scope = self.scope[-1] if self.scope else ""
        count = self.pools.get((scope, kind), 0)
        self.pools[scope, kind] = count + 1
        name = f"{scope}/{kind}_{count}".lstrip("/")
        self._record(name, (kind, False), out)

    def __call__(self, next_fun, args, kwargs, context):
        name = "/".join(context.module.path)
        if context.method_name != "__call__" or self.scope and self.scope[-1] == name:  # Or a super().__call__.
            return next_fun(*args, **kwargs)
        self.scope.append(name)
        try:
            out = next_fun(*args, **kwargs)
        finally:
            self.scope.pop()
        if not name:  # The model itself: its logits.
            return out
        editable = not isinstance(context.module, ConvWithoutBias)  # Its (convolution, bias) pair: edit the block.
        if editable and self.edit is not None and self.edit[0] == name:
            out = self.edit[1](out)
            self.edited = True
        if editable:
            self._record(name, (type(context.module).__name__, True), out)
        else:
            self._record(name, ("Conv", False), out[0] + out[1])  # ConvWithoutBias: (convolution, bias).
        return out


def _recorder(model: nn.Module, edit: Edit | None = None) -> _Recorder:
    return _Recorder(edit, MAP_RANK[models.inputs_of(model)])


def forward(model: nn.Module, variables, images: jnp.ndarray, edit: Edit | None = None
            ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """(logits, {layer name: output}) of `model` on its input, in test mode: float `images` `[b, h, w, c]`, float
    signals `[b, length, channels]` or token ids `[b, length]`.

    The dict is in call order here; returned from a jitted function its keys
    come back sorted (`layer_shapes` keeps the order).

    With `edit=(name, f)` the pass goes on from f(output) of module layer
    `name` (poolings inside a module are edited through that module), and
    its recorded output is f's. UserError if `name` is no module layer.
    """
    recorder = _recorder(model, edit)
    with dispatch.xla_only(), nn.intercept_methods(recorder), pooling.watch(recorder.pooled):
        logits = model.apply(variables, images, train=False)
    if edit is not None and not recorder.edited:
        modules = [name for name, (_, editable) in recorder.kinds.items() if editable]
        raise UserError(f"no module layer '{edit[0]}' to edit: choose one of {', '.join(modules)}")
    return logits, recorder.outputs


def layers(model: nn.Module, variables, image_shape: tuple[int, ...]) -> dict[str, Layer]:
    """{name: Layer} of `model` at `image_shape` (one example's: `Dataset.image_shape`), in call order (traced,
    nothing computed)."""
    found = {}  # A dict returned through JAX comes back with its keys sorted: the names and kinds leave this way.

    def outputs(images):
        recorder = _recorder(model)
        with dispatch.xla_only(), nn.intercept_methods(recorder), pooling.watch(recorder.pooled):
            model.apply(variables, images, train=False)
        found.update(recorder.kinds)
        return recorder.outputs

    shapes = jax.eval_shape(outputs, models.input_spec(model, image_shape))
    return {name: Layer(tuple(shapes[name].shape[1:]), *kind) for name, kind in found.items()}


def check_layers(names, known: dict[str, Layer]) -> list[str]:
    """`names` if each is one of the `known` layers (`layers`); UserError listing them otherwise."""
    unknown = [name for name in names if name not in known]
    if unknown:
        raise UserError(f"unknown layer '{unknown[0]}': choose from {', '.join(known)}")
    return list(names)


def positions(layer: Layer) -> int:
    """How many positions a layer's output has: pixels of a map, steps of a sequence."""
    return math.prod(layer.shape[:-1])


def last_spatial_layer(known: dict[str, Layer]) -> str:
    """The last editable layer with a map of more than one position (`layers` gives `known`): Grad-CAM's default.

    A layer is recorded when it returns, after the layers inside it, so this
    is the outermost one: for a ConvNet its last block, for a ResNet its last
    residual block, for GoogLeNet its last Inception block.
    """
    spatial = [name for name, layer in known.items() if layer.editable and positions(layer) > 1]
    if not spatial:
        raise UserError("the model has no layer with a map of more than one position at this input size")
    return spatial[-1]


def embedding_layer(known: dict[str, Layer]) -> str:
    """The first word-vector lookup (a Flax `nn.Embed`) among the `known` layers: where the attribution of a model
    of token ids starts (`attribution`), since its integer ids have no gradient. Its output is the table's rows
    as looked up, before `cnn_jax.layers.Embedding` zeroes padding's: a change there reaches the network
    everywhere but at padding. UserError if the model has none."""
    found = [name for name, layer in known.items() if layer.kind == "Embed"]
    if not found:
        raise UserError("the model takes token ids but looks up no word vectors (no flax nn.Embed): there is "
                        "nothing to differentiate its output by")
    return found[0]


def default_layers(known: dict[str, Layer]) -> list[str]:
    """Every layer, or for a model of more than `MANY_LAYERS` layers its outermost ones; never a word-vector lookup
    inside a module (`cnn_jax.layers.Embedding`'s, whose own output, padding zeroed, is what the network reads)."""
    shown = [name for name, layer in known.items() if not (layer.kind == "Embed" and "/" in name)]
    if len(shown) <= MANY_LAYERS:
        return shown
    return [name for name in shown if "/" not in name]
