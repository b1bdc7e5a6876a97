"""What `experiments.inspect` writes for a trained run: every picture, the arrays behind it, inspect.json and a page.

    figures_and_numbers = write(run, chosen, ["activations", "filters"], layers=None, out="RUN/inspect")

Each method below draws its pictures, saves its arrays (`<method>.npz`) and
returns its numbers for inspect.json and its figures for index.html. The
output folder is written whole or not at all: everything goes into a
temporary folder next to `out`, which replaces `out` at the end.

A run of signals or texts gets the methods that apply to sequences
(`methods_for`): activation maps along the sequence, attribution over time
steps or tokens (through the word vectors, `attribution`) and its sanity
check; a signal model's filters too, and its 1-D Grad-CAM.
"""

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable

import jax
import numpy as np
from tqdm import tqdm

from cnn_jax import data
from cnn_jax.analysis.inspect import activations, attribution, featvis, figures, filters, sanity, taps
from cnn_jax.data import pipeline, text
from cnn_jax.errors import UserError
from cnn_jax.training import steps, trained


@dataclasses.dataclass(frozen=True)
class Chosen:
    """The examples to look at, as a batch holds them (uint8 images `[b, h, w, c]` at the run's size, float
    signals `[b, length, channels]` or token ids `[b, length]`), a label each, and their test indices (None for
    the user's own image files)."""

    images: np.ndarray
    labels: list[str]
    indices: list[int] | None


def choose(dataset: data.Dataset, indices: list[str], files: list[str]) -> Chosen:
    """The examples to look at: the test examples at `indices` (strings, as typed), or else the image `files`,
    converted to the dataset's image shape; UserError if an index is not one, or files are given for a dataset of
    signals or texts."""
    if files and dataset.kind != data.IMAGES:
        raise UserError(f"`image_files` are for runs of images, and {dataset.name} holds {dataset.kind}: give test "
                        "indices (`images`) instead")
    if files:
        images = np.stack([data.read_image(path, dataset.image_shape) for path in files])
        return Chosen(images, [os.path.basename(path) for path in files], None)
    try:
        numbers = [int(i) for i in indices]
    except ValueError:
        raise UserError(f"`images`={','.join(indices)} must be test-image indices (integers)") from None
    count = len(dataset.test_labels)
    if not numbers or any(not 0 <= i < count for i in numbers):
        raise UserError(f"`images`={','.join(indices)}: the test split has {count:,} images; give indices in "
                        f"[0, {count})")
    labels = [f"#{i}: {dataset.class_names[dataset.test_labels[i]]}" for i in numbers]
    return Chosen(pipeline.test_images(dataset, numbers), labels, numbers)


@dataclasses.dataclass
class Context:
    """What every method works from, and where it writes."""

    run: trained.Run
    chosen: Chosen
    layers: dict[str, taps.Layer]  # Every layer of the model, in call order.
    shown_layers: list[str]  # The layers whose activation maps are drawn.
    out: str  # The (temporary) output folder.
    target_class: int | None = None  # The class attribution also explains (None: each image's runner-up).
    featvis_layers: list[str] = dataclasses.field(default_factory=list)  # Feature visualisation's layers.
    channels: list[int] = dataclasses.field(default_factory=list)  # Its channels (empty: the first `most_channels`).
    most_channels: int = 64
    featvis_steps: int = 256
    seed: int = 0
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
        """The chosen examples as the model sees them: images float32 in [0, 1]; signals and token ids as they
        are."""
        return data.normalize(self.chosen.images)

    @property
    def kind(self) -> str:
        """What the run's examples are: `data.IMAGES`, `data.SIGNALS` or `data.TOKENS`."""
        return self.run.dataset.kind

    @property
    def sequences(self) -> list[np.ndarray | list[str]]:
        """The chosen signals or texts as `figures` draws them: each signal `[length, channels]`, or each text's
        words ("" for padding)."""
        if self.kind != data.TOKENS:
            return list(self.inputs)
        vocabulary = self.run.dataset.vocabulary
        return [["" if vocabulary[i] == text.PAD else vocabulary[i] for i in ids] for ids in self.chosen.images]


COLUMNS_SMALL = 16  # Neurons of the first convolution visualised.
EXAMPLES = {data.IMAGES: "images", data.SIGNALS: "signals", data.TOKENS: "texts"}  # What the examples are called.


def _safe(name: str) -> str:
    return name.replace("/", "_")


def _activations(ctx: Context) -> dict:
    """Activation maps of the shown layers for the chosen images; sparsity and mean of every layer over the run's
    test images."""
    run = ctx.run
    maps = activations.activation_maps(run.model, run.variables, ctx.chosen.images, ctx.shown_layers)
    for depth, (name, layer_maps) in enumerate(maps.items()):
        kind = ctx.layers[name].kind
        if ctx.kind == data.IMAGES:
            drawn = "image, one map per channel"
        else:
            stride, _ = figures.alignment(ctx.inputs.shape[1], layer_maps.shape[1])
            drawn = (f"example, under it: a row per channel, a column per position of the layer, each drawn under "
                     f"the input positions it is computed around (stride {stride})")
        shape = "×".join(str(size) for size in layer_maps.shape[1:])
        path = ctx.figure(f"activations_{depth:02d}_{_safe(name)}", f"Activation maps: {name} ({kind})",
                          f"The output of layer {name} ({kind}, {shape}) for each chosen {drawn}; each channel has "
                          "one colour scale (its minimum to maximum over these examples).")
        if ctx.kind == data.IMAGES:
            figures.activation_grid(ctx.inputs, layer_maps, ctx.chosen.labels, f"{name}: activation maps", path)
        else:
            figures.sequence_activations(ctx.sequences, layer_maps, ctx.chosen.labels, f"{name}: activation maps",
                                         path)
    ctx.save_arrays("activations", **{_safe(name): value for name, value in maps.items()})
    stats = activations.layer_statistics(run.model, run.variables, pipeline.test_images(run.dataset))
    names = list(stats)
    path = ctx.figure("activations_sparsity", "Sparsity by depth",
                      f"For every layer in call order, over the run's {len(run.dataset.test_labels):,} test images: "
                      "the share of values at or below zero (what a ReLU sets to zero, for a layer before one; "
                      "exact zeros for a layer after one). inspect.json has these and each layer's mean.")
    figures.curves(names, {"share ≤ 0": [stats[n]["off_fraction"] for n in names]}, "share of activations ≤ 0",
                   "Sparsity by depth", path)
    return {"layers": stats, "shown": ctx.shown_layers}


def _first_convolution(ctx: Context) -> tuple[str, np.ndarray, np.ndarray]:
    """(name, trained kernel, initial kernel) of the model's first convolution; the initial one is the run's own
    (its seed's initialisation)."""
    run = ctx.run
    name, kernel = next(iter(filters.convolution_kernels(run.variables["params"], ctx.layers).items()))
    initial = steps.create_train_state(run.model, run.config, run.dataset.image_shape)
    return name, kernel, filters.convolution_kernels(initial.params, ctx.layers)[name]


def _filters(ctx: Context) -> dict:
    """The first convolution's kernels as pictures; each later convolution's kernel norms over its inputs."""
    kernels = filters.convolution_kernels(ctx.run.variables["params"], ctx.layers)
    first, kernel = next(iter(kernels.items()))
    if kernel.ndim == 4:
        drawn = "mid-grey is 0, light positive, dark negative" + (" (per colour)." if kernel.shape[2] == 3 else ".")
    else:
        drawn = f"its weights along the taps, a line per input channel ({kernel.shape[1]}), the grey line 0."
    path = ctx.figure("filters_first_layer", f"First-layer filters: {first}", f"The {kernel.shape[-1]} trained "
                      f"{'×'.join(str(k) for k in kernel.shape[:-2])} kernels of {first}, each scaled by its "
                      f"largest |weight|: {drawn}")
    if kernel.ndim == 4:
        pictures = filters.kernel_images(kernel)
        figures.picture_grid(pictures, [str(k) for k in range(len(pictures))], f"{first}: kernels", path)
    else:
        figures.kernel_curves(kernel, f"{first}: kernels", path)
    norms = {}
    for depth, (name, deeper) in enumerate(list(kernels.items())[1:], start=1):
        norms[name] = filters.kernel_norms(deeper)
        path = ctx.figure(f"filters_norms_{depth:02d}_{_safe(name)}", f"Kernel norms: {name}",
                          f"For each of the {deeper.shape[-1]} output channels of {name} (rows), the L2 norm of its "
                          f"{'×'.join(str(k) for k in deeper.shape[:-2])} kernel on each of its {deeper.shape[-2]} "
                          "input channels (columns): which inputs each channel listens to.")
        figures.heatmap(norms[name], "input channel", "output channel", f"{name}: kernel norms", path)
    ctx.save_arrays("filters", first_layer=kernel, **{f"norms_{_safe(n)}": v for n, v in norms.items()})
    return {"first_layer": first, "kernel_shape": list(kernel.shape), "norm_layers": list(norms)}


def natural_photograph() -> np.ndarray:
    """A grey natural photograph `[213, 320]` in [0, 1]: scikit-learn's sample image of a Chinese temple (shipped
    with the package, no download), its 427×640 pixels averaged 2×2."""
    from sklearn.datasets import load_sample_image

    grey = load_sample_image("china.jpg").astype(np.float32).mean(axis=-1) / 255.0
    h, w = grey.shape[0] // 2 * 2, grey.shape[1] // 2 * 2
    return grey[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))


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


def featvis_layers_of(known: dict[str, taps.Layer], most: int = 4) -> list[str]:
    """Feature visualisation's default layers: the outermost module layers with a map (a ConvNet's blocks, a
    ResNet's stem and residual blocks), at most `most` of them evenly spread, the last included. (A lone
    convolution is linear in the image: a flat image maximises its channels' means.)"""
    outer = [name for name, layer in known.items() if "/" not in name and layer.editable
             and taps.positions(layer) > 1]
    if len(outer) <= most:
        return outer
    return [outer[round(i * (len(outer) - 1) / (most - 1))] for i in range(most)]


def _featvis_channels(ctx: Context, layer: str) -> list[int]:
    width = ctx.layers[layer].shape[-1]
    return [c for c in ctx.channels if c < width] if ctx.channels else list(range(min(width, ctx.most_channels)))


def check_channels(known: dict[str, taps.Layer], layers: list[str], channels: list[int]) -> None:
    """UserError unless every channel of `channels` exists in one of `layers` at least."""
    widest = max(known[name].shape[-1] for name in layers)
    beyond = [c for c in channels if not 0 <= c < widest]
    if beyond:
        raise UserError(f"`channels`: channel {beyond[0]} is beyond the layers' widths ("
                        + ", ".join(f"{name}: {known[name].shape[-1]}" for name in layers)
                        + "); choose channels from 0 to the width − 1")


def _features(ctx: Context) -> dict:
    """Feature visualisation from noise (source 003): each channel's mean in the chosen layers, each first-layer
    kernel's centre neuron, and each class logit, maximised by images optimised together."""
    run = ctx.run
    shape = run.dataset.image_shape
    colours = featvis.colour_basis(pipeline.test_images(run.dataset, slice(1000))) if shape[-1] == 3 else None
    key = jax.random.key(ctx.seed)
    results, arrays = {}, {}
    jobs = [("channel", layer, _featvis_channels(ctx, layer)) for layer in ctx.featvis_layers]
    first = next(name for name, layer in ctx.layers.items() if layer.kind == "Conv")  # Each kernel, as source 003.
    jobs.append(("neuron", first, _featvis_channels(ctx, first)[:COLUMNS_SMALL]))
    jobs.append(("logit", None, None))
    for objective, layer, channels in tqdm(jobs, desc="feature visualisation", unit="grid", disable=None,
                                           leave=False):
        result = featvis.visualise(run.model, run.variables, layer, channels, shape, key, objective=objective,
                                   steps=ctx.featvis_steps, colours=colours)
        what = layer if layer else "logits"
        tag = f"{objective}_{_safe(what)}"
        ratio = result.end / np.where(np.abs(result.start) > 0, np.abs(result.start), np.nan)
        captions = ([run.dataset.class_names[t][:12] for t in result.targets] if objective == "logit"
                    else [str(t) for t in result.targets])
        path = ctx.figure(f"features_{tag}", f"Feature visualisation: {what} ({objective})",
                          f"Images optimised from noise ({ctx.featvis_steps} Adam steps at 0.05, in a decorrelated "
                          f"Fourier basis, randomly shifted, scaled and rotated every step) to maximise "
                          + {"channel": f"each channel's mean activation in {what}",
                             "neuron": f"each channel's neuron at the centre of {what}'s map",
                             "logit": "each class's logit"}[objective]
                          + f"; all {len(result.targets)} optimised together. The objective rose from the start "
                          f"noise's by a median factor of {np.nanmedian(ratio):.1f}.")
        figures.picture_grid(result.images, captions, f"{what}: {objective} objective", path)
        arrays[f"{tag}_images"], arrays[f"{tag}_targets"] = result.images, result.targets
        results[tag] = {"objective": objective, "layer": layer, "targets": result.targets.tolist(),
                        "start": result.start.tolist(), "end": result.end.tolist()}
    ctx.save_arrays("features", **arrays)
    return {"steps": ctx.featvis_steps, "seed": ctx.seed, "grids": results}


ATTRIBUTION_CAPTIONS = {
    "saliency": "gradient saliency: {magnitude}",
    "smoothgrad": "SmoothGrad: the gradient averaged over 25 noisy copies of {noised} (noise 15% of its range), "
                  "{reduced}",
    "gradient_times_input": "gradient × input: the gradient times the input, {summed}: signed, each {unit}'s "
                            "first-order share of the logit's change from {zero}",
    "integrated_gradients": "integrated gradients from {zero}, 64 steps: signed, summing to the logit's change from "
                            "that baseline",
    "grad_cam": "Grad-CAM at the last spatial layer: its channels weighted by the spatial mean of the logit's "
                "gradient, ReLU, {resized} (often blank where a dense layer reads the flattened map, as in the seed "
                "network: use hires_cam there)",
    "hires_cam": "HiResCAM at the last spatial layer: each position weighted by its own gradient, ReLU, {resized}",
    "occlusion": "occlusion: the logit's mean drop when {occluded}",
}
"""What each attribution method's maps are, for the captions (with `attribution`'s default options), in the words
of `INPUT_WORDS`."""

INPUT_WORDS = {
    data.IMAGES: {"unit": "pixel", "magnitude": "max over channels of |∂ logit / ∂ pixel|", "noised": "the image",
                  "reduced": "max |·| over channels", "summed": "summed over channels", "zero": "a black image",
                  "resized": "upsampled", "occluded": "a square of a quarter of the image's side, sliding by half "
                  "of it, is set to black"},
    data.SIGNALS: {"unit": "time step", "magnitude": "max over channels of |∂ logit / ∂ signal| at each time step",
                   "noised": "the signal", "reduced": "max |·| over channels", "summed": "summed over channels",
                   "zero": "a signal of zeros (a standardised signal's mean)", "resized": "stretched linearly to "
                   "the signal's length", "occluded": "a window of a quarter of the signal's length, sliding by half "
                   "of it, is set to 0"},
    data.TOKENS: {"unit": "token", "magnitude": "the L2 norm of ∂ logit / ∂ (the token's word vector)",
                  "noised": "the text's word vectors", "reduced": "the L2 norm over each word vector",
                  "summed": "summed over the word vector (gradient · word vector)",
                  "zero": "a text of padding only (every word vector zero)", "resized": "resized to the text",
                  "occluded": "the token is made padding (its word vector zero), one token at a time"},
}
"""How `ATTRIBUTION_CAPTIONS` speak of each kind of input."""


def _classes(ctx: Context) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, chosen) class per image: the chosen is `ctx.target_class` or else the runner-up."""
    logits = np.asarray(attribution.logits(ctx.run.model, ctx.run.variables, ctx.inputs))
    ranked = np.argsort(-logits, axis=1)
    chosen = np.full(len(logits), ctx.target_class) if ctx.target_class is not None else ranked[:, 1]
    return ranked[:, 0], chosen


def _attribution(name: str) -> Callable[[Context], dict]:
    """The report method drawing attribution method `name`'s maps for the predicted and the chosen class."""

    def method(ctx: Context) -> dict:
        run, method = ctx.run, attribution.lookup(name)
        predicted, chosen = _classes(ctx)
        maps = {cls: np.asarray(method(run.model, run.variables, ctx.inputs, classes)) for cls, classes
                in (("predicted", predicted), ("chosen", chosen))}
        names = run.dataset.class_names
        which = "the class given as --target_class" if ctx.target_class is not None else "the runner-up class"
        caption = ATTRIBUTION_CAPTIONS[name].format(**INPUT_WORDS[ctx.kind])
        signed = name in attribution.SIGNED
        if ctx.kind == data.IMAGES:
            path = ctx.figure(f"attribution_{name}", f"Attribution: {name}",
                              f"{caption}; over each image, for the predicted class and for {which} (under each "
                              "image: predicted / chosen). Each map is scaled to its own maximum.")
            labels = [f"{label}\n→ {names[p]} / {names[c]}" for label, p, c in zip(ctx.chosen.labels, predicted,
                                                                                    chosen)]
            figures.overlays(ctx.inputs, maps, labels, name, path)
        else:
            colours = "red positive, blue negative, white 0" if signed else "white 0 to red"
            path = ctx.figure(f"attribution_{name}", f"Attribution: {name}",
                              f"{caption}; for the predicted class and for {which}, "
                              + ("in a band under each signal" if ctx.kind == data.SIGNALS else
                                 "as the background of each word (padding left out)")
                              + f" ({colours}), each scaled to its own largest |value|.")
            labels = [f"{label}  → predicted {names[p]}, chosen {names[c]}" for label, p, c
                      in zip(ctx.chosen.labels, predicted, chosen)]
            if ctx.kind == data.SIGNALS:
                figures.sequence_attributions(ctx.inputs, maps, labels, name, path, signed)
            else:
                figures.word_scores(ctx.sequences, maps, labels, name, path, signed)
        tokens = {"tokens": ctx.chosen.images} if ctx.kind == data.TOKENS else {}
        ctx.save_arrays(name, maps=maps["predicted"], chosen_maps=maps["chosen"], classes=predicted,
                        chosen_classes=chosen, **_indices(ctx), **tokens)
        blank = [int(i) for i in np.flatnonzero(np.ptp(maps["predicted"].reshape(len(predicted), -1), axis=1) == 0)]
        numbers = {"classes": predicted.tolist(), "chosen_classes": chosen.tolist(), "constant_maps": blank}
        if ctx.kind == data.TOKENS:  # Each text's words and their scores for the predicted class, padding left out.
            numbers["words"] = [[[word, float(score)] for word, score in zip(words, scores) if word]
                                for words, scores in zip(ctx.sequences, maps["predicted"])]
        return numbers

    return method


def _indices(ctx: Context) -> dict:
    return {"images": np.asarray(ctx.chosen.indices)} if ctx.chosen.indices is not None else {}


def _sanity(ctx: Context) -> dict:
    """Cascading randomisation (Adebayo et al. 2018) of every attribution method, for the predicted classes."""
    run = ctx.run
    predicted, _ = _classes(ctx)
    cascades = sanity.cascading_randomisation(run.model, run.variables, ctx.inputs, predicted,
                                              [name for name in attribution.METHODS if applies(name, ctx.kind)])
    groups = [group for group, _ in next(iter(cascades.values())).correlations]
    flagged = [name for name, cascade in cascades.items() if cascade.flagged]
    path = ctx.figure("sanity_cascading_randomisation", "Sanity check: cascading randomisation",
                      f"Each method's maps of the chosen images (predicted class) after re-initialising the "
                      f"network's layer groups from the top down ({' → '.join(groups)}), compared with its maps of "
                      f"the trained network: mean Spearman rank correlation, solid for the maps as they are, dashed "
                      f"for their magnitudes. A method that explains the network falls towards 0; one above "
                      f"{sanity.THRESHOLD} with every layer random is flagged.",
                      warning=f"Flagged: {', '.join(flagged)} (their maps barely depend on the weights)."
                      if flagged else None)
    figures.cascade(groups, {name: [rho for _, rho in c.correlations] for name, c in cascades.items()},
                    {name: [rho for _, rho in c.absolute_correlations] for name, c in cascades.items()},
                    sanity.THRESHOLD, "Cascading randomisation", path)
    ctx.save_arrays("sanity", groups=np.asarray(groups),
                    **{f"{name}_signed": [rho for _, rho in c.correlations] for name, c in cascades.items()},
                    **{f"{name}_absolute": [rho for _, rho in c.absolute_correlations]
                       for name, c in cascades.items()})
    return {"groups": groups, "threshold": sanity.THRESHOLD, "flagged": flagged,
            "methods": {name: {"spearman": [rho for _, rho in c.correlations],
                               "spearman_absolute": [rho for _, rho in c.absolute_correlations]}
                        for name, c in cascades.items()}}


METHODS: dict[str, Callable[[Context], dict]] = {
    "activations": _activations,
    "filters": _filters,
    "hand_made": _hand_made,
    "edges": _edges,
    "features": _features,
    **{name: _attribution(name) for name in attribution.METHODS},
    "sanity": _sanity,
}
"""Every method, by name, in the order they run and appear on the page."""


ONLY_FOR = {"filters": (data.IMAGES, data.SIGNALS), "hand_made": (data.IMAGES,), "edges": (data.IMAGES,),
            "features": (data.IMAGES,), "grad_cam": (data.IMAGES, data.SIGNALS),
            "hires_cam": (data.IMAGES, data.SIGNALS)}
"""The methods that apply to some kinds of input only, and those kinds; every other method applies to all.
Hand-made edge filters, edge scores and feature visualisation are about pictures. A text model's kernels span
its word vectors (no picture), and its convolutions of several widths side by side have no one last map for
Grad-CAM (nor one that keeps the text's positions)."""


def applies(method: str, kind: str) -> bool:
    """Whether `method` applies to a run of `kind` (`data.IMAGES`, `data.SIGNALS` or `data.TOKENS`)."""
    return kind in ONLY_FOR.get(method, (kind,))


def methods_for(kind: str) -> list[str]:
    """The methods that apply to a run of `kind`, in `METHODS`' order: the default."""
    return [name for name in METHODS if applies(name, kind)]


def check_methods(names, kind: str | None = None) -> list[str]:
    """`names` if each is a method (and applies to a run of `kind`, if given); UserError naming the others."""
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise UserError(f"unknown method '{unknown[0]}': choose from {', '.join(METHODS)}")
    beside = [name for name in names if kind is not None and not applies(name, kind)]
    if beside:
        raise UserError(f"`methods` {', '.join(beside)} do not apply to a run of {EXAMPLES[kind]}: choose from "
                        f"{', '.join(methods_for(kind))}")
    return list(names)


def write(run: trained.Run, chosen: Chosen, methods: list[str], out: str, layers: list[str] | None = None,
          featvis_layers: list[str] | None = None, channels: list[int] | None = None, featvis_steps: int = 256,
          target_class: int | None = None, seed: int = 0) -> dict:
    """Runs `methods` on `run` for the `chosen` examples, writing every file into `out` (replacing what was
    there); returns inspect.json's contents.

    `layers` are the activation maps' (default `taps.default_layers`),
    `featvis_layers` feature visualisation's (default `featvis_layers`), of
    whose `channels` (default: the first 64 of each) it optimises an image
    for `featvis_steps` steps from noise drawn from `seed`. Attribution
    explains each example's predicted class and `target_class` (default: its
    runner-up). Bad input (a method that does not apply to the run's kind of
    input among them, `check_methods`) raises UserError before anything is
    written; the folder appears whole, at the end.
    """
    check_methods(methods, run.dataset.kind)
    known = taps.layers(run.model, run.variables, run.dataset.image_shape)
    shown = taps.check_layers(layers, known) if layers else taps.default_layers(known)
    visualised = taps.check_layers(featvis_layers, known) if featvis_layers else featvis_layers_of(known)
    if {"filters", "edges"} & set(methods) and not any(layer.kind == "Conv" for layer in known.values()):
        raise UserError(f"model '{run.config.model}' has no convolution for `methods` filters and edges")
    if "features" in methods and not visualised:
        raise UserError(f"model '{run.config.model}' has no convolution to visualise; name `featvis_layers`")
    if channels:
        check_channels(known, visualised, channels)
    if featvis_steps < 1:
        raise UserError(f"`featvis_steps` must be at least 1, got {featvis_steps}")
    if target_class is not None and not 0 <= target_class < run.dataset.num_classes:
        raise UserError(f"`target_class`={target_class} is not a class: choose from 0 to "
                        f"{run.dataset.num_classes - 1} ({', '.join(run.dataset.class_names)})")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise UserError(f"`out`={out}: its folder {parent} does not exist; create it or choose another `out`")
    try:
        temporary = tempfile.mkdtemp(prefix=".inspect-", dir=parent)
    except OSError as e:
        raise UserError(f"`out`={out} cannot be written ({e.strerror}); choose another `out`") from None
    try:
        ctx = Context(run, chosen, known, shown, temporary, target_class, visualised, list(channels or []),
                      featvis_steps=featvis_steps, seed=seed)
        results = {"workdir": run.workdir, "step": run.step, "model": run.config.model, "dataset": run.config.dataset,
                   "images": chosen.indices, "labels": chosen.labels, "methods": {}}
        for method in tqdm(methods, desc="inspect", unit="method", disable=None):
            results["methods"][method] = METHODS[method](ctx)
        with open(os.path.join(temporary, "inspect.json"), "w") as f:
            json.dump(results, f, indent=1)
        figures.page(os.path.join(temporary, "index.html"), f"Inside {run.config.model} ({run.workdir}, step "
                     f"{run.step:,})", f"{run.config.model} trained on {run.config.dataset}; "
                     f"{EXAMPLES[run.dataset.kind]}: {', '.join(chosen.labels)}. Made by python -m "
                     "experiments.inspect.", ctx.figures)
        if os.path.isdir(out):
            shutil.rmtree(out)
        os.replace(temporary, out)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return results
