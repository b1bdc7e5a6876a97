"""Reusing a trained network: starting from its weights, and freezing what should not move.

    source = transfer.read("runs/pretrained")              # a run's workdir, or one of its checkpoint folders
    merged = transfer.merge(fresh_variables, source.variables)
    merged.variables, merged.loaded, merged.fresh           # what fits is loaded, the rest stays fresh
    frozen = transfer.frozen_paths(model, "backbone", (28, 28, 1))   # every parameter but the classifier's
    tx = transfer.partitioned(optax.adam(1e-3), params, frozen)

The conventions are those of Keras's transfer-learning guide, timm and
big_vision. Every layer whose path and shape match the new model is loaded,
its parameters and BatchNorm statistics alike; a layer of another shape (a
classifier for another number of classes) starts from the new model's
initialisation, or from zeros. A source whose paths differ is another
architecture and is refused.

A frozen parameter gets no update and no optimizer state (`optax.partition`
with `optax.set_to_zero`). A module whose parameters are all frozen runs in
inference mode while the rest trains: its BatchNorm normalises with its
running statistics and keeps them, its dropout is off. The training step
differentiates only the trainable parameters (`split`, `join`), so nothing is
computed backwards through frozen layers that no trainable one sits below: a
linear probe costs about a forward pass.

Paths are written as `experiments.summary` names layers, a leaf's name last:
`ConvBlock_0/Conv_0/kernel`.
"""

import contextlib
import dataclasses
import inspect
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from cnn_jax import models
from cnn_jax.errors import UserError

BACKBONE = "backbone"
"""`freeze`'s name for every parameter but the classifier's."""

CLASSIFIER = "classifier"
"""`reinit`'s name for the classifier (`classifier`)."""

SHOWN = 3
"""How many mismatched paths an error names."""


def flat(tree) -> dict[str, Any]:
    """{'a/b/kernel': leaf} of a nested dict of arrays."""
    return traverse_util.flatten_dict(tree, sep="/")


def unflat(leaves: dict[str, Any]) -> dict:
    return traverse_util.unflatten_dict(leaves, sep="/")


def layer_of(path: str) -> str:
    """The layer a leaf's path belongs to: the path without the leaf's name."""
    return path.rpartition("/")[0]


def _first(paths: Sequence[str]) -> str:
    return ", ".join(paths[:SHOWN]) + (f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")


@dataclasses.dataclass(frozen=True)
class Source:
    """A trained run's weights: `variables` ({'params', 'batch_stats'}) of the checkpoint in `folder`, at `step`."""

    folder: str
    step: int
    variables: dict[str, Any]


def read(path: str) -> Source:
    """The newest checkpoint of the run in `path` (a workdir), or the checkpoint folder `path` itself
    (`<workdir>/checkpoints/<step>`); UserError if it holds neither."""
    from cnn_jax.training import checkpoint  # Imports orbax: only when a run starts from another.

    step = checkpoint.newest_step(path) if os.path.isdir(path) else None
    folder = os.path.join(path, checkpoint.CHECKPOINT_DIR, str(step)) if step is not None else path
    state = os.path.join(os.path.abspath(folder), "state")
    if not os.path.isdir(state):
        raise UserError(f"`init_from`={path} holds no checkpoint (neither {os.path.join(path, 'checkpoints')}/<step> "
                        "nor a checkpoint folder's state/); give a trained run's workdir or one of its checkpoint "
                        "folders")
    import orbax.checkpoint as ocp

    try:
        restored = ocp.StandardCheckpointer().restore(state)
    except (ValueError, OSError) as e:
        raise UserError(f"`init_from`={path}: its checkpoint cannot be read ({str(e).splitlines()[0][:200]})") from None
    variables = {"params": restored["params"], "batch_stats": restored.get("batch_stats") or {}}
    return Source(folder, int(restored["step"]), jax.tree.map(np.asarray, variables))


@dataclasses.dataclass(frozen=True)
class Merged:
    """A merged tree, and the paths of its leaves taken from the restored tree (`loaded`) and kept from the
    fresh one (`fresh`: of another shape, or named to keep)."""

    variables: dict[str, Any]
    loaded: list[str]
    fresh: list[str]

    @property
    def fresh_layers(self) -> list[str]:
        """The layers with a fresh leaf, without their collection ('DenseHead_0/Dense_0'), in path order."""
        return list(dict.fromkeys(layer_of(path.partition("/")[2]) for path in self.fresh))


def merge(fresh, restored, keep: Sequence[str] = (), source: str = "the restored tree") -> Merged:
    """`fresh` with every leaf whose path and shape `restored` has replaced by restored's (cast to fresh's dtype),
    except those whose path matches a regex of `keep`.

    UserError, naming the first paths that differ, when the two trees' paths differ (`source` names the
    restored tree in it): another architecture.
    """
    new, old = flat(fresh), flat(restored)
    only_new, only_old = [p for p in new if p not in old], [p for p in old if p not in new]
    if only_new or only_old:
        differences = "; ".join(part for part in (only_new and f"only in the new model: {_first(only_new)}",
                                                  only_old and f"only in {source}: {_first(only_old)}") if part)
        raise UserError(f"{source} is another architecture ({differences}); start from a run of the same model")
    kept = {p for p in new if np.shape(new[p]) != np.shape(old[p]) or any(re.search(k, p) for k in keep)}
    leaves = {p: new[p] if p in kept else jnp.asarray(old[p], jnp.result_type(new[p])) for p in new}
    return Merged(unflat(leaves), [p for p in new if p not in kept], [p for p in new if p in kept])


def zeroed(variables, layers: Sequence[str]):
    """`variables` with the parameters of `layers` (paths without the collection) set to 0."""
    return unflat({path: jnp.zeros_like(leaf) if path.startswith("params/") and layer_of(path[7:]) in layers
                   else leaf for path, leaf in flat(variables).items()})


def start(state, model: nn.Module, image_shape: tuple[int, ...], config):
    """(`state` with the weights of the run or checkpoint `config.init_from` merged in, a record of it).

    The layers it has no weights of this shape for, and those `config.reinit` names ("classifier", or a regex
    over their paths), keep `state`'s weights, or are zeroed (`config.new_layers="zeros"`); the optimizer
    state and step stay `state`'s. The record (for results.json) names the checkpoint, its step, the number of
    leaves loaded and the new layers.
    """
    source = read(config.init_from)
    fresh = {"params": state.params, "batch_stats": state.batch_stats}
    layers = reinit_layers(model, config.reinit, image_shape, fresh)
    keep = [f"^[^/]+/{re.escape(layer)}/" for layer in layers]  # In every collection: params and statistics.
    merged = merge(fresh, source.variables, keep, source=f"`init_from`={config.init_from}")
    variables = merged.variables
    if config.new_layers == "zeros":
        variables = zeroed(variables, merged.fresh_layers)
    record = {"path": config.init_from, "checkpoint": source.folder, "step": source.step,
              "loaded": len(merged.loaded), "fresh": merged.fresh_layers, "new_layers": config.new_layers}
    return state.replace(params=variables["params"], batch_stats=variables.get("batch_stats", {})), record


def reinit_layers(model: nn.Module, reinit: str, image_shape: tuple[int, ...], variables=None) -> list[str]:
    """The layers `reinit` names: none for "", the classifier for "classifier", else those with a parameter
    whose path a regex search finds (paths as `frozen_paths` matches them); UserError if it finds none."""
    if not reinit:
        return []
    if reinit == CLASSIFIER:
        return [classifier(model, image_shape, variables)]
    paths = list(flat(_abstract(model, image_shape, variables)["params"]))
    layers = list(dict.fromkeys(layer_of(p) for p in paths if re.search(reinit, p)))
    if not layers:
        raise UserError(f"`reinit`={reinit!r} matches no layer; the paths are: {', '.join(paths)}")
    return layers


def _abstract(model: nn.Module, image_shape: tuple[int, ...], variables=None):
    """The shapes of `variables`, or of `model`'s own for images of `image_shape` (traced, nothing computed)."""
    if variables is None:
        return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                              models.input_spec(model, image_shape))
    return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype), variables)


def classifier(model: nn.Module, image_shape: tuple[int, ...], variables=None) -> str:
    """The path of `model`'s classifier: the last layer with parameters that its test-mode forward pass calls
    (traced, nothing computed; `variables`, if given, spare tracing its initialisation)."""
    called = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        own = context.module.variables.get("params", {})
        if any(not isinstance(value, dict) for value in own.values()):
            called.append("/".join(context.module.path))
        return out

    with nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=False), _abstract(model, image_shape, variables),
                       models.input_spec(model, image_shape))
    return called[-1]


def frozen_paths(model: nn.Module, freeze: str, image_shape: tuple[int, ...], variables=None) -> frozenset[str]:
    """The parameter paths `freeze` names: none for "", every one but the classifier's for "backbone", else
    those a regex search finds (`variables`, if given, spare tracing the model's initialisation).

    UserError when the pattern matches nothing (listing the paths), matches every parameter, or freezes a
    BatchNorm without the block that calls it (which decides whether it runs in inference mode).
    """
    if not freeze:
        return frozenset()
    variables = _abstract(model, image_shape, variables)
    paths = list(flat(variables["params"]))
    if freeze == BACKBONE:
        head = classifier(model, image_shape, variables) + "/"
        frozen = [p for p in paths if not p.startswith(head)]
    else:
        frozen = [p for p in paths if re.search(freeze, p)]
        if not frozen:
            raise UserError(f"`freeze`={freeze!r} matches no parameter; the paths are: {', '.join(paths)}")
    if len(frozen) == len(paths):
        raise UserError(f"`freeze`={freeze!r} freezes every parameter: nothing would train")
    whole = inference_modules(paths, frozen)
    with_statistics = {layer_of(p) for p in flat(variables.get("batch_stats", {}))}  # The BatchNorms.
    norms = {layer_of(p) for p in frozen} & with_statistics
    for norm in sorted(norms):
        block = layer_of(norm)
        if block not in whole:
            raise UserError(f"`freeze`={freeze!r} freezes {norm} but not all of {block or 'the model'}: a BatchNorm "
                            f"runs in inference mode with the block that calls it; freeze all of "
                            f"{block or 'the model'} or none of {norm}")
    return frozenset(frozen)


def inference_modules(paths: Sequence[str], frozen: Sequence[str]) -> frozenset[str]:
    """The module paths all of whose parameters are frozen (of the parameter `paths`): those that run in
    inference mode."""
    frozen = set(frozen)
    modules = {}
    for path in paths:
        parts = path.split("/")
        for end in range(1, len(parts)):
            module = "/".join(parts[:end])
            modules[module] = modules.get(module, True) and path in frozen
    return frozenset(module for module, all_frozen in modules.items() if all_frozen)


@contextlib.contextmanager
def inference_mode(modules: frozenset[str]) -> Iterator[None]:
    """Within the block, a call of any module in `modules` whose `__call__` takes `train` gets `train=False`
    (its submodules follow it)."""
    if not modules:
        yield
        return

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and "/".join(context.module.path) in modules:
            signature = inspect.signature(next_fun)
            if "train" in signature.parameters:
                bound = signature.bind(*args, **kwargs)
                bound.arguments["train"] = False
                return next_fun(*bound.args, **bound.kwargs)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        yield


def split(params, frozen: frozenset[str]) -> tuple[dict, dict]:
    """(trainable, frozen) leaves of `params`, each a flat {path: leaf}."""
    leaves = flat(params)
    return ({p: v for p, v in leaves.items() if p not in frozen}, {p: v for p, v in leaves.items() if p in frozen})


def join(*parts: dict) -> dict:
    """The nested params of flat parts (`split`'s inverse)."""
    return unflat({path: leaf for part in parts for path, leaf in part.items()})


def partitioned(tx: optax.GradientTransformation, params, frozen: frozenset[str]) -> optax.GradientTransformation:
    """`tx` for the parameters not in `frozen`; the frozen ones get zero updates and no optimizer state."""
    if not frozen:
        return tx
    labels = unflat({path: "frozen" if path in frozen else "trainable" for path in flat(params)})
    return optax.partition({"trainable": tx, "frozen": optax.set_to_zero()}, labels)
