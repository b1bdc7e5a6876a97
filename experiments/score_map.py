r"""Slide a trained classifier over a canvas of garments: the score map of its fully convolutional form.

    python -m experiments.score_map --workdir=runs/fashion      # trains 1 epoch there first if it holds no run
    python -m experiments.score_map --workdir=runs/fashion --test_indices=0,1,2,3 --out=map.png

Puts four test images in the quadrants of a 2H×2W canvas (56×56 for
Fashion-MNIST), converts the model's dense head to convolutions
(`cnn_jax.analysis.convert`) and saves a PNG: the canvas, the most probable class at
each position, and each class's probability map. Position (i, j) is the
classifier looking at the H×W window at offset (i·s, j·s) (s = 4 for the seed
ConvNet: an 8×8 map); it is drawn at that window's centre. Needs matplotlib.
"""

import os

import numpy as np
from absl import flags

from cnn_jax.errors import UserError
from experiments import cli

flags.DEFINE_string("workdir", None, "A training run's folder (results.json and checkpoints); trained here if empty.")
flags.DEFINE_string("data_dir", None, "Folder with the dataset's IDX files (default: the standard places).")
flags.DEFINE_list("test_indices", ["0", "1", "2", "3"], "Four test images for the canvas: top-left, top-right, "
                  "bottom-left, bottom-right.")
flags.DEFINE_string("out", None, "Where to write the PNG (default: <workdir>/score_map.png).")
FLAGS = flags.FLAGS


def garment_canvas(images: np.ndarray) -> np.ndarray:
    """Four images `[4, h, w, c]` as the quadrants of one `[2h, 2w, c]` canvas (row by row)."""
    top, bottom = np.concatenate(images[:2], axis=1), np.concatenate(images[2:], axis=1)
    return np.concatenate([top, bottom], axis=0)


def class_probabilities(model, conv_variables, canvas: np.ndarray) -> np.ndarray:
    """Softmax class probabilities at every position of a uint8 `[H, W, c]` canvas: `[h', w', num_classes]`."""
    import jax

    from cnn_jax import data
    from cnn_jax.analysis import convert

    logits = convert.apply_fully_convolutional(model, conv_variables, data.normalize(canvas)[None])[0]
    return np.asarray(jax.nn.softmax(logits, axis=-1))


def load_or_train(workdir: str, data_dir: str | None):
    """(model, variables, dataset) of the run in `workdir`; trains the seed ConvNet for 1 epoch there if it has none."""
    from cnn_jax.training import loop, trained
    from cnn_jax.training.config import Config

    if not os.path.exists(os.path.join(workdir, loop.CONFIG_FILE)):
        loop.train_and_evaluate(Config(epochs=1, data_dir=data_dir), workdir)
    run = trained.load(workdir, data_dir)
    return run.model, run.variables, run.dataset


def plot(plt, canvas: np.ndarray, probabilities: np.ndarray, stride: tuple[int, int], window: tuple[int, int],
         title: str, class_names, path: str) -> None:
    """Saves with `plt` the canvas, the argmax class map and each class's probability map, cells at window centres."""
    (rows, cols, num_classes), (sh, sw), (h, w) = probabilities.shape, stride, window
    # Cell (i, j) covers the stride×stride square around the centre (i·sh + h/2, j·sw + w/2) of its window.
    extent = (w / 2 - sw / 2, w / 2 + (cols - 0.5) * sw, h / 2 + (rows - 0.5) * sh, h / 2 - sh / 2)
    panels = 2 + num_classes
    fig, axes = plt.subplots((panels + 3) // 4, 4, figsize=(11, 3 * ((panels + 3) // 4)))
    axes = axes.ravel()
    shown = canvas[..., 0] if canvas.shape[-1] == 1 else canvas
    for ax in axes[:panels]:
        ax.imshow(shown, cmap="gray", alpha=1.0 if ax is axes[0] else 0.3)
    axes[0].set_title("canvas", fontsize=9)
    best = probabilities.argmax(-1)
    axes[1].imshow(best, cmap="tab10", vmin=-0.5, vmax=num_classes - 0.5, extent=extent, alpha=probabilities.max(-1))
    for (i, j), k in np.ndenumerate(best):
        axes[1].text(j * sw + w / 2, i * sh + h / 2, str(k), ha="center", va="center", fontsize=6)
    axes[1].set_title("argmax class (opacity: probability)", fontsize=9)
    for k in range(num_classes):
        image = axes[2 + k].imshow(probabilities[..., k], cmap="magma", vmin=0, vmax=1, extent=extent, alpha=0.85)
        axes[2 + k].set_title(f"{k}: P({class_names[k]})", fontsize=9)
    for ax in axes:
        ax.set_xlim(0, canvas.shape[1])
        ax.set_ylim(canvas.shape[0], 0)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes[panels:]:
        ax.axis("off")
    fig.colorbar(image, ax=axes.tolist(), shrink=0.6, label="class probability")
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def score_map(workdir: str, data_dir: str | None, test_indices: list[str], out: str) -> str:
    """Builds the canvas from `test_indices`, computes its score map and writes the PNG to `out`; returns `out`."""
    from cnn_jax.analysis import convert
    from cnn_jax.analysis.inspect import figures

    plt = figures.pyplot()  # Before any training: a missing matplotlib should not cost an epoch.
    try:
        indices = [int(i) for i in test_indices]
    except ValueError:
        raise UserError(f"--test_indices={','.join(test_indices)} must be four integers") from None
    model, variables, dataset = load_or_train(workdir, data_dir)
    if len(indices) != 4 or not all(0 <= i < len(dataset.test_labels) for i in indices):
        raise UserError(f"--test_indices={','.join(test_indices)} must be four test-image indices in "
                        f"[0, {len(dataset.test_labels)})")
    conv_variables, stride = convert.to_fully_convolutional(model, variables, dataset.image_shape)
    canvas = garment_canvas(dataset.test_images[indices])
    probabilities = class_probabilities(model, conv_variables, canvas)
    labels = ", ".join(dataset.class_names[dataset.test_labels[i]] for i in indices)
    title = (f"{type(model).__name__} slid over {canvas.shape[0]}×{canvas.shape[1]} at stride {stride[0]}: "
             f"{probabilities.shape[0]}×{probabilities.shape[1]} positions; garments: {labels}")
    plot(plt, canvas, probabilities, stride, dataset.image_shape[:2], title, dataset.class_names, out)
    return out


def main(argv):
    del argv
    if not FLAGS.workdir:
        raise UserError("--workdir is required: a training run's folder, or an empty one to train in")
    path = score_map(FLAGS.workdir, FLAGS.data_dir, FLAGS.test_indices,
                     FLAGS.out or os.path.join(FLAGS.workdir, "score_map.png"))
    print(f"wrote {path}")


if __name__ == "__main__":
    cli.run(main, usage="python -m experiments.score_map --workdir=DIR [--flags]")
