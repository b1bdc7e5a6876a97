r"""Ablation sweeps: every variant of a sweep (`cnn_jax.training.sweeps`) over several seeds, then a table and plots.

    python -m experiments.ablate --sweep=pooling --workdir=runs/pooling --quick
    python -m experiments.ablate --sweep=activation --workdir=runs/activation --seeds=5

Each run trains in `WORKDIR/<variant>/seed<k>` (a normal run's outputs). A
finished run is skipped and an interrupted one resumes from its checkpoint,
so running the same command again completes a sweep. With `--vmap` the runs
that differ only in seed and learning rate (a variant's seeds; every run of
the `learning_rate` sweep) train together as one vectorised program
(`cnn_jax.training.vectorized`), which resumes alike. SIGTERM saves a
checkpoint of the runs in progress and exits. The summary goes to `WORKDIR/summary.csv` and
`summary.json` (per variant: test accuracy mean ± std over seeds, final test
loss, parameters, FLOPs, wall time, examples/s, steps to `--target_accuracy`),
`accuracy.png` (test accuracy per variant with ±1 std error bars) and
`curves.png` (mean test accuracy against steps and against training seconds).
"""

import csv
import json
import os
import statistics
import sys

from absl import flags

from cnn_jax.training.config import DTYPES
from experiments import cli

flags.DEFINE_string("sweep", None, "The sweep to run: activation, pooling, batchnorm, kernels, depth_width, "
                    "conv1d (MNIST-1D), learning_rate (cnn_jax/training/sweeps.py).")
flags.DEFINE_string("workdir", None, "Folder for the sweep's runs and summary; the same folder resumes it.")
flags.DEFINE_bool("quick", False, "5 epochs on 6,000 training images (minutes on a CPU), 2 seeds unless --seeds.")
flags.DEFINE_integer("seeds", None, "Seeds per variant (default 3; 2 with --quick).")
flags.DEFINE_bool("vmap", False, "Train runs that differ only in seed and learning rate together, vectorised with "
                  "jax.vmap (cnn_jax.training.vectorized).")
flags.DEFINE_float("target_accuracy", 0.85, "Test accuracy whose first reaching (in steps) the summary reports.")
flags.DEFINE_string("data_dir", None, "Folder with IDX files, or tensorflow-datasets' data_dir.")
flags.DEFINE_enum("dtype", "float32", DTYPES, "What every run computes in (train's --dtype).")
FLAGS = flags.FLAGS

FIELDS = ("variant", "seeds", "test_accuracy_mean", "test_accuracy_std", "test_loss_mean", "params", "flops",
          "wall_seconds_mean", "examples_per_second_mean", "steps_to_target_mean", "reached_target")


def _read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def summarize_variant(label: str, workdirs: list[str], flops: int, target: float) -> tuple[dict, dict]:
    """One row of the summary from the variant's finished runs, and its mean test-accuracy curve."""
    results = []
    for workdir in workdirs:
        with open(os.path.join(workdir, "results.json")) as f:
            results.append(json.load(f))
    metrics = [_read_jsonl(os.path.join(w, "metrics.jsonl")) for w in workdirs]
    timing = [_read_jsonl(os.path.join(w, "timing.jsonl")) for w in workdirs]
    accuracy = [r["test_accuracy"] for r in results]
    reached = [next((m["step"] for m in lines if m["test_accuracy"] >= target), None) for lines in metrics]
    hits = [step for step in reached if step is not None]
    row = {
        "variant": label,
        "seeds": len(results),
        "test_accuracy_mean": statistics.mean(accuracy),
        "test_accuracy_std": statistics.stdev(accuracy) if len(accuracy) > 1 else 0.0,
        "test_loss_mean": statistics.mean(r["test_loss"] for r in results),
        "params": results[0]["params"],
        "flops": flops,
        "wall_seconds_mean": statistics.mean(r["wall_seconds"] for r in results),
        "examples_per_second_mean": statistics.mean(r["train_examples_per_second"] for r in results),
        "steps_to_target_mean": statistics.mean(hits) if hits else None,
        "reached_target": f"{len(hits)}/{len(reached)}",
    }
    curve = {
        "steps": [m["step"] for m in metrics[0]],
        "seconds": [statistics.mean(t[i]["train_seconds"] for t in timing) for i in range(len(timing[0]))],
        "test_accuracy": [statistics.mean(m[i]["test_accuracy"] for m in metrics) for i in range(len(metrics[0]))],
    }
    return row, curve


def run_workdir(root: str, label: str, seed: int) -> str:
    """Where a sweep in `root` trains variant `label` with `seed`."""
    return os.path.join(root, label, f"seed{seed}")


def summarize_sweep(root: str, sweep_name: str, variants, seeds, dataset, target: float) -> list[dict]:
    """The table's rows of a finished sweep in `root` (`variants` as `Sweep.variants` gives them, each trained with
    `seeds` on `dataset`), after writing summary.csv, summary.json, accuracy.png and curves.png into `root`."""
    from cnn_jax import models
    from cnn_jax.analysis import summary
    from cnn_jax.training import loop
    from cnn_jax.training.sweeps import SWEEPS

    rows, curves = [], {}
    for label, config in variants:
        model = models.lookup(loop.with_model(config, dataset).model)(num_classes=dataset.num_classes)
        flops = summary.summarize(model, dataset.image_shape)["total_flops"]
        row, curves[label] = summarize_variant(label, [run_workdir(root, label, seed) for seed in seeds], flops,
                                               target)
        rows.append(row)
    write_summary(root, sweep_name, SWEEPS[sweep_name].claim, rows, curves, target)
    return rows


def write_summary(workdir: str, sweep_name: str, claim: str, rows: list[dict], curves: dict, target: float) -> None:
    """summary.csv, summary.json, accuracy.png and curves.png in `workdir`."""
    from cnn_jax.analysis.inspect.figures import pyplot

    plt = pyplot()

    from cnn_jax.training.writers import write_json_atomically

    with open(os.path.join(workdir, "summary.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    write_json_atomically(os.path.join(workdir, "summary.json"),
                          {"sweep": sweep_name, "claim": claim, "target_accuracy": target, "variants": rows,
                           "curves": curves})

    labels = [row["variant"].split("=", 1)[-1] if "," not in row["variant"] else row["variant"] for row in rows]
    figure, axis = plt.subplots(figsize=(1.2 * len(rows) + 2, 4))
    axis.bar(labels, [row["test_accuracy_mean"] for row in rows], yerr=[row["test_accuracy_std"] for row in rows],
             capsize=4, color="tab:blue")
    low = min(row["test_accuracy_mean"] - row["test_accuracy_std"] for row in rows)
    axis.set_ylim(max(0.0, low - 0.05), 1.0)
    axis.set_ylabel("test accuracy (mean ± std over seeds)")
    axis.set_title(f"sweep '{sweep_name}': {rows[0]['seeds']} seeds per variant")
    figure.tight_layout()
    figure.savefig(os.path.join(workdir, "accuracy.png"), dpi=120)
    plt.close(figure)

    figure, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for label, curve in zip(labels, curves.values()):
        by_step.plot(curve["steps"], curve["test_accuracy"], marker="o", label=label)
        by_time.plot(curve["seconds"], curve["test_accuracy"], marker="o", label=label)
    by_step.set_xlabel("training steps")
    by_time.set_xlabel("training seconds (compilation excluded)")
    by_step.set_ylabel("test accuracy (mean over seeds)")
    by_time.legend(fontsize="small")
    figure.suptitle(f"sweep '{sweep_name}'")
    figure.tight_layout()
    figure.savefig(os.path.join(workdir, "curves.png"), dpi=120)
    plt.close(figure)


def format_table(rows: list[dict]) -> str:
    lines = [f"{'variant':<28} {'test accuracy':>17} {'test loss':>9} {'params':>8} {'MFLOPs':>7} "
             f"{'wall s':>7} {'ex/s':>7} {'steps to target':>15}"]
    for row in rows:
        steps = "-" if row["steps_to_target_mean"] is None else f"{row['steps_to_target_mean']:,.0f}"
        lines.append(f"{row['variant']:<28} {row['test_accuracy_mean']:>9.4f} ± {row['test_accuracy_std']:.4f} "
                     f"{row['test_loss_mean']:>9.4f} {row['params']:>8,} {row['flops'] / 1e6:>7.2f} "
                     f"{row['wall_seconds_mean']:>7.1f} {row['examples_per_second_mean']:>7,.0f} "
                     f"{steps:>10} ({row['reached_target']})")
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    del argv
    from cnn_jax.errors import UserError
    from cnn_jax.training import sweeps
    from cnn_jax.training.sweeps import SWEEPS

    if FLAGS.sweep not in SWEEPS:
        raise UserError(f"--sweep={FLAGS.sweep!r} is not a sweep; choose one of {', '.join(SWEEPS)}")
    if not FLAGS.workdir:
        raise UserError("--workdir is required: the folder for the sweep's runs (the same folder resumes it)")
    seeds = cli.seeds(FLAGS.seeds, FLAGS.quick)
    if not 0 < FLAGS.target_accuracy <= 1:
        raise UserError(f"--target_accuracy={FLAGS.target_accuracy} must be in (0, 1]")
    sweep = SWEEPS[FLAGS.sweep]
    variants = sweep.variants(FLAGS.quick, data_dir=FLAGS.data_dir, dtype=FLAGS.dtype)
    for _, config in variants:
        config.validate()

    from cnn_jax import data
    from cnn_jax.training import loop
    from cnn_jax.training.config import Config

    try:
        with cli.preemption_notice() as stop_requested:
            sweeps.run_all([(Config(**{**config.to_dict(), "seed": seed}), run_workdir(FLAGS.workdir, label, seed))
                            for label, config in variants for seed in seeds], FLAGS.vmap, stop_requested)
    except loop.Preempted as e:
        print(cli.preempted_message(e), file=sys.stderr)
        return
    dataset = data.load_dataset(variants[0][1].dataset, FLAGS.data_dir)
    rows = summarize_sweep(FLAGS.workdir, FLAGS.sweep, variants, seeds, dataset, FLAGS.target_accuracy)
    print(f"sweep '{FLAGS.sweep}': {sweep.claim}")
    print(format_table(rows))
    print(f"summary: {os.path.join(FLAGS.workdir, 'summary.csv')}, summary.json, accuracy.png, curves.png")


if __name__ == "__main__":
    cli.run(main, usage="python -m experiments.ablate --sweep=NAME --workdir=DIR [--quick] [--seeds=N] [--vmap]")
