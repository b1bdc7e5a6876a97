"""The pictures of `experiments.inspect`, drawn with matplotlib into PNG files, and the page that gathers them.

Each function takes NumPy arrays and a path, draws one figure and closes it.
Images are `[h, w, c]` floats in [0, 1] (c = 1 is drawn grey); maps are
`[h, w]`. A sequence is a `Sequence`: a signal `[length, channels]`, drawn
as lines, or a text's words (`length` strings, "" for padding, left blank),
written along the axis; its maps are `[length]`. `page` writes index.html:
every figure with its caption.
"""

import html
import math
import os

import numpy as np

from cnn_jax.errors import UserError

COLUMNS = 16  # Channels per row of a grid.

Sequence = np.ndarray | list[str]
"""One example along a sequence: a signal `[length, channels]`, or a text's words ("" for padding)."""


def pyplot():
    """matplotlib's pyplot, for drawing to files: under Agg unless `MPLBACKEND` names a backend (a notebook's
    kernel sets its inline one, which must keep showing the user's own figures; the pictures drawn here are
    closed once saved, so they do not appear there twice); UserError if matplotlib is not installed."""
    try:
        import matplotlib

        if not os.environ.get("MPLBACKEND"):
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("drawing needs matplotlib: pip install matplotlib") from None
    return plt


def tile(pictures: np.ndarray, columns: int = COLUMNS, gap: int = 1, fill: float = 0.0) -> np.ndarray:
    """Pictures `[n, h, w, c]` as one `[H, W, c]` mosaic, row by row, `gap` pixels of `fill` between them (no
    matplotlib: also for TensorBoard)."""
    n, h, w, c = pictures.shape
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    mosaic = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, c), fill, pictures.dtype)
    for k, picture in enumerate(pictures):
        top, left = (k // columns) * (h + gap), (k % columns) * (w + gap)
        mosaic[top : top + h, left : left + w] = picture
    return mosaic


def per_channel_scaled(maps: np.ndarray) -> np.ndarray:
    """Maps `[..., h, w, c]` as grey pictures `[c, ..., h, w, 1]`: each channel scaled to [0, 1] by its own range."""
    low = maps.min(axis=tuple(range(maps.ndim - 1)))
    high = maps.max(axis=tuple(range(maps.ndim - 1)))
    scaled = (maps - low) / np.where(high > low, high - low, 1)
    return np.moveaxis(scaled, -1, 0)[..., None]


def displayable(pictures: np.ndarray) -> np.ndarray:
    """Pictures `[..., c]` with c = 1 (grey) or 3 (RGB) as they are; with any other c, their mean over channels
    (grey)."""
    return pictures if pictures.shape[-1] in (1, 3) else pictures.mean(axis=-1, keepdims=True)


def _show(ax, image: np.ndarray, **kwargs) -> None:
    """An image `[h, w, c]` (`displayable`) or a map `[h, w]` on `ax`, without ticks."""
    if image.ndim == 3:
        image = displayable(image)
        image = image[..., 0] if image.shape[-1] == 1 else np.clip(image, 0, 1)
        kwargs = {"cmap": "gray", "vmin": 0, "vmax": 1, **kwargs}
    ax.imshow(image, interpolation="nearest", **kwargs)
    ax.set_xticks([])
    ax.set_yticks([])


def _save(plt, fig, path: str, title: str) -> None:
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def activation_grid(images: np.ndarray, maps: np.ndarray, labels: list[str], title: str, path: str) -> None:
    """One layer's maps `[b, h, w, c]` of `images` `[b, H, W, C]`: per image a row, the image, then a mosaic of its
    channels (`COLUMNS` to a row, channel 0 top left), drawn as one picture.

    Each channel has one colour scale over all the images (its own minimum
    to maximum), so a channel's maps compare between images.
    """
    plt = pyplot()
    from matplotlib import colormaps

    count, h, w, channels = maps.shape
    scaled = per_channel_scaled(maps)  # [c, b, h, w, 1], each channel over all the images.
    mosaics = [colormaps["viridis"](tile(scaled[:, i], COLUMNS, fill=np.nan)[..., 0]) for i in range(count)]
    for mosaic in mosaics:
        mosaic[mosaic[..., 3] == 0] = 1.0  # The gaps (NaN, transparent) white.
    mosaics = [mosaic[..., :3] for mosaic in mosaics]
    ratio = mosaics[0].shape[1] / mosaics[0].shape[0]
    height = 1.1 * mosaics[0].shape[0] / (h + 1)
    fig, axes = plt.subplots(count, 2, squeeze=False, layout="constrained", width_ratios=[1, ratio],
                             figsize=(height * (1 + ratio) + 0.5, height * count + 0.4))
    for i in range(count):
        _show(axes[i, 0], images[i])
        axes[i, 0].set_title(labels[i], fontsize=7)
        _show(axes[i, 1], mosaics[i])
        if i == 0:
            axes[i, 1].set_title(f"{channels} channels, {min(channels, COLUMNS)} to a row", fontsize=7)
    _save(plt, fig, path, title)


def picture_grid(pictures: np.ndarray, captions: list[str], title: str, path: str, columns: int = COLUMNS) -> None:
    """Pictures `[n, h, w, 1 or 3]` in [0, 1] (filters, feature visualisations) in a grid, each captioned."""
    plt = pyplot()
    columns = min(columns, len(pictures))
    rows = math.ceil(len(pictures) / columns)
    fig, axes = plt.subplots(rows, columns, squeeze=False, layout="constrained", figsize=(0.9 * columns, 1.0 * rows))
    for ax in axes.ravel():
        ax.axis("off")
    for k, (picture, caption) in enumerate(zip(pictures, captions, strict=True)):
        ax = axes[k // columns, k % columns]
        ax.axis("on")
        _show(ax, picture)
        ax.set_title(caption, fontsize=6)
    _save(plt, fig, path, title)


def heatmap(matrix: np.ndarray, xlabel: str, ylabel: str, title: str, path: str) -> None:
    """A matrix (a layer's kernel norms, outputs × inputs) as a heat map with a colour bar."""
    plt = pyplot()
    rows, cols = matrix.shape
    fig, ax = plt.subplots(layout="constrained", figsize=(min(12, 2 + 0.12 * cols), min(10, 1.5 + 0.12 * rows)))
    shown = ax.imshow(matrix, cmap="magma", aspect="auto", interpolation="nearest")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(shown, ax=ax)
    _save(plt, fig, path, title)


def filter_responses(image: np.ndarray, responses: dict[str, np.ndarray], title: str, path: str) -> None:
    """A grey image and each filter's response to it, in two rows (white zero; a symmetric colour scale to the 99th
    percentile of |response|, so that a photograph's many weak edges show beside its few strong ones)."""
    plt = pyplot()
    columns = math.ceil((1 + len(responses)) / 2)
    size = 2.0 if image.shape[0] <= 64 else image.shape[1] / 110  # A large image at about its own pixels.
    fig, axes = plt.subplots(2, columns, layout="constrained", figsize=(size * columns, 2 * size * image.shape[0]
                                                                          / image.shape[1] + 0.6))
    axes = axes.ravel()
    for ax in axes[1 + len(responses):]:
        ax.axis("off")
    _show(axes[0], image, cmap="gray")
    axes[0].set_title("image", fontsize=8)
    for ax, (name, response) in zip(axes[1:], responses.items()):
        limit = max(np.percentile(np.abs(response), 99), 1e-12)
        _show(ax, response, cmap="RdBu_r", vmin=-limit, vmax=limit)
        ax.set_title(name, fontsize=8)
    _save(plt, fig, path, title)


def score_strips(scores: dict[str, np.ndarray], xlabel: str, title: str, path: str) -> None:
    """Each group's scores as dots on its own row, with the median marked: trained vs initial filters."""
    plt = pyplot()
    fig, ax = plt.subplots(layout="constrained", figsize=(7, 0.6 + 0.6 * len(scores)))
    for row, (name, values) in enumerate(scores.items()):
        jitter = np.random.default_rng(row).uniform(-0.15, 0.15, len(values))
        ax.scatter(values, row + jitter, s=14, alpha=0.7)
        ax.plot([np.median(values)] * 2, [row - 0.3, row + 0.3], color="black")
    ax.set_yticks(range(len(scores)), list(scores))
    ax.set_xlabel(xlabel)
    ax.set_xlim(0, 1)
    _save(plt, fig, path, title)


def overlays(images: np.ndarray, maps: dict[str, np.ndarray], labels: list[str], title: str, path: str) -> None:
    """Per image a row: the image, then each method's map `[b, h, w]` over it (each map scaled to its own maximum)."""
    plt = pyplot()
    count = len(images)
    fig, axes = plt.subplots(count, 1 + len(maps), squeeze=False, layout="constrained",
                             figsize=(1.6 * (1 + len(maps)), 1.7 * count))
    for i in range(count):
        _show(axes[i, 0], images[i])
        axes[i, 0].set_title(labels[i], fontsize=6)
        grey = images[i].mean(axis=-1)
        for ax, (name, method_maps) in zip(axes[i, 1:], maps.items()):
            m = method_maps[i]
            _show(ax, grey, cmap="gray", vmin=0, vmax=1)
            ax.imshow(m, cmap="jet", alpha=0.5, vmin=min(m.min(), 0), vmax=max(m.max(), 1e-12),
                      interpolation="bilinear")
            if i == 0:
                ax.set_title(name, fontsize=7)
    _save(plt, fig, path, title)


def curves(xs: list[str], ys: dict[str, list[float]], ylabel: str, title: str, path: str) -> None:
    """One line per entry of `ys` over the categories `xs` (a value per layer, say)."""
    plt = pyplot()
    fig, ax = plt.subplots(layout="constrained", figsize=(max(6, 0.5 * len(xs)), 3.5))
    for name, values in ys.items():
        ax.plot(range(len(values)), values, marker="o", label=name)
    ax.set_xticks(range(len(xs)), xs, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    _save(plt, fig, path, title)


def cascade(groups: list[str], signed: dict[str, list[float]], absolute: dict[str, list[float]], threshold: float,
            title: str, path: str) -> None:
    """The sanity check: each method's rank correlation with its trained maps as the layer `groups` are
    re-initialised from the top, solid for the maps and dashed for their magnitudes, from 1 (nothing random)."""
    plt = pyplot()
    fig, ax = plt.subplots(layout="constrained", figsize=(max(6, 0.6 * len(groups) + 3), 3.8))
    for k, name in enumerate(signed):
        colour = f"C{k}"
        ax.plot(range(len(groups) + 1), [1, *signed[name]], marker="o", color=colour, label=name)
        ax.plot(range(len(groups) + 1), [1, *absolute[name]], linestyle="--", color=colour)
    ax.axhline(threshold, color="gray", linewidth=1)
    ax.set_xticks(range(len(groups) + 1), ["trained", *(f"…{g}" for g in groups)], rotation=30, ha="right",
                  fontsize=7)
    ax.set_ylabel("Spearman ρ with the trained maps")
    ax.set_ylim(-0.3, 1.05)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(plt, fig, path, title)


def alignment(input_length: int, layer_length: int) -> tuple[int, float]:
    """(stride, offset): where a layer's positions sit along its input, as far as their lengths tell. Position j
    is drawn over the input's [offset + j·stride, offset + (j + 1)·stride), stride = input_length // layer_length:
    exact after "same" convolutions and poolings that divide the length; a "valid" convolution's shorter map is
    centred (position j over its window's middle)."""
    stride = max(1, input_length // layer_length)
    return stride, (input_length - stride * layer_length) / 2


def _sequence_width(length: int) -> float:
    return float(np.clip(0.2 * length, 7, 16))


def _draw_sequence(ax, example: Sequence) -> None:
    """A signal as one line per channel, or a text's words written upwards, position i over [i, i + 1)."""
    length = len(example)
    if isinstance(example, np.ndarray):
        for channel in range(example.shape[1]):
            ax.plot(np.arange(length) + 0.5, example[:, channel], linewidth=1.2)
        ax.tick_params(labelsize=7, labelbottom=False)
        ax.set_ylabel("signal", fontsize=7)
    else:
        size = float(np.clip(0.8 * 72 * _sequence_width(length) / length, 6, 9))  # Upright: a line fits a position.
        for i, word in enumerate(example):
            ax.text(i + 0.5, 0.03, word[:14], rotation=90, ha="center", va="bottom", fontsize=size,
                    transform=ax.get_xaxis_transform())
        ax.set_yticks([])
        ax.tick_params(labelbottom=False)
    ax.set_xlim(0, length)


def _input_height(example: Sequence) -> float:
    """Inches for `_draw_sequence`: a signal's plot, or a text's longest word written upwards."""
    if isinstance(example, np.ndarray):
        return 0.9
    return 0.25 + 0.075 * min(14, max((len(word) for word in example), default=1))


def sequence_activations(inputs: list[Sequence], maps: np.ndarray, labels: list[str], title: str,
                         path: str) -> None:
    """One layer's maps `[b, positions, channels]` of the sequences `inputs`: per example the input, and under it
    the map as a heat map, channels (rows) along the layer's positions, placed under the input positions
    each is computed around (`alignment`).

    Each channel has one colour scale over all the examples (its own
    minimum to maximum), so a channel's maps compare between examples.
    """
    plt = pyplot()
    count, positions, channels = maps.shape
    length = len(inputs[0])
    stride, offset = alignment(length, positions)
    scaled = per_channel_scaled(maps)[..., 0]  # [c, b, positions], each channel over all the examples.
    heat = float(np.clip(0.02 * channels, 1.0, 2.2))
    heights = [h for example in inputs for h in (_input_height(example), heat)]
    fig, axes = plt.subplots(2 * count, 1, squeeze=False, layout="constrained", height_ratios=heights,
                             figsize=(_sequence_width(length), sum(heights) + 0.45 * count + 0.5))
    step = max(1, math.ceil(positions / 20))
    for i in range(count):
        top, bottom = axes[2 * i, 0], axes[2 * i + 1, 0]
        _draw_sequence(top, inputs[i])
        top.set_title(labels[i], fontsize=8, loc="left")
        shown = bottom.imshow(scaled[:, i], aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1,
                              extent=(offset, offset + stride * positions, channels - 0.5, -0.5))
        bottom.set_xlim(0, length)
        ticks = np.arange(0, positions, step)
        bottom.set_xticks(offset + (ticks + 0.5) * stride, [str(t) for t in ticks], fontsize=7)
        bottom.tick_params(axis="y", labelsize=7)
        bottom.set_ylabel("channel", fontsize=7)
        bottom.set_xlabel(f"position in the layer ({positions} of them; stride {stride} to the input)", fontsize=7)
    fig.colorbar(shown, ax=axes[:, 0].tolist(), shrink=0.3, aspect=30, pad=0.01).set_label(
        "each channel: its min → max", fontsize=7)
    _save(plt, fig, path, f"{title} ({positions} positions, stride {stride} to the input)")


def _band_colours(signed: bool) -> str:
    return "RdBu_r" if signed else "Reds"


def sequence_attributions(signals: np.ndarray, maps: dict[str, np.ndarray], labels: list[str], title: str,
                          path: str, signed: bool) -> None:
    """Per signal `[length, channels]` its plot, and under it each method's map `[b, length]` as a coloured band
    (each band scaled to its own largest |value|, which is written beside it; `signed` maps red positive, blue
    negative, white 0; the others white 0 to red)."""
    plt = pyplot()
    count, length = len(signals), signals.shape[1]
    heights = [h for _ in range(count) for h in (0.9, *[0.22] * len(maps))]
    fig, axes = plt.subplots(len(heights), 1, squeeze=False, layout="constrained", height_ratios=heights,
                             figsize=(_sequence_width(length), sum(heights) + 0.55 * count + 0.4))
    rows = 1 + len(maps)
    for i in range(count):
        top = axes[rows * i, 0]
        _draw_sequence(top, signals[i])
        top.set_title(labels[i], fontsize=8, loc="left")
        for k, (name, method_maps) in enumerate(maps.items(), start=1):
            ax, m = axes[rows * i + k, 0], method_maps[i]
            limit = max(float(np.abs(m).max()), 1e-12)
            ax.imshow(m[None], aspect="auto", interpolation="nearest", cmap=_band_colours(signed),
                      vmin=-limit if signed else 0, vmax=limit, extent=(0, length, 0, 1))
            ax.set_yticks([0.5], [name], fontsize=7)
            ax.set_xlim(0, length)
            ax.text(1.005, 0.5, f"{'max |·|' if signed else 'max'} {limit:.2g}", transform=ax.transAxes, fontsize=6,
                    va="center")
            ax.tick_params(labelbottom=k == len(maps), labelsize=7)
        axes[rows * i + len(maps), 0].set_xlabel("time step", fontsize=7)
    _save(plt, fig, path, title)


CHARACTER = 9 * 0.6 / 72  # The width of a 9-point DejaVu Sans Mono character, in inches.
LINE = 0.25  # Inches per line of words.


def word_scores(texts: list[list[str]], maps: dict[str, np.ndarray], labels: list[str], title: str, path: str,
                signed: bool, columns: int = 110) -> None:
    """Per text its words (padding, "", left out), once for each method's map `[b, length]`, each word's
    background coloured by its score (each row scaled to its own largest |score|; `signed` red positive, blue
    negative, white 0; the others white 0 to red); lines wrap at `columns` characters (the figure is no wider
    than its longest line)."""
    plt = pyplot()
    from matplotlib import colormaps

    margin = max(len(name) for name in maps) + 2
    longest = max(len(" ".join(word for word in words if word)) for words in texts)
    columns = min(columns, max(margin + longest, *(len(label) for label in labels)) + 1)  # No wider than needed.
    headings, words, line = [], [], 0  # (column, line, text, bold); (column, line, word, score / row's limit).
    for i, label in enumerate(labels):
        headings.append((0, line, label, True))
        line += 1
        for name, method_maps in maps.items():
            limit = max(float(np.abs(method_maps[i]).max()), 1e-12)
            headings.append((0, line, name, False))
            column = margin
            for word, score in zip(texts[i], method_maps[i]):
                if not word:
                    continue
                if column + len(word) > columns:
                    column, line = margin, line + 1
                words.append((column, line, word, score / limit))
                column += len(word) + 1
            line += 1
        line += 0.6
    height = line * LINE + 0.2
    fig = plt.figure(figsize=(columns * CHARACTER, height + 0.3))
    ax = fig.add_axes((0, 0, 1, height / (height + 0.3)))  # The title above.
    ax.set_xlim(0, columns)
    ax.set_ylim(line, -0.5)
    ax.axis("off")
    for column, row, text, bold in headings:
        ax.text(column, row, text, fontsize=8, va="center", family="monospace", weight="bold" if bold else "normal")
    colours = colormaps[_band_colours(signed)]
    for column, row, word, fraction in words:
        colour = colours((1 + fraction) / 2 if signed else fraction)
        dark = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] < 0.5
        ax.text(column, row, word, fontsize=9, family="monospace", va="center", color="white" if dark else "black",
                bbox={"boxstyle": "square,pad=0.15", "facecolor": colour, "edgecolor": "none"})
    _save(plt, fig, path, title)


def kernel_curves(kernel: np.ndarray, title: str, path: str, columns: int = COLUMNS) -> None:
    """A sequence layer's kernel `[k, in, out]` as one small plot per output channel, `columns` to a row: its
    weights along the `k` taps, a line per input channel, each filter scaled by its own largest |weight| (the
    grey line is 0). One axes holds them all, each in its cell (64 axes of their own draw 5× slower)."""
    plt = pyplot()
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    taps, inputs, outputs = kernel.shape
    scale = np.abs(kernel).max(axis=(0, 1))
    scaled = kernel / np.where(scale > 0, scale, 1)
    columns = min(columns, outputs)
    rows = math.ceil(outputs / columns)
    width, height = taps + 1.0, 3.0  # A cell's size: the taps at 0.5 ... taps - 0.5, weights in [-1.1, 1.1].
    fig, ax = plt.subplots(layout="constrained", figsize=(0.85 * columns, 0.8 * rows + 0.3))
    left = (np.arange(outputs) % columns) * width
    middle = -(np.arange(outputs) // columns) * height  # Each cell's zero line, top row first.
    xs = np.concatenate([left[:, None] + 0.5 + np.arange(taps), np.full((outputs, 1), np.nan)], axis=1)
    for channel in range(inputs):
        ys = np.concatenate([middle[:, None] + scaled[:, channel, :].T, np.full((outputs, 1), np.nan)], axis=1)
        ax.plot(xs.ravel(), ys.ravel(), linewidth=1.0, marker="." if taps <= 9 else None, markersize=3)
    ax.hlines(middle, left + 0.2, left + width - 0.2, color="0.75", linewidth=0.8)
    ax.add_collection(PatchCollection([Rectangle((x + 0.1, y - 1.25), width - 0.2, 2.5) for x, y in zip(left, middle)],
                                      facecolor="none", edgecolor="0.3", linewidth=0.6))
    for k in range(outputs):
        ax.text(left[k] + width / 2, middle[k] + 1.3, str(k), ha="center", va="bottom", fontsize=6)
    ax.set_xlim(0, columns * width)
    ax.set_ylim(-(rows - 1) * height - 1.4, 1.75)
    ax.axis("off")
    _save(plt, fig, path, title)


def page(path: str, title: str, intro: str, figures: list[dict]) -> None:
    """index.html: `title`, `intro`, then each figure {'file', 'heading', 'caption'} and an optional 'warning'
    (plain text, shown in red); files are named relative to the page."""
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
             "img{max-width:100%;border:1px solid #ddd}figure{margin:2em 0}"
             "figcaption{color:#333;font-size:0.95em}.flag{color:#b00;font-weight:bold}</style>",
             f"<h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>"]
    for figure in figures:
        heading = html.escape(figure["heading"])
        parts.append(f"<figure><h2>{heading}</h2><img src='{html.escape(os.path.basename(figure['file']))}' "
                     f"alt='{heading}'>"
                     f"<figcaption>{html.escape(figure['caption'])}"
                     + (f" <span class='flag'>{html.escape(figure['warning'])}</span>" if figure.get("warning") else "")
                     + "</figcaption></figure>")
    with open(path, "w") as f:
        f.write("\n".join(parts))
