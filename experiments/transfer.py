r"""What transfer buys: the source document's 2 → 3 class example, and a study over the number of labels.

    python -m experiments.transfer --workdir=runs/transfer --quick     # minutes on 2 CPU cores
    python -m experiments.transfer --workdir=runs/transfer --seeds=3

1. 2 → 3 classes (source 002): the seed network trained on Pullover and Coat,
   its classifier replaced by one for Pullover, Coat and Shirt and everything
   retrained, against the 3-class network trained from scratch for the same steps.
2. The study: the seed network pretrained on Fashion-MNIST classes 0-4
   (T-shirt/top, Trouser, Pullover, Dress, Coat), then trained on classes 5-9
   (Sandal, Shirt, Sneaker, Bag, Ankle boot) with 1, 10, 100 and 1,000 labels
   per class and with all of them, for the same steps each:
     scratch        a fresh network
     linear_probe   the pretrained backbone frozen, a new classifier trained
     fine_tune      everything trained from the pretrained weights
     head_then_all  the new classifier alone for half the steps, then
                    everything at a tenth of the learning rate

Every run is a normal run in WORKDIR (`python -m experiments.fashion`'s
outputs), trained by the sweep machinery (`cnn_jax.training.sweeps.run_all`):
a finished run is skipped and an interrupted one resumes, so the same
command completes a study. It writes WORKDIR/summary.json and summary.csv
(test accuracy mean ± std over seeds per method and labels per class) and
transfer.png (accuracy against labels per class; the 2 → 3 example's curves).
The runs' compiled programs are kept in WORKDIR/compiled, so most runs
compile nothing.
"""

import csv
import json
import os
import statistics
import sys

from absl import flags

from experiments import cli

flags.DEFINE_string("workdir", None, "Folder for the study's runs and summary; the same folder resumes it.")
flags.DEFINE_bool("quick", False, "Fewer steps and test images, 2 seeds unless --seeds: a few minutes on a CPU.")
flags.DEFINE_integer("seeds", None, "Seeds per method and number of labels (default 3; 2 with --quick).")
flags.DEFINE_list("labels", ["1", "10", "100", "1000", "all"], "Training labels per class of the study's runs.")
flags.DEFINE_integer("steps", None, "Steps of each run on classes 5-9 (default 1,000; 200 with --quick); the 2 → 3 "
                     "example's runs take half as many.")
flags.DEFINE_integer("pretrain_steps", None, "Steps of the pretraining on classes 0-4 and on the 2 classes of the "
                     "2 → 3 example (default 3,000; 600 with --quick).")
flags.DEFINE_string("data_dir", None, "Folder with Fashion-MNIST's IDX files (default: Debian's, or TFDS).")
FLAGS = flags.FLAGS

SOURCE, TARGET = "0,1,2,3,4", "5,6,7,8,9"
TWO, THREE = "Pullover,Coat", "Pullover,Coat,Shirt"
METHODS = ("scratch", "linear_probe", "fine_tune", "head_then_all")
BATCH_SIZE = 50
EVALUATIONS = 5  # Per run: the points of each learning curve.
SETTINGS = {  # Steps of the pretraining and of each run on the new classes (the 2 → 3 runs: half); test images (0: all).
    False: {"pretrain": 3000, "steps": 1000, "max_test_examples": 0},
    True: {"pretrain": 600, "steps": 200, "max_test_examples": 2000},
}
HEAD_FIRST_RATE = 0.1  # head_then_all's second half: this times the learning rate, for every layer.


def runs(root: str, settings: dict, labels_per_class: list[int], seeds: list[int], data_dir: str | None
         ) -> dict[str, list]:
    """Every run of the study, in an order that trains each run's source before it: {name: [(config, workdir)]}.

    `settings` are one of `SETTINGS`; `labels_per_class` 0 means every training example. Names: 'source',
    'two', 'two_to_three/fine_tune', 'two_to_three/scratch', '<method>/<labels>' (and 'head_only/<labels>',
    head_then_all's first half).
    """
    from cnn_jax.training.config import Config

    def config(steps: int, **fields) -> Config:
        # Epochs without a limit: `max_steps` is the budget, whatever the size of the training set.
        return Config(data_dir=data_dir, epochs=10**6, max_steps=steps, eval_every=max(steps // EVALUATIONS, 1),
                      max_test_examples=settings["max_test_examples"], **fields)

    source, two = os.path.join(root, "source"), os.path.join(root, "two_to_three", "source")
    plan = {"source": [(config(settings["pretrain"], classes=SOURCE), source)],
            "two": [(config(settings["pretrain"], classes=TWO), two)]}
    short = max(settings["steps"] // 2, 1)
    plan["two_to_three/fine_tune"] = [(config(short, classes=THREE, init_from=two),
                                       os.path.join(root, "two_to_three", "fine_tune"))]
    plan["two_to_three/scratch"] = [(config(short, classes=THREE), os.path.join(root, "two_to_three", "scratch"))]
    steps = settings["steps"]
    for labels in labels_per_class:
        size = f"labels{labels or 'all'}"
        for method in (*METHODS[:3], "head_only", "head_then_all"):
            plan[f"{method}/{labels}"] = []
            for seed in seeds:
                fields = {"classes": TARGET, "train_examples_per_class": labels, "seed": seed,
                          "batch_size": min(BATCH_SIZE, len(TARGET.split(",")) * labels) if labels else BATCH_SIZE}
                workdir = os.path.join(root, size, method, f"seed{seed}")
                if method in ("linear_probe", "head_only"):
                    fields.update(init_from=source, reinit="classifier", freeze="backbone")
                elif method == "fine_tune":
                    fields.update(init_from=source, reinit="classifier")
                elif method == "head_then_all":
                    head = os.path.join(root, size, "head_only", f"seed{seed}")
                    fields.update(init_from=head, learning_rate=Config().learning_rate * HEAD_FIRST_RATE)
                budget = {"head_only": steps // 2, "head_then_all": steps - steps // 2}.get(method, steps)
                plan[f"{method}/{labels}"].append((config(budget, **fields), workdir))
    return plan


def _results(workdir: str) -> dict:
    with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)


def _curve(workdir: str) -> list[tuple[int, float]]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [(line["step"], line["test_accuracy"]) for line in map(json.loads, f) if line]


def summarize(plan: dict[str, list], labels_per_class: list[int]) -> dict:
    """Test accuracy mean ± std over seeds for each method and labels per class, and the 2 → 3 example."""
    rows = []
    for labels in labels_per_class:
        for method in METHODS:
            accuracies = [_results(workdir)["test_accuracy"] for _, workdir in plan[f"{method}/{labels}"]]
            train_examples = _results(plan[f"{method}/{labels}"][0][1])["train_examples"]
            rows.append({"method": method, "labels_per_class": labels or "all", "train_examples": train_examples,
                         "seeds": len(accuracies), "test_accuracy_mean": statistics.mean(accuracies),
                         "test_accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0})
    two_to_three = {name: {"test_accuracy": _results(plan[f"two_to_three/{name}"][0][1])["test_accuracy"],
                           "curve": _curve(plan[f"two_to_three/{name}"][0][1])} for name in ("fine_tune", "scratch")}
    source = _results(plan["source"][0][1])
    return {"source": {"classes": source["classes"], "test_accuracy": source["test_accuracy"],
                       "steps": source["steps"]},
            "target_classes": _results(plan[f"scratch/{labels_per_class[0]}"][0][1])["classes"],
            "two_source_accuracy": _results(plan["two"][0][1])["test_accuracy"],
            "two_to_three": two_to_three, "rows": rows}


def format_table(rows: list[dict]) -> str:
    lines = [f"{'labels/class':>12} {'train':>7} " + " ".join(f"{method:>17}" for method in METHODS)]
    for labels in dict.fromkeys(row["labels_per_class"] for row in rows):
        cells = {row["method"]: row for row in rows if row["labels_per_class"] == labels}
        lines.append(f"{labels!s:>12} {cells[METHODS[0]]['train_examples']:>7,} " + " ".join(
            f"{cells[m]['test_accuracy_mean']:>9.4f} ± {cells[m]['test_accuracy_std']:.4f}" for m in METHODS))
    return "\n".join(lines)


def write_summary(root: str, summary: dict) -> None:
    """summary.json, summary.csv and transfer.png in `root`."""
    from cnn_jax.analysis.inspect.figures import pyplot

    plt = pyplot()

    from cnn_jax.training.writers import write_json_atomically

    write_json_atomically(os.path.join(root, "summary.json"), summary)
    rows = summary["rows"]
    with open(os.path.join(root, "summary.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    figure, (study, gain, example) = plt.subplots(1, 3, figsize=(17, 4.5))
    scratch = {row["labels_per_class"]: row["test_accuracy_mean"] for row in rows if row["method"] == "scratch"}
    for method in METHODS:
        mine = [row for row in rows if row["method"] == method]
        per_class = [row["train_examples"] / len(summary["target_classes"]) for row in mine]
        spread = [row["test_accuracy_std"] for row in mine]
        study.errorbar(per_class, [row["test_accuracy_mean"] for row in mine], yerr=spread, marker="o", capsize=3,
                       label=method)
        gain.errorbar(per_class, [100 * (row["test_accuracy_mean"] - scratch[row["labels_per_class"]])
                                  for row in mine], yerr=[100 * s for s in spread], marker="o", capsize=3,
                      label=method)
    study.set_ylabel(f"test accuracy (mean ± std over {rows[0]['seeds']} seeds)")
    study.set_title(f"classes 5-9 from a network pretrained on 0-4 ({summary['source']['test_accuracy']:.1%})",
                    fontsize=10)
    gain.axhline(0, color="grey", linewidth=0.8)
    gain.set_ylabel("test accuracy − scratch's (points; ± the method's std)")
    gain.set_title("what transfer buys", fontsize=10)
    for axis in (study, gain):
        axis.set_xscale("log")
        axis.set_xlabel("training labels per class")
        axis.legend(fontsize="small")
        axis.grid(alpha=0.3)
    for name, result in summary["two_to_three"].items():
        steps, accuracy = zip(*result["curve"])
        example.plot(steps, accuracy, marker="o", label=f"{name.replace('_', '-')} ({result['test_accuracy']:.1%})")
    example.set_xlabel("training steps on 3 classes")
    example.set_ylabel("test accuracy")
    example.set_title(f"2 → 3 classes: Pullover, Coat ({summary['two_source_accuracy']:.1%}) + Shirt", fontsize=10)
    example.legend(fontsize="small")
    example.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(os.path.join(root, "transfer.png"), dpi=120)
    plt.close(figure)


def main(argv: list[str]) -> None:
    del argv
    from cnn_jax.errors import UserError

    if not FLAGS.workdir:
        raise UserError("--workdir is required: the folder for the study's runs (the same folder resumes it)")
    seeds = cli.seeds(FLAGS.seeds, FLAGS.quick)
    if not FLAGS.labels or not all(labels == "all" or (labels.isdigit() and int(labels) > 0) for labels in FLAGS.labels):
        raise UserError(f"--labels={','.join(FLAGS.labels)} must be numbers of labels per class or 'all'")
    labels_per_class = [0 if labels == "all" else int(labels) for labels in FLAGS.labels]  # 0: every example.
    settings = dict(SETTINGS[FLAGS.quick])
    for name, flag, least in (("steps", "steps", 2), ("pretrain", "pretrain_steps", 1)):  # head_then_all halves steps.
        if FLAGS[flag].value is not None:
            if FLAGS[flag].value < least:
                raise UserError(f"--{flag}={FLAGS[flag].value} must be at least {least}")
            settings[name] = FLAGS[flag].value
    plan = runs(FLAGS.workdir, settings, labels_per_class, seeds, FLAGS.data_dir)
    for group in plan.values():
        for config, _ in group:
            config.validate()

    from cnn_jax.training import loop, sweeps

    cli.cache_compiled_programs(os.path.join(FLAGS.workdir, "compiled"))
    try:
        with cli.preemption_notice() as stop_requested:
            sweeps.run_all([run for group in plan.values() for run in group], stop_requested=stop_requested)
    except loop.Preempted as e:
        print(cli.preempted_message(e), file=sys.stderr)
        return
    summary = summarize(plan, labels_per_class)
    write_summary(FLAGS.workdir, summary)
    example = summary["two_to_three"]
    print(f"2 → 3 classes after {example['fine_tune']['curve'][-1][0]:,} steps: fine-tuned "
          f"{example['fine_tune']['test_accuracy']:.4f}, from scratch {example['scratch']['test_accuracy']:.4f}")
    print(f"classes 5-9, pretrained on 0-4 ({summary['source']['test_accuracy']:.4f}): test accuracy")
    print(format_table(summary["rows"]))
    print(f"summary: {os.path.join(FLAGS.workdir, 'summary.csv')}, summary.json, transfer.png")


if __name__ == "__main__":
    cli.run(main, usage="python -m experiments.transfer --workdir=DIR [--quick] [--seeds=N]")
