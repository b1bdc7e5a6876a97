"""Do the maps depend on what the network learned? Cascading randomisation (Adebayo et al. 2018).

    report = sanity.cascading_randomisation(model, variables, images, classes, ["saliency", "grad_cam"], key)
    report["saliency"].correlations   # [(group, mean Spearman ρ), ...]: from the top group down to the first
    report["saliency"].absolute_correlations   # the same for |maps|
    report["saliency"].flagged        # True: the maps, or their magnitudes, barely changed with every group random

The layer groups are the top-level entries of the params tree (a ConvNet's
`ConvBlock_0`, `ConvBlock_1`, `DenseHead_0`; a ResNet's stem, blocks and
head), ordered from the top: the last called first (`layer_groups`).
Step k re-initialises the top k groups, params and batch_stats alike, to
their values from `model.init(key)`, and keeps the rest trained; each
method's maps of the same images and classes are compared with its maps
from the trained network by Spearman's rank correlation over the pixels,
image by image (a text's tokens but its padding, which every method gives
0), averaged. A method that explains the network decorrelates
as its layers go; one still above `threshold` with every group random is
flagged: its maps show the image (edges, brightness) more than what the
network learned, as the paper found of Guided Backprop (and, by their
magnitudes, of gradient × input methods on images with a black background).

A map that is constant (Grad-CAM's after its ReLU, when nothing in a random
network supports the class) ranks nothing: its correlation counts as 0.
"""

from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from cnn_jax import data, models
from cnn_jax.analysis.inspect import attribution
from cnn_jax.errors import UserError
from cnn_jax.kernels import dispatch

THRESHOLD = 0.5
"""The mean rank correlation, with every layer group random, above which a method's maps are flagged."""


class Cascade(NamedTuple):
    """One method's cascading randomisation: (top group re-initialised down to, mean Spearman ρ with the trained
    network's maps) per step, top group first; the same of the maps' absolute values; and whether either last
    correlation is above the threshold."""

    correlations: list[tuple[str, float]]
    absolute_correlations: list[tuple[str, float]]
    flagged: bool


def spearman(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """`[n]`: Spearman's rank correlation of `a[i]` and `b[i]` over their other axes (ties ranked by their mean),
    or only where `mask[i]` (of their shape) is true; 0 where either is constant."""
    if mask is not None:
        return np.array([spearman(x[m][None], y[m][None])[0] for x, y, m in zip(a, b, np.asarray(mask, bool))])
    a, b = (scipy.stats.rankdata(np.asarray(x, np.float64).reshape(len(x), -1), axis=1) for x in (a, b))
    a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    norms = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    return np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1), 0.0)


def layer_groups(model: nn.Module, variables, image_shape: tuple[int, ...]) -> list[str]:
    """The top-level keys of `variables["params"]`, the last called first (traced, nothing computed).

    The call order comes from the modules' calls, not the params tree, whose
    keys a checkpoint may have sorted (`BasicBlock_10` before `BasicBlock_2`).
    """
    order: list[str] = []

    def record(next_fun, args, kwargs, context):
        path = context.module.path
        if path and path[0] not in order:
            order.append(path[0])
        return next_fun(*args, **kwargs)

    with dispatch.xla_only(), nn.intercept_methods(record):
        jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, models.input_spec(model, image_shape))
    params = list(variables["params"])
    called = [name for name in order if name in params]
    return [*reversed(called), *(name for name in params if name not in called)]


def randomised(variables, fresh, groups: Sequence[str]):
    """`variables` with the entries of `groups` in every collection taken from `fresh` (a `model.init`)."""
    return {collection: {**entries, **{name: fresh[collection][name] for name in groups
                                       if name in fresh.get(collection, {})}}
            for collection, entries in variables.items()}


def cascading_randomisation(model: nn.Module, variables, images: jnp.ndarray, classes: jnp.ndarray,
                            methods: Sequence[str] = tuple(attribution.METHODS), key=None,
                            options: dict[str, dict] | None = None, threshold: float = THRESHOLD
                            ) -> dict[str, Cascade]:
    """{method: Cascade} for `methods` (names in `attribution.METHODS`) on `images` (the model's inputs) and
    `classes`.

    `key` (default `attribution.default_key()`) initialises the random layers;
    `options` gives a method its keyword arguments ({"occlusion": {"patch":
    4}}). The maps are compared as they are and by their absolute values
    (the paper reports both: signed maps, integrated gradients' and
    occlusion's, can keep their magnitudes' ranking while their signs
    scramble).
    """
    methods = list(methods)
    found = [attribution.lookup(name) for name in methods]
    options = options or {}
    unused = sorted(set(options) - set(methods))
    if unused:
        raise UserError(f"`options` for '{unused[0]}', which is not among the methods checked: "
                        f"{', '.join(methods)}")
    key = attribution.default_key() if key is None else key
    images = jnp.asarray(images)
    classes = jnp.asarray(classes)
    fresh = jax.jit(lambda k: model.init(k, jnp.zeros((1, *images.shape[1:]), images.dtype), train=False))(key)
    # Every array committed to one device, as a checkpoint's are: a step mixing committed and uncommitted arrays
    # would compile each method again.
    variables, fresh = jax.device_put((variables, fresh), jax.devices()[0])
    groups = layer_groups(model, variables, images.shape[1:])
    words = np.asarray(images) != 0 if models.inputs_of(model) == data.TOKENS else None  # Padding is id 0.

    def maps(method, name, current):
        return np.asarray(method(model, current, images, classes, **options.get(name, {})))

    originals = [maps(method, name, variables) for method, name in zip(found, methods)]
    signed, absolute = ({name: [] for name in methods} for _ in range(2))
    for depth, group in enumerate(groups, 1):
        current = randomised(variables, fresh, groups[:depth])
        for method, name, original in zip(found, methods, originals):
            now = maps(method, name, current)
            signed[name].append((group, float(spearman(original, now, words).mean())))
            absolute[name].append((group, float(spearman(np.abs(original), np.abs(now), words).mean())))
    return {name: Cascade(signed[name], absolute[name], max(signed[name][-1][1], absolute[name][-1][1]) > threshold)
            for name in methods}
