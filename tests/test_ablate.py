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
from conftest import example_model

from cnn_jax import data, models
from cnn_jax.training import loop, sweeps, vectorized
from cnn_jax.training.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("name", sorted(sweeps.SWEEPS))
def test_every_variant_of_every_built_in_sweep_is_a_valid_runnable_config(name):
    variants = sweeps.SWEEPS[name].variants(quick=True)
    assert len(variants) >= 2 and len({label for label, _ in variants}) == len(variants)
    for label, config in variants:
        assert label.startswith(f"{name}=")
        config.validate()
        assert config.epochs == sweeps.QUICK["epochs"] and config.max_train_examples == sweeps.QUICK["max_train_examples"]
        model, shape = example_model(config.model or models.DEFAULT_MODELS[data.IMAGES])
        example = models.input_spec(model, shape)
        out = jax.eval_shape(lambda m=model: m.init_with_output(jax.random.key(0), jnp.zeros(example.shape))[0])
        assert out.shape == (1, 10)


def test_a_sweep_is_data_every_combination_of_its_axes():
    sweep = sweeps.Sweep("claim", {"a": {"x": {"learning_rate": 0.1}, "y": {"learning_rate": 0.2}},
                                   "b": {"p": {"model": "c4-max"}, "q": {"model": "c8-max"}}}, base={"epochs": 2})
    variants = sweep.variants(batch_size=10)
    assert [label for label, _ in variants] == ["a=x,b=p", "a=x,b=q", "a=y,b=p", "a=y,b=q"]
    assert variants[3][1] == Config(epochs=2, batch_size=10, learning_rate=0.2, model="c8-max")


def ablate(workdir, data_dir, *flags, sweep="batchnorm"):
    return subprocess.run([sys.executable, "-m", "experiments.ablate", f"--sweep={sweep}", f"--workdir={workdir}",
                           f"--data_dir={data_dir}", "--quick", *flags], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
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


@pytest.mark.slow
def test_runs_vmapped_over_seeds_and_learning_rates_train_as_the_runs_one_by_one(tmp_path, idx_dir):
    base = Config(data_dir=idx_dir, epochs=2, batch_size=50, eval_batch_size=100)
    configs = [Config(**{**base.to_dict(), "seed": seed, "learning_rate": rate})
               for seed, rate in ((3, 1e-3), (4, 1e-3), (3, 3e-3))]
    workdirs = [str(tmp_path / f"v{k}") for k in range(3)]
    together = vectorized.train_group(configs, workdirs)
    for k, (config, result) in enumerate(zip(configs, together, strict=True)):
        alone = loop.train_and_evaluate(config, str(tmp_path / f"s{k}"))
        assert result["vectorized_runs"] == 3 and result["config"] == alone["config"]
        assert result["steps"] == alone["steps"]
        # Measured: train loss within 5e-8, test loss within 1.5e-3 (relative), test accuracy within 2 of the 200
        # test images. The test set differs more because of the convolution biases before BatchNorm: in exact
        # arithmetic their gradient is 0, so it is rounding noise, which Adam scales into full steps. In training
        # BatchNorm cancels them; evaluation subtracts a running mean that lags them, so the noise shows there.
        for key in ("train_loss", "train_accuracy"):
            assert result[key] == pytest.approx(alone[key], rel=1e-3), key
        assert result["test_loss"] == pytest.approx(alone["test_loss"], rel=5e-3)
        assert result["test_accuracy"] == pytest.approx(alone["test_accuracy"], abs=0.01 + 1e-9)
        lines = [[json.loads(line) for line in (tmp_path / f"{kind}{k}" / "metrics.jsonl").read_text().splitlines()]
                 for kind in "vs"]
        assert [line["step"] for line in lines[0]] == [line["step"] for line in lines[1]]
        assert [line["learning_rate"] for line in lines[0]] == pytest.approx([line["learning_rate"] for line in lines[1]])


def stop_after(steps):
    """A `stop_requested` that asks to stop once `steps` steps are done (it is asked after each)."""
    asked = iter(range(1, 10**6))
    return lambda: next(asked) >= steps


@pytest.mark.parametrize("vmapped, eval_every, evaluations, dtype", [
    (False, 0, 2, "float32"), pytest.param(True, 0, 2, "float32", marks=pytest.mark.slow),
    pytest.param(False, 5, 3, "float32", marks=pytest.mark.slow), pytest.param(False, 0, 2, "bfloat16",
                                                                              marks=pytest.mark.slow)],
                         ids=["one run", "vmapped group", "evaluating every 5 steps", "bfloat16"])
def test_a_stopped_run_or_group_resumes_mid_epoch_to_the_uninterrupted_end(tmp_path, idx_dir, capsys, vmapped,
                                                                           eval_every, evaluations, dtype):
    configs = [Config(data_dir=idx_dir, epochs=2, batch_size=50, eval_batch_size=100, seed=seed, learning_rate=rate,
                      eval_every=eval_every, dtype=dtype)
               for seed, rate in ((3, 1e-3), (4, 3e-3))][: 2 if vmapped else 1]

    def train(name, stop_requested=None):
        workdirs = [str(tmp_path / name / f"run{k}") for k in range(len(configs))]
        if vmapped:
            return vectorized.train_group(configs, workdirs, checkpoint_every=2, stop_requested=stop_requested)
        return [loop.train_and_evaluate(configs[0], workdirs[0], checkpoint_every=2, stop_requested=stop_requested)]

    uninterrupted = train("uninterrupted")
    with pytest.raises(loop.Preempted, match="stopped at step 4"):  # 6 steps an epoch: inside the first.
        train("resumed", stop_after(4))
    capsys.readouterr()
    resumed = train("resumed")
    assert "resuming at step 4" in capsys.readouterr().out
    for k, (one, other) in enumerate(zip(uninterrupted, resumed, strict=True)):
        assert {**one, **TIMES} == {**other, **TIMES}
        metrics = [(tmp_path / name / f"run{k}" / "metrics.jsonl").read_text() for name in ("uninterrupted", "resumed")]
        assert metrics[0] == metrics[1] and len(metrics[0].splitlines()) == evaluations
    if eval_every:  # Steps 5 and 10, then the run's end at 12; the first period spans the epoch's end at 6.
        assert [json.loads(line)["step"] for line in metrics[0].splitlines()] == [5, 10, 12]


TIMES = dict.fromkeys(("train_seconds", "train_examples_per_second", "compile_seconds", "wall_seconds"))


def test_runs_that_differ_in_more_than_seed_and_rate_are_not_grouped(tmp_path):
    configs = [Config(model="convnet"), Config(model="lenet5")]
    assert vectorized.group_key(configs[0]) != vectorized.group_key(configs[1])
    with pytest.raises(ValueError, match="differ in more than their seeds and learning rates"):
        vectorized.train_group(configs, [str(tmp_path / "a"), str(tmp_path / "b")])


@pytest.mark.slow
def test_sweep_with_vmap_trains_its_learning_rates_together(tmp_path, idx_dir):
    result = ablate(tmp_path, idx_dir, "--vmap", "--seeds=1", sweep="learning_rate")  # 1 seed: a 5-run group.
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "summary.json").read_text())["variants"]
    assert [row["variant"] for row in rows] == [f"learning_rate={rate}" for rate in ("0.0001", "0.0003", "0.001",
                                                                                     "0.003", "0.01")]
    for row in rows:
        results = json.loads((tmp_path / row["variant"] / "seed0" / "results.json").read_text())
        assert results["vectorized_runs"] == 5 and results["seed"] == 0
