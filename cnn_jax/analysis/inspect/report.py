"""What `experiments.inspect` writes for a trained run: every picture, the arrays behind it, inspect.json and a page.

    figures_and_numbers = write(run, chosen, ["activations", "filters"], layers=None, out="RUN/inspect")

Each method below draws its pictures, saves its arrays (`<method>.npz`) and
returns its numbers for inspect.json and its figures for index.html. The
output folder is written whole or not at all: everything goes into a
temporary folder next to `out`, which replaces `out` at the end.
"""

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable

import numpy as np
from tqdm import tqdm

from cnn_jax import data
from cnn_jax.analysis.inspect import activations, figures, filters, taps
from cnn_jax.errors import UserError
from cnn_jax.training import steps, trained


@dataclasses.dataclass(frozen=True)
class Chosen:
    """The images to look at: uint8 `[b, h, w, c]` at the run's size, a label each, and their test indices (None
    for the user's own files)."""

    images: np.ndarray
    labels: list[str]
    indices: list[int] | None


@dataclasses.dataclass
class Context:
    """What every method works from, and where it writes."""

    run: trained.Run
    chosen: Chosen
    layers: dict[str, taps.Layer]  # Every layer of the model, in call order.
    shown_layers: list[str]  # The layers whose activation maps are drawn.
    out: str  # The (temporary) output folder.
    figures: list[dict] = dataclasses.field(default_factory=list)

    def figure(self, name: str, heading: str, caption: str, warning: str | None = None) -> str:
        """The path for PNG `name`, registered on the page with its heading and caption."""
        path = os.path.join(self.out, f"{name}.png")
        self.figures.append({"file": path, "heading": heading, "caption": caption, "warning": warning})
        return path

    def save_arrays(self, method: str, **arrays) -> None:
        np.savez_compressed(os.path.join(self.out, f"{method}.npz"), **arrays)

    @property
    def inputs(self) -> np.ndarray:
        """The chosen images as the model sees them: float32 in [0, 1]."""
        return data.normalize(self.chosen.images)


def _safe(name: str) -> str:
    return name.replace("/", "_")


def _activations(ctx: Context) -> dict:
    """Activation maps of the shown layers for the chosen images; sparsity and mean of every layer over the run's
    test images."""
    run = ctx.run
    maps = activations.activation_maps(run.model, run.variables, ctx.chosen.images, ctx.shown_layers)
    for depth, (name, layer_maps) in enumerate(maps.items()):
        kind = ctx.layers[name].kind
        ctx_path = ctx.figure(f"activations_{depth:02d}_{_safe(name)}", f"Activation maps: {name} ({kind})",
                              f"The output of layer {name} ({kind}, {layer_maps.shape[1]}×{layer_maps.shape[2]}×"
                              f"{layer_maps.shape[3]}) for each chosen image, one map per channel; each channel "
                              "has one colour scale (its minimum to maximum over these images).")
        figures.activation_grid(ctx.inputs, layer_maps, ctx.chosen.labels, f"{name}: activation maps", ctx_path)
    ctx.save_arrays("activations", **{_safe(name): value for name, value in maps.items()})
    stats = activations.layer_statistics(run.model, run.variables, run.dataset.test_images)
    names = list(stats)
    path = ctx.figure("activations_sparsity", "Sparsity by depth",
                      f"For every layer in call order, over the run's {len(run.dataset.test_images):,} test images: "
                      "the share of values at or below zero (what a ReLU sets to zero, for a layer before one; "
                      "exact zeros for a layer after one) and the mean activation.")
    figures.curves(names, {"share ≤ 0": [stats[n]["off_fraction"] for n in names]}, "share of activations ≤ 0",
                   "Sparsity by depth", path)
    return {"layers": stats, "shown": ctx.shown_layers}


def _first_convolution(ctx: Context) -> tuple[str, np.ndarray, np.ndarray]:
    """(name, trained kernel, initial kernel) of the model's first convolution; the initial one is the run's own
    (its seed's initialisation)."""
    run = ctx.run
    kernels = filters.convolution_kernels(run.model, run.variables, run.dataset.image_shape)
    if not kernels:
        raise UserError(f"model '{run.config.model}' has no convolution to show")
    initial = steps.create_train_state(run.model, run.config, run.dataset.image_shape)
    initial_kernels = filters.convolution_kernels(run.model, {"params": initial.params,
                                                              "batch_stats": initial.batch_stats},
                                                  run.dataset.image_shape)
    name = next(iter(kernels))
    return name, kernels[name], initial_kernels[name]


def _filters(ctx: Context) -> dict:
    """The first convolution's kernels as pictures; each later convolution's kernel norms over its inputs."""
    run = ctx.run
    kernels = filters.convolution_kernels(run.model, run.variables, run.dataset.image_shape)
    first, kernel = next(iter(kernels.items()))
    pictures = filters.kernel_images(kernel)
    path = ctx.figure("filters_first_layer", f"First-layer filters: {first}",
                      f"The {kernel.shape[3]} trained {kernel.shape[0]}×{kernel.shape[1]} kernels of {first}, each "
                      "scaled by its largest |weight|: mid-grey is 0, light positive, dark negative"
                      + (" (per colour)." if kernel.shape[2] == 3 else "."))
    figures.picture_grid(pictures, [str(k) for k in range(len(pictures))], f"{first}: kernels", path)
    norms = {}
    for depth, (name, deeper) in enumerate(list(kernels.items())[1:], start=1):
        norms[name] = filters.kernel_norms(deeper)
        path = ctx.figure(f"filters_norms_{depth:02d}_{_safe(name)}", f"Kernel norms: {name}",
                          f"For each of the {deeper.shape[3]} output channels of {name} (rows), the L2 norm of its "
                          f"{deeper.shape[0]}×{deeper.shape[1]} kernel on each of its {deeper.shape[2]} input "
                          "channels (columns): which inputs each channel listens to.")
        figures.heatmap(norms[name], "input channel", "output channel", f"{name}: kernel norms", path)
    ctx.save_arrays("filters", first_layer=kernel, **{f"norms_{_safe(n)}": v for n, v in norms.items()})
    return {"first_layer": first, "kernel_shape": list(kernel.shape), "norm_layers": list(norms)}


def natural_photograph() -> np.ndarray:
    """A grey natural photograph `[h, w]` in [0, 1]: scikit-learn's sample image of a Chinese temple, shipped with
    the package (no download)."""
    from sklearn.datasets import load_sample_image

    return load_sample_image("china.jpg").astype(np.float32).mean(axis=-1) / 255.0


def _hand_made(ctx: Context) -> dict:
    """Source 003's hand-made edge filters (and Sobel, a Laplacian) on a test image and on a photograph."""
    grey_test = ctx.inputs[0].mean(axis=-1)
    photo = natural_photograph()
    responses = {}
    for key, image, what in (("test_image", grey_test, f"the first chosen image ({ctx.chosen.labels[0]})"),
                             ("photograph", photo, f"a {photo.shape[0]}×{photo.shape[1]} grey photograph "
                                                   "(scikit-learn's sample image china.jpg)")):
        responses[key] = filters.apply_filters(image, filters.HAND_MADE)
        path = ctx.figure(f"hand_made_{key}", f"Hand-made filters on {key.replace('_', ' ')}",
                          f"The 3×3 filters of source 003 (horizontal, vertical and both diagonal edges) plus "
                          f"Sobel x/y and a Laplacian, applied through cnn_jax's own convolution to {what}; red "
                          "positive, blue negative, white zero.")
        figures.filter_responses(image, responses[key], "Hand-made 3×3 filters", path)
    ctx.save_arrays("hand_made", kernels=np.stack(list(filters.HAND_MADE.values())),
                    **{f"{key}_{_safe(n)}": v for key, rs in responses.items() for n, v in rs.items()})
    return {"filters": list(filters.HAND_MADE)}


def _edges(ctx: Context) -> dict:
    """The claim 'the first layer learns edge detectors', measured against the same filters at initialisation."""
    name, kernel, initial = _first_convolution(ctx)
    bank = filters.derivative_of_gaussian_bank(kernel.shape[0])
    random = np.random.default_rng(0).normal(size=(*kernel.shape[:3], 1000))
    scores = {"trained": filters.edge_scores(kernel, bank), "at initialisation": filters.edge_scores(initial, bank),
              "random Gaussian": filters.edge_scores(random, bank)}
    summary = {group: {"median": float(np.median(s)), "q25": float(np.percentile(s, 25)),
                       "q75": float(np.percentile(s, 75)), "count": int(len(s))} for group, s in scores.items()}
    path = ctx.figure("edges_first_layer", f"Are the first-layer filters edge detectors? ({name})",
                      f"Each {kernel.shape[0]}×{kernel.shape[1]} filter's best |cosine similarity| with a bank of "
                      f"{len(bank)} oriented first and second derivatives of Gaussians (8 orientations, 3 scales), "
                      f"trained vs the run's initial filters vs 1,000 random Gaussian filters; the bar is the "
                      "median: " + ", ".join(f"{group} {s['median']:.2f}" for group, s in summary.items()) + ".")
    figures.score_strips(scores, "best |cosine| with an oriented derivative of Gaussian", "Edge-likeness", path)
    ctx.save_arrays("edges", bank=bank, trained=scores["trained"], initial=scores["at initialisation"])
    return {"layer": name, "bank_size": len(bank), **summary}


METHODS: dict[str, Callable[[Context], dict]] = {
    "activations": _activations,
    "filters": _filters,
    "hand_made": _hand_made,
    "edges": _edges,
}
"""Every method, by name, in the order they run and appear on the page."""


def check_methods(names) -> list[str]:
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise UserError(f"unknown method '{unknown[0]}': choose from {', '.join(METHODS)}")
    return list(names)


def write(run: trained.Run, chosen: Chosen, methods: list[str], layers: list[str] | None, out: str) -> dict:
    """Runs `methods` on `run` for the `chosen` images, writing every file into `out` (replacing what was there);
    returns inspect.json's contents. Bad input raises UserError before anything is written."""
    check_methods(methods)
    known = taps.layers(run.model, run.variables, run.dataset.image_shape)
    shown = taps.check_layers(layers, known) if layers else taps.default_layers(known)
    parent = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(parent, exist_ok=True)
        temporary = tempfile.mkdtemp(prefix=".inspect-", dir=parent)
    except OSError as e:
        raise UserError(f"`out`={out} cannot be written ({e.strerror}); choose another `out`") from None
    try:
        ctx = Context(run, chosen, known, shown, temporary)
        results = {"workdir": run.workdir, "step": run.step, "model": run.config.model, "dataset": run.config.dataset,
                   "images": chosen.indices, "labels": chosen.labels, "methods": {}}
        for method in tqdm(methods, desc="inspect", unit="method", disable=None):
            results["methods"][method] = METHODS[method](ctx)
        with open(os.path.join(temporary, "inspect.json"), "w") as f:
            json.dump(results, f, indent=1)
        figures.page(os.path.join(temporary, "index.html"), f"Inside {run.config.model} ({run.workdir}, step "
                     f"{run.step:,})", f"{run.config.model} trained on {run.config.dataset}; images: "
                     f"{', '.join(chosen.labels)}. Made by python -m experiments.inspect.", ctx.figures)
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.replace(temporary, out)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return results
