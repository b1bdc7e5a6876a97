"""Networks written as text: INPUT -> [[CONV -> ACT]*N -> POOL?]*M -> [FC -> ACT]*K -> FC.

A spec is layer tokens joined by `-`, then global options, each after a `:`.
Nothing in it needs quoting in a shell, so `--model c32-max-fc128:act=tanh` works.

    c32k5s1p2   convolution with 32 filters; k: kernel size (3), s: stride (1),
                p: zeros added per side (default "same": the size is kept at stride 1)
    maxk3s2p1   pooling by its `pooling.lookup` name (max, avg, l2, gaussian, mixed,
                mixed_learned, stochastic, spp, fractional, global_avg, global_max);
                k: window (2), s: stride (the window), p: padding (0). It ends a stage.
    fc128       hidden fully connected layer of 128 units; FC layers come last, and the
                final FC (num_classes wide) is implicit
    3xc64       `Nx` before any token repeats it N times
    emb128      first, for texts: each token id becomes a vector of 128 (`layers.Embedding`;
                the vocabulary's size comes from the dataset); the rest is 1-D
    :1d         the input is a sequence `[batch, length, channels]` (a signal such as
                MNIST-1D): kernels and windows run along its length
    :bn :nobn   BatchNorm after every convolution, or none (default :bn)
    :act=tanh   the activation after every convolution and hidden FC layer (default relu)
    :drop=0.5   dropout rate after every hidden FC layer (default 0: none)

Settings come in the order k, s, p and may be left out. Examples:

    c16k5-max-c32k5-max                               the seed network (29,034 parameters at 28×28×1)
    2xc64-max-2xc128-max-3xc256-max-fc512-fc512:drop=0.5    VGG-style
    c6k5p0-avg-c16k5p0-avg-fc120-fc84:nobn:act=tanh   LeNet-5-style
    c32s2-c64s2-global_avg                            all-convolutional
    c64k5-max-c64k5-max-c64k5-max:1d                  a 1-D stack for signals (the zoo's convnet1d)
    emb128-c100k3-global_max-fc100:drop=0.5           a sentence CNN with one window size

A spec that cannot work on its input fails when the model is initialised, naming
the layer, its input size and the output-size formula with the offending values.
"""

import dataclasses
import functools
import itertools
import re

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.analysis import arithmetic
from cnn_jax.data.dataset import IMAGES, SIGNALS, TOKENS
from cnn_jax.errors import UserError
from cnn_jax.layers import ConvBlock, DenseHead, Embedding, activations, pooling
from cnn_jax.layers.pooling import apply_pool
from cnn_jax.models.base import check_input

GRAMMAR = ("write layers such as c32k5s1p2, maxk3s2, fc128 (each may start with Nx, a repeat count; emb128 first "
           "for texts) joined by '-', then options :1d :bn :nobn :act=NAME :drop=RATE")

_REPEAT = re.compile(r"(?:([1-9]\d*)x)?(.*)", re.DOTALL)
_CONV = re.compile(r"c([1-9]\d*)(?:k([1-9]\d*))?(?:s([1-9]\d*))?(?:p(\d+))?")
_POOL = re.compile(r"([a-z][a-z0-9_]*?)(?:k([1-9]\d*))?(?:s([1-9]\d*))?(?:p(\d+))?")
_FC = re.compile(r"fc([1-9]\d*)")
_EMBEDDING = re.compile(r"emb([1-9]\d*)")
_NAME = re.compile(r"[a-z][a-z0-9_]*")


@dataclasses.dataclass(frozen=True)
class Stage:
    """Convolutions of one geometry, then optional pooling: [CONV -> (BN) -> ACT] * len(features) -> POOL?

    `padding` is zeros per side or "same"; `pool` is a `pooling.lookup` name or None.
    """

    features: tuple[int, ...] = ()
    kernel_size: int = 3
    strides: int = 1
    padding: int | str = "same"
    pool: str | None = None
    pool_window: int = 2
    pool_stride: int | None = None
    pool_padding: int = 0


class PatternNet(nn.Module):
    """INPUT -> [[CONV -> (BN) -> ACT] * N -> POOL?] * len(stages) -> [FC -> ACT -> DROPOUT] * len(hidden) -> FC.

    Maps `[batch, height, width, channels]` images to logits `[batch, num_classes]`;
    with `dims` 1, `[batch, length, channels]` signals; with an `embedding`
    width, `[batch, length]` token ids of a vocabulary of `vocab_size`.
    `activation` is an `activations.lookup` name; `dropout` the rate after each
    hidden FC layer. Raises UserError while tracing if a layer's input is too
    small for it.
    """

    num_classes: int = 10
    stages: tuple[Stage, ...] = ()
    hidden: tuple[int, ...] = ()
    activation: str = "relu"
    batch_norm: bool = True
    dropout: float = 0.0
    dims: int = 2
    embedding: int = 0
    vocab_size: int = 0

    @property
    def inputs(self) -> str:
        """What the network takes (`cnn_jax.models.inputs_of`)."""
        return TOKENS if self.embedding else SIGNALS if self.dims == 1 else IMAGES

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        check_input("this spec", self.inputs, x)
        if self.embedding:
            x = Embedding(self.vocab_size, self.embedding)(x)
        activation = activations.lookup(self.activation)
        layer, previous = 0, None  # The spec's layer number and the last layer's token, for errors.
        for stage in self.stages:
            if x.ndim != self.dims + 2:
                raise UserError(f"layer {layer + 1} needs a {MAPS[self.dims]}, but layer {layer} '{previous}' leaves "
                                "[batch, features] vectors; put it last, before the FC layers")
            size = x.shape[1:-1]
            for width in stage.features:
                layer += 1
                size = _conv_output_size(size, stage, f"layer {layer} '{_conv_token(stage, width)}'")
            pool = stage.pool and pooling.lookup(stage.pool, stage.pool_window, stage.pool_stride, stage.pool_padding)
            try:
                for i, width in enumerate(stage.features):
                    last = i == len(stage.features) - 1
                    # The stage's pooling goes in its last ConvBlock, where BN -> ReLU -> 2×2 max runs fused on CPU.
                    x = ConvBlock(width, stage.kernel_size, stage.strides, _conv_padding(stage), self.batch_norm,
                                  activation, pool if last else None)(x, train)
                if not stage.features:
                    x = apply_pool(pool, x, train)
            except UserError as error:  # Only the pooling can fail here: the convolutions were checked above.
                token = _pool_token(stage)
                raise UserError(f"layer {layer + 1} '{token}' on its {_size(size)} input: {error}") from None
            layer, previous = layer + bool(stage.pool), stage.pool and _pool_token(stage)
        return DenseHead(self.num_classes, self.hidden, activation, self.dropout)(x, train)


def _conv_padding(stage: Stage) -> int | str:
    """ConvBlock's padding: "same" as zeros per side where that is symmetric, since the CPU fast paths need numbers."""
    if stage.padding == "same":
        return stage.kernel_size // 2 if stage.kernel_size % 2 and stage.strides == 1 else "SAME"
    return stage.padding


MAPS = {1: "[batch, length, channels] sequence", 2: "[batch, height, width, channels] map"}


def _size(size: tuple[int, ...]) -> str:
    return "×".join(map(str, size))


def _conv_output_size(size: tuple[int, ...], stage: Stage, layer: str) -> tuple[int, ...]:
    """(height, width), or (length,), after one of `stage`'s convolutions (`arithmetic`: "same" padding gives
    ceil(in / stride))."""
    if stage.padding == "same":
        return tuple(arithmetic.same_output_size(n, stage.strides) for n in size)
    where = f"{layer} on its {_size(size)} input"
    return tuple(arithmetic.conv_output_size(n, stage.kernel_size, stage.strides, stage.padding, layer=where)
                 for n in size)


def _options(letters: str, values: tuple, defaults: tuple) -> str:
    return "".join(f"{letter}{value}" for letter, value, default in zip(letters, values, defaults) if value != default)


def _conv_token(stage: Stage, width: int) -> str:
    return f"c{width}" + _options("ksp", (stage.kernel_size, stage.strides, stage.padding), (3, 1, "same"))


def _pool_token(stage: Stage) -> str:
    return stage.pool + _options("ksp", (stage.pool_window, stage.pool_stride, stage.pool_padding), (2, None, 0))


def is_spec(name: str) -> bool:
    """Whether `name` is a spec, not a zoo name (a lower-case identifier not starting c<digit> or fc<digit>)."""
    return not _NAME.fullmatch(name) or bool(re.match(r"f?c\d", name))


def parse(spec: str) -> functools.partial:
    """The `PatternNet` that `spec` describes, still to be given `num_classes=`; see the module docstring."""
    layers_text, *option_texts = spec.split(":")
    stages, convs, hidden, model = [], [], [], {}
    column = 1

    def fail(kind, index, token, why, hint=f"; {GRAMMAR}"):
        raise UserError(f"model spec '{spec}': {kind} {index} '{token}' at column {column} {why}{hint}")

    def close_stage(**pool):
        """Ends the open stage: its convolutions (all of one geometry), then the pooling `pool` describes, if any."""
        if convs or pool:
            stages.append(Stage(tuple(width for width, _ in convs), *(convs[0][1] if convs else ()), **pool))
            convs.clear()

    for index, token in enumerate(layers_text.split("-"), 1):
        count, body = _REPEAT.fullmatch(token).groups()
        if embedding := _EMBEDDING.fullmatch(token):
            if index > 1:
                fail("token", index, token, "is an embedding, which comes first: it turns token ids into a sequence")
            model.update(embedding=int(embedding[1]), dims=1)
            column += len(token) + 1
            continue
        for _ in range(int(count or 1)):
            if body.startswith("fc"):
                if not (fc := _FC.fullmatch(body)):
                    fail("token", index, token, "is not a fully connected layer")
                hidden.append(int(fc[1]))
                continue
            if hidden:
                fail("token", index, token, "comes after a fully connected layer; convolutions and pooling come first")
            if re.match(r"c\d", body):
                if not (conv := _CONV.fullmatch(body)):
                    fail("token", index, token, "is not a convolution")
                geometry = (int(conv[2] or 3), int(conv[3] or 1), "same" if conv[4] is None else int(conv[4]))
                if convs and convs[0][1] != geometry:
                    close_stage()
                convs.append((int(conv[1]), geometry))
            elif pool := _POOL.fullmatch(body):
                window, stride = int(pool[2] or 2), int(pool[3] or pool[2] or 2)
                # The stride is kept only where it differs from the window, so equal layers compare equal.
                options = dict(pool=pool[1], pool_window=window, pool_stride=None if stride == window else stride,
                               pool_padding=int(pool[4] or 0))
                try:
                    pooling.lookup(pool[1], window, options["pool_stride"], options["pool_padding"])
                except UserError as error:
                    fail("token", index, token, f"names no pooling: {error}", hint="")
                close_stage(**options)
            else:
                fail("token", index, token, "is not a layer")
        column += len(token) + 1
    close_stage()

    model.update(stages=tuple(stages), hidden=tuple(hidden))
    for index, option in enumerate(option_texts, 1):
        name, _, value = option.partition("=")
        if option in ("bn", "nobn"):
            model["batch_norm"] = option == "bn"
        elif option == "1d":
            model["dims"] = 1
        elif name == "act" and value:
            try:
                activations.lookup(value)
            except UserError as error:
                fail("option", index, option, f"names no activation: {error}", hint="")
            model["activation"] = value
        elif name == "drop":
            if not re.fullmatch(r"0?\.\d+|0", value):
                fail("option", index, option, "needs a rate from 0 up to (not including) 1, such as drop=0.5")
            if not hidden:
                fail("option", index, option, "has no effect: dropout follows hidden FC layers and there are none")
            model["dropout"] = float(value)
        else:
            fail("option", index, option, "is not an option")
        column += len(option) + 1
    return functools.partial(PatternNet, **model)


def to_spec(model: PatternNet) -> str:
    """The shortest spec that `parse` turns back into `model`'s layers and options."""

    def repeated(tokens):
        runs = [(token, len(list(group))) for token, group in itertools.groupby(tokens)]
        return [f"{count}x{token}" if count > 1 else token for token, count in runs]

    tokens = [f"emb{model.embedding}"] if model.embedding else []
    for stage in model.stages:
        tokens += repeated(_conv_token(stage, width) for width in stage.features)
        tokens += [_pool_token(stage)] if stage.pool else []
    tokens += repeated(f"fc{width}" for width in model.hidden)
    options = ["1d"] if model.dims == 1 and not model.embedding else []
    options += [] if model.batch_norm else ["nobn"]
    options += [] if model.activation == "relu" else [f"act={model.activation}"]
    options += [f"drop={model.dropout:g}"] if model.dropout else []
    return ":".join(["-".join(tokens), *options])
