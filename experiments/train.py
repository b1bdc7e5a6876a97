r"""Train a network on a dataset; the defaults are the headline experiment, the seed-000 network on Fashion-MNIST
(`python -m experiments.fashion` is this command).

    python -m experiments.train                        # defaults: seed network, Fashion-MNIST, 10 epochs
    python -m experiments.train --epochs=2 --workdir=runs/quick
    python -m experiments.train --dataset=mnist --data_dir=~/data/mnist
    python -m experiments.train --dataset=folder --data_dir=PetImages --model=inception_v3 --image_size=299
    python -m experiments.train --dataset=cats_vs_dogs --model=resnet18 --image_size=224 --batch_size=32
    python -m experiments.train --classes=5,6,7,8,9 --init_from=runs/first5 --reinit=classifier --freeze=backbone
    python -m experiments.train --dataset=mnist1d                      # signals: convnet1d by default
    python -m experiments.train --dataset=text --data_dir=reviews.csv  # texts: textcnn by default
    python -m experiments.train --dataset=imdb_reviews --max_length=400 --max_norm=3

Prints one line per epoch and ends with the test accuracy; writes
metrics.jsonl, TensorBoard events, a checkpoint and results.json to --workdir.
"""

import dataclasses
import os
import sys
import time

from absl import flags

from cnn_jax.training.config import AUGMENTATIONS, DTYPES, LR_SCHEDULES, NEW_LAYERS, Config
from experiments import cli

_DEFAULTS = Config()

flags.DEFINE_string("workdir", None, "Output directory (default: runs/<dataset>-<model>-<time>). Must not hold a run.")
flags.DEFINE_string("model", _DEFAULTS.model, "A zoo name (see README: convnet, lenet5, vgg16, resnet18, convnet1d, "
                    "textcnn, ...) or a text spec of a conv stack (cnn_jax.models.spec). Default: convnet for images, "
                    "convnet1d for signals (mnist1d), textcnn for texts.")
flags.DEFINE_string("dataset", _DEFAULTS.dataset, "fashion_mnist, mnist, mnist1d, a tensorflow-datasets name (images "
                    "or texts), folder (your own images in --data_dir: DIR/<class>/*, or DIR/train/<class>/* and "
                    "DIR/test/<class>/*) or text (your own labelled texts: --data_dir=FILE.csv|.tsv|.jsonl, or a "
                    "folder with train.* and test.*).")
flags.DEFINE_string("data_dir", _DEFAULTS.data_dir, "Folder with IDX files, tensorflow-datasets' data_dir, the "
                    "folder of images of --dataset=folder, or the file (or folder) of --dataset=text.")
flags.DEFINE_string("text_column", _DEFAULTS.text_column, "--dataset=text: the column (JSON key) of the texts; a "
                    "tensorflow-datasets text dataset: the feature (default: its only one, or all joined).")
flags.DEFINE_string("label_column", _DEFAULTS.label_column, "--dataset=text: the column (JSON key) of the labels.")
flags.DEFINE_integer("vocab_size", _DEFAULTS.vocab_size, "Texts: the vocabulary's size (the most frequent training "
                     "words, padding and unknown included). Saved with the run and reused on resume.")
flags.DEFINE_integer("min_count", _DEFAULTS.min_count, "Texts: words seen fewer times in training are unknown.")
flags.DEFINE_integer("max_length", _DEFAULTS.max_length, "Texts: tokens per text, padded or truncated (0: the "
                     "longest training text's).")
flags.DEFINE_float("max_norm", _DEFAULTS.max_norm, "Rescale each class's weight vector in the classifier to at most "
                   "this L2 norm after every update (Kim 2014: 3; 0: no constraint).")
flags.DEFINE_string("image_size", "", "S or H,W: images become this size (training: Inception's random crop; "
                    "evaluation: the centred crop), e.g. 224 or 299. Default: their own size (all one size).")
flags.DEFINE_integer("channels", 0, "1 (grey) or 3 (RGB): images become this many channels. Default: their own.")
flags.DEFINE_float("test_fraction", _DEFAULTS.test_fraction, "--dataset=folder without train/ and test/ folders: "
                   "the share of each class held out for testing (always the same files).")
flags.DEFINE_string("train_split", "", "tensorflow-datasets split to train on, e.g. train[:80%] (default: train).")
flags.DEFINE_string("eval_split", "", "tensorflow-datasets split to evaluate on, e.g. train[80%:] (default: test, "
                    "else validation, else the last 20% of train).")
flags.DEFINE_bool("aux_classifiers", False, "googlenet, inception_v3: train their auxiliary classifiers too (their "
                  "losses weigh 0.3 in the training loss; evaluation uses the main classifier only).")
flags.DEFINE_integer("epochs", _DEFAULTS.epochs, "Passes over the training set.")
flags.DEFINE_integer("batch_size", _DEFAULTS.batch_size, "Training examples per step.")
flags.DEFINE_integer("eval_batch_size", _DEFAULTS.eval_batch_size, "Test examples per evaluation step.")
flags.DEFINE_enum("dtype", _DEFAULTS.dtype, DTYPES, "What the model computes in: bfloat16 is mixed precision "
                  "(convolutions, matrix products and activations in bfloat16; parameters, optimizer, BatchNorm "
                  "statistics and loss in float32).")
flags.DEFINE_float("learning_rate", _DEFAULTS.learning_rate, "Adam's (peak) learning rate.")
flags.DEFINE_enum("lr_schedule", _DEFAULTS.lr_schedule, LR_SCHEDULES, "Learning-rate schedule; constant is the seed's.")
flags.DEFINE_enum("augment", _DEFAULTS.augment, AUGMENTATIONS, "Training-time augmentation; none is the seed's.")
flags.DEFINE_string("loss", _DEFAULTS.loss, "softmax_cross_entropy, sigmoid_cross_entropy or l2 (cnn_jax.layers.losses).")
flags.DEFINE_float("label_smoothing", _DEFAULTS.label_smoothing, "Softmax cross-entropy's label smoothing epsilon.")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed for initialisation and data order.")
flags.DEFINE_integer("max_steps", _DEFAULTS.max_steps, "Stop after this many steps (0 = no limit).")
flags.DEFINE_integer("max_train_examples", 0, "Train on the first N examples only (0 = all).")
flags.DEFINE_integer("max_test_examples", 0, "Evaluate on the first N test examples only (0 = all).")
flags.DEFINE_integer("eval_every", 0, "Evaluate on the test split every N steps (0: at every epoch's end).")
flags.DEFINE_string("classes", "", "Comma-separated class indices or names to keep, in both splits, relabelled in "
                    "this order (default: all), e.g. --classes=0,1 or --classes=Sandal,Sneaker.")
flags.DEFINE_integer("train_examples_per_class", 0, "Train on N examples of each class, drawn by --seed (0: all).")
flags.DEFINE_string("init_from", "", "Start from the weights of a trained run (its --workdir, or one checkpoint "
                    "folder): every layer of the same path and shape is loaded; the others (a classifier for "
                    "another number of classes) start fresh. Optimizer and step start anew.")
flags.DEFINE_string("reinit", "", "With --init_from: layers that start fresh even though it has weights of their "
                    "shape: classifier, or a regex over parameter paths (a new head for other classes).")
flags.DEFINE_enum("new_layers", _DEFAULTS.new_layers, NEW_LAYERS, "With --init_from: how layers it has no weights "
                  "for start: the model's initialisation (fresh) or zeros.")
flags.DEFINE_string("freeze", "", "Parameters that do not train: backbone (all but the classifier) or a regex over "
                    "parameter paths (ConvBlock_0/Conv_0/kernel, ...). A block whose parameters are all frozen "
                    "runs in inference mode (BatchNorm keeps its statistics).")
flags.DEFINE_integer("checkpoint_every", 1000, "Save a checkpoint every N steps (0: only at evaluations). Running "
                     "again with the same --workdir resumes from the newest one.")
flags.DEFINE_bool("log_images", False, "At each evaluation, also write the first layer's filters and the first test "
                  "image's activation maps to TensorBoard.")
flags.DEFINE_bool("allow_config_change", False, "Resume a --workdir whose run used other flags.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for a run over several processes "
                    "(jax.distributed); Cloud TPU pods and SLURM jobs are detected without it.")
flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index, 0 to --num_processes - 1.")
FLAGS = flags.FLAGS


def config_from_flags() -> Config:
    """The Config with every field that has a flag of the same name taken from the flags."""
    names = {field.name for field in dataclasses.fields(Config)} & set(FLAGS)
    return Config(**{name: FLAGS[name].value for name in names})


def main(argv: list[str]) -> None:
    del argv
    config = config_from_flags().validate()  # A bad flag's line comes before JAX is imported.
    name = "-".join(filter(None, (config.dataset, config.model, time.strftime("%Y%m%d-%H%M%S"))))
    workdir = FLAGS.workdir or os.path.join("runs", name)
    import jax  # After the flags, so --help stays fast.

    from cnn_jax.training import loop

    cli.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    try:
        with cli.preemption_notice() as stop_requested:
            results = loop.train_and_evaluate(config, workdir, FLAGS.checkpoint_every, FLAGS.allow_config_change,
                                              stop_requested, FLAGS.log_images)
    except loop.Preempted as e:
        print(cli.preempted_message(e), file=sys.stderr)
        return
    if jax.process_index() == 0:  # Every process of a multi-process run gets the results; one prints them.
        print(f"test accuracy: {results['test_accuracy']:.4f}  (results in {os.path.join(workdir, 'results.json')})")


if __name__ == "__main__":
    cli.run(main, usage="python -m experiments.train [--flags]")
