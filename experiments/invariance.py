r"""Does pooling make a CNN translation invariant? The seed network with and without pooling, and an MLP, tested on
shifted images.

    python -m experiments.invariance --workdir=runs/invariance --quick     # a few minutes on 2 CPU cores
    python -m experiments.invariance --workdir=runs/invariance --seeds=3

Seed documents 000 and 003 say pooling gives some translation invariance (an
object is recognised wherever it appears) and that an MLP has none; 004 that
pooling helps control overfitting. Each of `MODELS` trains on Fashion-MNIST's
centred images, without augmentation (so any invariance comes from the
architecture), over several seeds; then every test image is shifted by 0 to
`--max_shift` pixels in each of four directions, zero-filled
(`cnn_jax.analysis.invariance`), and the accuracy and the change of the logits
against the unshifted images are measured. The train/test gap is each run's
accuracy on its training images in test mode (the first 10,000, or all with
`--quick`'s 6,000) minus its test accuracy (`invariance.run_response`).

Every run is a normal run in WORKDIR/<model>/seed<k> (finished runs are
skipped, interrupted ones resume: `cnn_jax.training.sweeps.run_all`). It writes
WORKDIR/summary.json, summary.csv (per model and shift: accuracy and logit
change, mean ± std over seeds) and invariance.png (accuracy and relative
logit change against the shift).
"""

import csv
import json
import os
import sys

from absl import flags

from experiments import cli

flags.DEFINE_string("workdir", None, "Folder for the runs and the summary; the same folder resumes them.")
flags.DEFINE_bool("quick", False, "5 epochs on 6,000 training images, tested on 2,000, 2 seeds unless --seeds: a few "
                  "minutes on a CPU.")
flags.DEFINE_integer("seeds", None, "Seeds per model (default 3; 2 with --quick).")
flags.DEFINE_integer("max_shift", 8, "Largest shift in pixels; every shift from 0 to it is tested.")
flags.DEFINE_string("data_dir", None, "Folder with Fashion-MNIST's IDX files (default: Debian's, or TFDS).")
FLAGS = flags.FLAGS

MODELS = {
    "max_pool": "c16k5-max-c32k5-max",  # The seed network.
    "avg_pool": "c16k5-avg-c32k5-avg",
    "strided": "c16k5s2p2-c32k5s2p2",  # Stride-2 convolutions, no pooling: the same maps' sizes.
    "global_avg": "c16k5-max-c32k5-max-global_avg",  # Global average pooling before the classifier.
    "mlp": "fc36",  # 784 → 36 → 10: 28,630 parameters, the seed network's 29,034.
}
"""The networks compared, as text specs (`cnn_jax.models.spec`)."""


def runs(root: str, quick: bool, seeds: list[int], data_dir: str | None) -> dict[str, list]:
    """{model: [(Config, workdir) per seed]}."""
    from cnn_jax.training import sweeps
    from cnn_jax.training.config import Config

    fields = {**(sweeps.QUICK if quick else {}), "augment": "none", "data_dir": data_dir}
    return {name: [(Config(model=spec, seed=seed, **fields), os.path.join(root, name, f"seed{seed}")) for seed in seeds]
            for name, spec in MODELS.items()}


def format_table(summary: dict, shown: tuple[int, ...] = (0, 2, 4, 8)) -> str:
    """Accuracy (mean ± std) at a few shifts, the relative logit change at the largest, and the train/test gap."""
    models = summary["models"]
    shifts = [s for s in shown if s in next(iter(models.values()))["shift"]]
    header = f"{'model':12s} {'params':>7s} " + " ".join(f"{f'shift {s}':>15s}" for s in shifts)
    header += f" {'logits moved':>13s} {'train-test gap':>16s}"
    lines = [header]
    for name, entry in models.items():
        cells = " ".join(f"{entry['accuracy'][s]:.4f} ± {entry['accuracy_std'][s]:.4f}" for s in shifts)
        last = shifts[-1]
        lines.append(f"{name:12s} {entry['params']:>7,} {cells} {entry['relative_logit_change'][last]:>13.3f} "
                     f"{entry['gap']:+.4f} ± {entry['gap_std']:.4f}")
    return "\n".join(lines)


def write_summary(root: str, summary: dict) -> None:
    """summary.json, summary.csv (a row per model and shift) and invariance.png, written whole."""
    from cnn_jax.analysis.inspect.figures import pyplot

    plt = pyplot()

    with open(os.path.join(root, "summary.json.tmp"), "w") as f:
        json.dump(summary, f, indent=1)
    os.replace(os.path.join(root, "summary.json.tmp"), os.path.join(root, "summary.json"))
    fields = ("model", "shift", "accuracy_mean", "accuracy_std", "relative_logit_change_mean",
              "relative_logit_change_std", "train_test_gap_mean", "params")
    with open(os.path.join(root, "summary.csv.tmp"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for name, entry in summary["models"].items():
            for k, shift in enumerate(entry["shift"]):
                writer.writerow([name, shift, entry["accuracy"][k], entry["accuracy_std"][k],
                                 entry["relative_logit_change"][k], entry["relative_logit_change_std"][k],
                                 entry["gap"], entry["params"]])
    os.replace(os.path.join(root, "summary.csv.tmp"), os.path.join(root, "summary.csv"))
    figure, (accuracy, moved) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name, entry in summary["models"].items():
        for axis, key in ((accuracy, "accuracy"), (moved, "relative_logit_change")):
            mean, std = (entry[key], entry[f"{key}_std"])
            axis.plot(entry["shift"], mean, marker="o", label=f"{name} ({entry['spec']})")
            axis.fill_between(entry["shift"], [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                              alpha=0.2)
    seeds = next(iter(summary["models"].values()))["seeds"]
    accuracy.set(xlabel="shift (pixels, zero-filled; mean over 4 directions)", ylabel="test accuracy",
                 title=f"accuracy on shifted test images (mean ± std over {seeds} seeds)")
    moved.set(xlabel="shift (pixels)", ylabel="‖z(shifted) − z‖ / mean ‖z‖",
              title="how far the logits move")
    accuracy.legend(fontsize=8)
    accuracy.grid(alpha=0.3)
    moved.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(os.path.join(root, "invariance.png"), dpi=110)
    plt.close(figure)


def main(argv: list[str]) -> None:
    del argv
    from cnn_jax.errors import UserError

    if not FLAGS.workdir:
        raise UserError("--workdir is required: the folder for the runs (the same folder resumes them)")
    seeds = cli.seeds(FLAGS.seeds, FLAGS.quick)
    if not 0 <= FLAGS.max_shift < 28:
        raise UserError(f"--max_shift={FLAGS.max_shift} must be from 0 to 27 pixels")
    plan = runs(FLAGS.workdir, FLAGS.quick, seeds, FLAGS.data_dir)

    from tqdm import tqdm

    from cnn_jax.analysis import invariance
    from cnn_jax.training import loop, sweeps

    try:
        with cli.preemption_notice() as stop_requested:
            sweeps.run_all([run for group in plan.values() for run in group], stop_requested=stop_requested)
    except loop.Preempted as e:
        print(cli.preempted_message(e), file=sys.stderr)
        return
    workdirs = [(name, workdir) for name, group in plan.items() for _, workdir in group]
    measured = {name: [] for name in plan}
    for name, workdir in tqdm(workdirs, desc="shifted test images", unit="run", file=sys.stderr, disable=None):
        measured[name].append(invariance.run_response(workdir, FLAGS.max_shift))
    summary = invariance.over_seeds(measured)
    write_summary(FLAGS.workdir, summary)
    print(f"test accuracy on images shifted by 0 to {FLAGS.max_shift} pixels (mean ± std over {len(seeds)} seeds); "
          f"logits moved: ‖z(shifted) − z‖ / mean ‖z‖ at {FLAGS.max_shift} pixels")
    print(format_table(summary, tuple(sorted({0, FLAGS.max_shift // 4, FLAGS.max_shift // 2, FLAGS.max_shift}))))
    print(f"summary: {os.path.join(FLAGS.workdir, 'summary.csv')}, summary.json, invariance.png")


if __name__ == "__main__":
    cli.run(main, usage="python -m experiments.invariance --workdir=DIR [--quick] [--seeds=N] [--max_shift=P]")
