r"""The per-layer summary of any model (zoo name or text spec), as a table or JSON.

    python -m experiments.summary convnet
    python -m experiments.summary resnet18 --input_shape=32,32,3 --num_classes=100 --json
    python -m experiments.summary convnet1d                          # signals: length,channels (40,1)
    python -m experiments.summary alexnet --input_shape=227,227,3 --num_classes=1000 --im2col
    python -m experiments.summary textcnn --input_shape=56 --vocab_size=18000 --num_classes=2
    python -m experiments.summary resnet18 --dtype=bfloat16              # activation memory in mixed precision

Shapes, kernel, stride, padding, parameters, activation memory, FLOPs and
receptive field of every layer, traced with `jax.eval_shape` so nothing is
allocated (`cnn_jax.analysis.summary`).
"""

import json

from absl import flags

from cnn_jax.errors import UserError
from cnn_jax.training.config import DTYPES
from experiments import cli

flags.DEFINE_string("input_shape", "", "The input's shape: height,width,channels of an image (default 28,28,1), "
                    "length,channels of a signal (default 40,1: MNIST-1D), or length of a text (default 64 tokens).")
flags.DEFINE_integer("num_classes", 10, "Number of classes the model predicts.")
flags.DEFINE_integer("vocab_size", 20000, "A model of texts: its vocabulary's size (the embedding's rows).")
flags.DEFINE_enum("dtype", "float32", DTYPES, "What the model computes in (a run's --dtype): sets the activations' "
                  "bytes.")
flags.DEFINE_bool("json", False, "Print the summary as one JSON document instead of a table.")
flags.DEFINE_bool("im2col", False, "Add each convolution's im2col matrices (patches [k·k·C_in × positions] and "
                  "kernel [C_out × k·k·C_in]) and their bytes to the table (the JSON always has them).")
FLAGS = flags.FLAGS


SHAPES = {"images": ("height,width,channels", "28,28,1"), "signals": ("length,channels", "40,1"),
          "tokens": ("length", "64")}
"""What `input_shape` means for a model of each kind of input, and its default."""


def parse_shape(text: str, inputs: str = "images") -> tuple[int, ...]:
    """"28,28,1" -> (28, 28, 1): the positive integers of a shape of `inputs` (`SHAPES`), or its default for ""."""
    meaning, default = SHAPES[inputs]
    parts = (text or default).split(",")
    if len(parts) != len(default.split(",")) or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise UserError(f"`input_shape`={text!r} is not {meaning} (the model takes {inputs}); write "
                        f"{len(default.split(','))} positive integer(s) such as {default}")
    return tuple(int(p) for p in parts)


def main(argv: list[str]) -> None:
    from cnn_jax import models  # After the flags, so --help stays fast.
    from cnn_jax.analysis import summary

    model = models.lookup(argv[1])(num_classes=FLAGS.num_classes)
    if models.inputs_of(model) == "tokens":
        model = model.clone(vocab_size=FLAGS.vocab_size)
    result = summary.summarize(model, parse_shape(FLAGS.input_shape, models.inputs_of(model)), FLAGS.dtype)
    print(json.dumps(result) if FLAGS.json else summary.format_table(result, FLAGS.im2col))


if __name__ == "__main__":
    cli.run(main, usage="python -m experiments.summary MODEL [--input_shape=H,W,C|L,C|L] [--num_classes=N] [--json]",
            positional=1)
