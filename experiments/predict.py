r"""Use a trained network on your own images or texts: each one's most likely classes.

    python -m experiments.predict --workdir=runs/fashion shirt.jpg boot.png
    python -m experiments.predict --workdir=runs/fashion photos/ --top_k=1 --json
    python -m experiments.predict --workdir=runs/fortunes "Real programmers don't comment their code."

Each image (any format Pillow reads, any size, grey or colour; a folder
stands for its image files) is converted to the run's image shape and
channels as evaluation converts its test images (`cnn_jax.data.files.centre`:
the largest centred crop of the run's aspect ratio, resized), scaled as
evaluation scales them, and run in test mode.
A line per image:

    shirt.jpg: Shirt 0.912 | T-shirt/top 0.051 | Pullover 0.020

A file that cannot be read is named in a one-line error at the end (exit
status 2); the others are still predicted.

For a run of texts each argument is a text, made token ids as its training
texts were (`cnn_jax.data.text`: the run's saved vocabulary, its length).
"""

import json
import os
import sys

from absl import flags

from experiments import cli

flags.DEFINE_string("workdir", None, "A training run's folder (python -m experiments.train --workdir=...).")
flags.DEFINE_integer("top_k", 3, "Classes to show per image, most likely first.")
flags.DEFINE_bool("json", False, "Print one JSON object (files, their top classes and probabilities, and the "
                  "files that could not be read) instead of lines.")
FLAGS = flags.FLAGS

def images(files: list[str], dataset) -> tuple[list, list[str], list[tuple[str, str]]]:
    """(each readable file as the run's input, those files, (file, error) of the others)."""
    from cnn_jax import data
    from cnn_jax.errors import UserError

    inputs, readable, failures = [], [], []
    for path in files:
        try:
            inputs.append(data.read_image(path, dataset.image_shape))
            readable.append(path)
        except UserError as e:
            failures.append((path, str(e)))
    return inputs, readable, failures


def texts(given: list[str], dataset) -> tuple[list, list[str], list[tuple[str, str]]]:
    """(each text as the run's token ids, the texts, (text, error) of those with no word)."""
    from cnn_jax.data import text

    ids = text.encode_texts(given, dataset)
    kept = [k for k, t in enumerate(given) if text.tokenize(t)]
    failures = [(t, f"text {k + 1} ({t!r}) has no words") for k, t in enumerate(given) if k not in kept]
    return [ids[k] for k in kept], [given[k] for k in kept], failures


def image_files(paths: list[str]) -> list[str]:
    """`paths` with each folder replaced by its image files (by suffix, sorted); UserError for a folder with
    none."""
    from cnn_jax.data.files import SUFFIXES, is_image_name
    from cnn_jax.errors import UserError

    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(os.path.join(path, name) for name in os.listdir(path)
                           if is_image_name(name) and os.path.isfile(os.path.join(path, name)))
            if not found:
                raise UserError(f"folder {path} holds no image files ({', '.join(SUFFIXES)})")
            files.extend(found)
        else:
            files.append(path)
    return files


def main(argv: list[str]) -> None:
    from cnn_jax.errors import UserError

    if not FLAGS.workdir:
        raise UserError("give the run to predict with: --workdir=RUN (a folder python -m experiments.train wrote)")
    if FLAGS.top_k < 1:
        raise UserError(f"--top_k={FLAGS.top_k} must be at least 1")
    import numpy as np

    from cnn_jax import data
    from cnn_jax.training import trained

    run = trained.load(FLAGS.workdir)
    if run.dataset.kind == data.TOKENS:
        key, (inputs, readable, failures) = "text", texts(argv[1:], run.dataset)
    elif run.dataset.kind == data.IMAGES:
        key, (inputs, readable, failures) = "file", images(image_files(argv[1:]), run.dataset)
    else:
        raise UserError(f"experiments.predict reads image files and texts; the run in {FLAGS.workdir} was trained "
                        f"on {run.dataset.kind} ({run.config.dataset})")
    top_k = min(FLAGS.top_k, run.dataset.num_classes)
    probabilities = trained.probabilities(run, np.stack(inputs)) if inputs else np.zeros((0, run.dataset.num_classes))
    predictions = [{key: name, "classes": [{"class": run.dataset.class_names[k], "index": int(k),
                                            "probability": float(row[k])} for k in np.argsort(-row)[:top_k]]}
                   for name, row in zip(readable, probabilities, strict=True)]
    if FLAGS.json:
        print(json.dumps({"workdir": FLAGS.workdir, "step": run.step, "predictions": predictions,
                          "unreadable": [{"file": path, "error": error} for path, error in failures]}, indent=1))
    else:
        for prediction in predictions:
            print(f"{prediction[key]}: " + " | ".join(f"{c['class']} {c['probability']:.3f}"
                                                         for c in prediction["classes"]))
    sys.stdout.flush()
    if failures:
        first = failures[0][1]
        more = f" (and {len(failures) - 1} more: {', '.join(p for p, _ in failures[1:])})" if len(failures) > 1 else ""
        raise UserError(f"{first}{more}; the other {len(readable)} {key}(s) were predicted")


if __name__ == "__main__":
    cli.run(main, usage="python -m experiments.predict --workdir=RUN FILE_OR_FOLDER... (or TEXT... for a run of texts)",
            positional=range(1, 10**9))
