r"""The README's model-zoo tables, generated from the code: every image model's parameters at three input sizes, and
every model of sequences' parameters at its input.

    python -m experiments.zoo_table            # prints the table (Markdown)
    python -m experiments.zoo_table --write    # replaces the table in README.md

Parameter counts are trainable parameters (`params`, not BatchNorm's
statistics), traced with `jax.eval_shape`, so nothing is allocated.
"""

import os
import re

import jax
from absl import flags

from cnn_jax import models
from cnn_jax.analysis import arithmetic
from experiments import cli

flags.DEFINE_bool("write", False, "Replace the table between its markers in README.md instead of printing it.")
FLAGS = flags.FLAGS

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
BEGIN, END = "<!-- zoo table: python -m experiments.zoo_table --write -->", "<!-- end of zoo table -->"
SIZES = {"28×28×1, 10 classes": ((28, 28, 1), 10), "32×32×3, 10 classes": ((32, 32, 3), 10),
         "224×224×3, 1000 classes": ((224, 224, 3), 1000)}
VOCABULARY, TEXT_LENGTH = 20000, 64  # A model of texts is counted with the default vocabulary's size.


SEQUENCES = {"signals": ("a 40×1 signal (MNIST-1D), 10 classes", (40, 1), 10),
             "tokens": (f"{TEXT_LENGTH} tokens of a {VOCABULARY:,}-word vocabulary, 2 classes", (TEXT_LENGTH,), 2)}


def parameter_count(name: str, input_shape: tuple[int, ...], num_classes: int) -> int:
    """Trainable parameters of model `name` built for `num_classes` and inputs of `input_shape` (a model of texts
    with a `VOCABULARY`-word vocabulary)."""
    model = models.lookup(name)(num_classes=num_classes)
    if models.inputs_of(model) == "tokens":
        model = model.clone(vocab_size=VOCABULARY)
    key = jax.random.key(0)
    variables = jax.eval_shape(model.init, {"params": key, "dropout": key}, models.input_spec(model, input_shape))
    return arithmetic.count_params(variables["params"])


def table() -> str:
    """Markdown: one row per image model (its name, parameters at each of SIZES, and what it teaches), then one
    per model of sequences (its input, as `SEQUENCES` has it, and parameters)."""
    lines = ["| model | " + " | ".join(SIZES) + " | what it teaches |", "|---" * (len(SIZES) + 2) + "|"]
    sequences = ["", "| model of sequences | input | parameters | what it teaches |", "|---|---|---|---|"]
    for name, entry in models.MODELS.items():
        inputs = models.inputs_of(models.lookup(name)(num_classes=2))
        if inputs in SEQUENCES:
            described, shape, num_classes = SEQUENCES[inputs]
            sequences.append(f"| `{name}` | {described} | {parameter_count(name, shape, num_classes):,} | "
                             f"{entry.lesson} |")
        else:
            counts = [f"{parameter_count(name, *size):,}" for size in SIZES.values()]
            lines.append(f"| `{name}` | " + " | ".join(counts) + f" | {entry.lesson} |")
    return "\n".join(lines + sequences)


def readme_table(text: str) -> str:
    """The table between the markers of README text."""
    return re.search(re.escape(BEGIN) + r"\n(.*?)\n" + re.escape(END), text, re.S).group(1)


def main(argv):
    del argv
    if not FLAGS.write:
        print(table())
        return
    with open(README) as f:
        text = f.read()
    new = text.replace(readme_table(text), table())
    with open(README + ".tmp", "w") as f:
        f.write(new)
    os.replace(README + ".tmp", README)


if __name__ == "__main__":
    cli.run(main, usage="python -m experiments.zoo_table [--write]")
