r"""The per-layer summary of any model (zoo name or text spec), as a table or JSON.

    python -m experiments.summary convnet
    python -m experiments.summary resnet18 --input_shape=32,32,3 --num_classes=100 --json

Shapes, kernel, stride, padding, parameters, activation memory, FLOPs and
receptive field of every layer, traced with `jax.eval_shape` so nothing is
allocated (`cnn_jax.analysis.summary`).
"""

import json

from absl import flags

from cnn_jax.errors import UserError
from experiments import cli

flags.DEFINE_string("input_shape", "28,28,1", "Image shape height,width,channels.")
flags.DEFINE_integer("num_classes", 10, "Number of classes the model predicts.")
flags.DEFINE_bool("json", False, "Print the summary as one JSON document instead of a table.")
FLAGS = flags.FLAGS


def parse_shape(text: str) -> tuple[int, int, int]:
    """"28,28,1" -> (28, 28, 1): height, width, channels, each a positive integer."""
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise UserError(f"`input_shape`={text!r} is not height,width,channels; write three positive integers "
                        "such as 28,28,1")
    return tuple(int(p) for p in parts)


def main(argv: list[str]) -> None:
    from cnn_jax import models  # After the flags, so --help stays fast.
    from cnn_jax.analysis import summary

    input_shape = parse_shape(FLAGS.input_shape)
    result = summary.summarize(models.lookup(argv[1])(num_classes=FLAGS.num_classes), input_shape)
    print(json.dumps(result) if FLAGS.json else summary.format_table(result))


if __name__ == "__main__":
    cli.run(main, usage="python -m experiments.summary MODEL [--input_shape=H,W,C] [--num_classes=N] [--json]",
            positional=1)
