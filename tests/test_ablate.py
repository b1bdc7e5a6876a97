"""Ablation sweeps: the built-in sweeps' variants, the sweep command end to end, resuming it, and vmapped seeds."""

import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import models, sweeps, train, vectorized
from cnn_jax.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", sorted(sweeps.SWEEPS))
def test_every_variant_of_every_built_in_sweep_is_a_valid_runnable_config(name):
    variants = sweeps.SWEEPS[name].variants(quick=True)
    assert len(variants) >= 2 and len({label for label, _ in variants}) == len(variants)
    for label, config in variants:
        assert label.startswith(f"{name}=")
        config.validate()
        assert config.epochs == sweeps.QUICK["epochs"] and config.max_train_examples == sweeps.QUICK["max_train_examples"]
        model = models.lookup(config.model)(num_classes=10)
        out = jax.eval_shape(lambda m=model: m.init_with_output(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))[0])
        assert out.shape == (1, 10)


def test_a_sweep_is_data_every_combination_of_its_axes():
    sweep = sweeps.Sweep("claim", {"a": {"x": {"learning_rate": 0.1}, "y": {"learning_rate": 0.2}},
                                   "b": {"p": {"model": "c4-max"}, "q": {"model": "c8-max"}}}, base={"epochs": 2})
    variants = sweep.variants(batch_size=10)
    assert [label for label, _ in variants] == ["a=x,b=p", "a=x,b=q", "a=y,b=p", "a=y,b=q"]
    assert variants[3][1] == Config(epochs=2, batch_size=10, learning_rate=0.2, model="c8-max")


def ablate(workdir, data_dir, *flags):
    return subprocess.run([sys.executable, "-m", "experiments.ablate", "--sweep=batchnorm", f"--workdir={workdir}",
                           f"--data_dir={data_dir}", "--quick", *flags], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_sweep_writes_its_table_and_plots_skips_finished_runs_and_resumes_interrupted_ones(tmp_path, idx_dir):
    result = ablate(tmp_path, idx_dir)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = summary["variants"]
    assert [row["variant"] for row in rows] == ["batchnorm=on", "batchnorm=off"] and summary["claim"]
    for row in rows:
        assert row["seeds"] == 2 and 0 <= row["test_accuracy_mean"] <= 1 and row["test_accuracy_std"] >= 0
        assert row["flops"] == 5_676_160 and row["examples_per_second_mean"] > 0
    assert [row["params"] for row in rows] == [29_034, 28_938]
    accuracies = [json.loads((tmp_path / "batchnorm=on" / f"seed{k}" / "results.json").read_text())["test_accuracy"]
                  for k in (0, 1)]
    assert rows[0]["test_accuracy_mean"] == pytest.approx(np.mean(accuracies))
    assert rows[0]["test_accuracy_std"] == pytest.approx(np.std(accuracies, ddof=1))
    assert (tmp_path / "summary.csv").read_text().splitlines()[0].startswith("variant,seeds,test_accuracy_mean")
    for png in ("accuracy.png", "curves.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "batchnorm=on" in result.stdout and "± " in result.stdout

    finished = tmp_path / "batchnorm=on" / "seed0"
    interrupted = tmp_path / "batchnorm=off" / "seed1"
    metrics = (interrupted / "metrics.jsonl").read_text()
    stamp = os.path.getmtime(finished / "results.json")
    (interrupted / "results.json").unlink()  # As if killed after its epoch-4 checkpoint.
    shutil.rmtree(interrupted / "checkpoints" / str(max(int(n) for n in os.listdir(interrupted / "checkpoints"))))
    result = ablate(tmp_path, idx_dir)
    assert result.returncode == 0, result.stderr
    assert "resuming at step" in result.stdout and result.stdout.count("resuming at step") == 1
    assert os.path.getmtime(finished / "results.json") == stamp
    assert (interrupted / "metrics.jsonl").read_text() == metrics
    timed = ("wall_seconds_mean", "examples_per_second_mean")
    untimed = [[{k: v for k, v in row.items() if k not in timed} for row in rows_]
               for rows_ in (json.loads((tmp_path / "summary.json").read_text())["variants"], rows)]
    assert untimed[0] == untimed[1]


@pytest.mark.parametrize("flags, message", [(("--sweep=nope",), "--sweep='nope' is not a sweep; choose one of"),
                                            (("--sweep=pooling",), "--workdir is required")])
def test_bad_sweep_flags_give_one_line(flags, message):
    result = subprocess.run([sys.executable, "-m", "experiments.ablate", *flags], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith(f"error: {message}") and result.stderr.count("\n") == 1


def test_vmapped_seeds_train_as_the_runs_one_by_one(tmp_path, idx_dir):
    config = Config(data_dir=idx_dir, epochs=2, batch_size=50, eval_batch_size=100)
    together = vectorized.train_seeds(config, [3, 4], [str(tmp_path / "v3"), str(tmp_path / "v4")])
    for seed, result in zip((3, 4), together):
        alone = train.train_and_evaluate(Config(**{**config.to_dict(), "seed": seed}), str(tmp_path / f"s{seed}"))
        assert result["seed"] == seed and result["vectorized_seeds"] == 2 and result["steps"] == alone["steps"]
        for key in ("test_accuracy", "test_loss", "train_loss", "train_accuracy"):
            assert result[key] == pytest.approx(alone[key], rel=1e-4), key
        lines = [(tmp_path / f"{kind}{seed}" / "metrics.jsonl").read_text().splitlines() for kind in "vs"]
        assert [json.loads(line)["step"] for line in lines[0]] == [json.loads(line)["step"] for line in lines[1]]


def test_sweep_with_vmap_trains_each_variants_seeds_together(tmp_path, idx_dir):
    result = ablate(tmp_path, idx_dir, "--vmap")
    assert result.returncode == 0, result.stderr
    for variant in ("batchnorm=on", "batchnorm=off"):
        for seed in (0, 1):
            results = json.loads((tmp_path / variant / f"seed{seed}" / "results.json").read_text())
            assert results["vectorized_seeds"] == 2 and results["seed"] == seed
    assert len(json.loads((tmp_path / "summary.json").read_text())["variants"]) == 2
