r"""Look inside a trained network: activation maps, filters, feature visualisations, attribution and its sanity check.

    python -m experiments.inspect --workdir=runs/fashion                       # test images 0-3, every method
    python -m experiments.inspect --workdir=runs/fashion --images=10,11 --methods=activations,grad_cam
    python -m experiments.inspect --workdir=runs/fashion --image_files=shirt.jpg,boot.png --out=/tmp/mine
    python -m experiments.inspect --workdir=runs/mnist1d --methods=activations,saliency   # signals: time steps
    python -m experiments.inspect --workdir=runs/reviews                       # texts: a score per token

Reads the run's newest checkpoint and its dataset (or your image files,
converted to the run's image size and channels) and writes into --out
(default <workdir>/inspect/): a PNG per picture, the arrays behind each
(<method>.npz), inspect.json with every number, and index.html, a page with
every picture and what it shows. The folder is replaced whole at the end;
bad input writes nothing.

A run of signals (MNIST-1D) or texts gets the methods that apply to
sequences: activation maps along the sequence, attribution over time steps
or tokens (a text's through its word vectors) and the sanity check; a
signal model's first-layer filters as curves and its 1-D Grad-CAM too.
"""

import os

from absl import flags

from cnn_jax.errors import UserError
from experiments import cli

flags.DEFINE_string("workdir", None, "A training run's folder (python -m experiments.train --workdir=...).")
flags.DEFINE_string("data_dir", None, "Where the run's dataset is, if not where the run found it.")
flags.DEFINE_list("images", ["0", "1", "2", "3"], "Test-split indices of the examples (images, signals or texts) "
                  "to look at.")
flags.DEFINE_list("image_files", [], "Your own image files instead of --images, for a run of images (any size; "
                  "converted to the run's image size and channels).")
flags.DEFINE_list("layers", [], "Layers whose activation maps are drawn (default: every layer, or a large model's "
                  "outermost ones); the names are those of python -m experiments.summary.")
flags.DEFINE_list("methods", [], "What to do (default: every one that applies to the run's inputs), from: "
                  "activations, filters, hand_made, edges, features, saliency, smoothgrad, gradient_times_input, "
                  "integrated_gradients, grad_cam, hires_cam, occlusion, sanity. Signals take all but hand_made, "
                  "edges and features; texts not filters, grad_cam and hires_cam either.")
flags.DEFINE_list("featvis_layers", [], "Layers whose channels feature visualisation shows (default: the outermost "
                  "layers with a map, a ConvNet's blocks or a ResNet's residual blocks, at most 4 evenly spread).")
flags.DEFINE_list("channels", [], "Channels feature visualisation shows in each of its layers (default: the first "
                  "64).")
flags.DEFINE_integer("featvis_steps", 256, "Adam steps of feature visualisation.")
flags.DEFINE_integer("target_class", None, "The class attribution explains besides the predicted one (default: each "
                     "image's runner-up).")
flags.DEFINE_integer("seed", 0, "Seed of feature visualisation's noise and transformations.")
flags.DEFINE_string("out", None, "Output folder (default: <workdir>/inspect).")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    if not FLAGS.workdir:
        raise UserError("give the run to look inside: --workdir=RUN (a folder python -m experiments.train wrote)")
    if FLAGS["images"].present and FLAGS.image_files:
        raise UserError("give --images (test indices) or --image_files (your files), not both")
    from cnn_jax.analysis.inspect import report
    from cnn_jax.training import trained

    report.check_methods(FLAGS.methods)
    run = trained.load(FLAGS.workdir, FLAGS.data_dir)
    methods = report.check_methods(FLAGS.methods or report.methods_for(run.dataset.kind), run.dataset.kind)
    chosen = report.choose(run.dataset, FLAGS.images, FLAGS.image_files)
    out = FLAGS.out or os.path.join(FLAGS.workdir, "inspect")
    try:
        channels = [int(c) for c in FLAGS.channels]
    except ValueError:
        raise UserError(f"--channels={','.join(FLAGS.channels)} must be integers") from None
    report.write(run, chosen, methods, out, FLAGS.layers or None, FLAGS.featvis_layers or None, channels,
                 FLAGS.featvis_steps, FLAGS.target_class, FLAGS.seed)
    print(f"wrote {os.path.join(out, 'index.html')} ({len(methods)} methods on {len(chosen.labels)} "
          f"{report.EXAMPLES[run.dataset.kind]})")


if __name__ == "__main__":
    cli.run(main, usage="python -m experiments.inspect --workdir=RUN [--flags]")
