"""The headline experiment end to end, as a user runs it: `python -m experiments.fashion`."""

import io
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from cnn_jax import models
from cnn_jax.analysis.inspect import figures
from cnn_jax.analysis.inspect import filters as inspect_filters
from cnn_jax.training import checkpoint, loop, steps
from cnn_jax.training.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_fashion(*flags):
    return subprocess.run(
        [sys.executable, "-m", "experiments.fashion", *flags], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_a_small_run_writes_every_output(tmp_path, idx_dir):
    workdir = tmp_path / "run"
    result = run_fashion(
        f"--workdir={workdir}", f"--data_dir={idx_dir}", "--epochs=2", "--batch_size=50", "--seed=3", "--log_images"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("test accuracy: ")

    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [6, 12]
    assert [line["epoch"] for line in lines] == [1, 2]
    for line in lines:
        assert set(line) == {
            "step", "epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "learning_rate",
        }
        assert 0 <= line["test_accuracy"] <= 1

    timing = [json.loads(line) for line in (workdir / "timing.jsonl").read_text().splitlines()]
    assert [line["step"] for line in timing] == [6, 12] and all(line["examples_per_second"] > 0 for line in timing)
    assert 0 < timing[0]["train_seconds"] < timing[1]["train_seconds"]

    results = json.loads((workdir / "results.json").read_text())
    for key in ("test_accuracy", "test_loss", "train_seconds", "train_examples_per_second", "steps", "epochs"):
        assert key in results
    assert results["test_accuracy"] == lines[-1]["test_accuracy"]
    assert results["params"] == 29_034 and results["model"] == "convnet" and results["seed"] == 3
    assert results["steps"] == 12 and results["epochs"] == 2
    assert results["config"]["batch_size"] == 50 and results["config"]["data_dir"] == idx_dir

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(workdir))
    events.Reload()
    assert all(e.value > 0 for e in events.Scalars("examples_per_second"))  # Timing: TensorBoard only.
    test_accuracy = events.Scalars("test_accuracy")
    assert [e.step for e in test_accuracy] == [6, 12]
    np.testing.assert_allclose([e.value for e in test_accuracy], [line["test_accuracy"] for line in lines], rtol=1e-6)

    target = steps.create_train_state(models.ConvNet(), Config(), (28, 28, 1))
    restored = checkpoint.restore(str(workdir), target)
    assert int(restored.step) == 12
    assert not all(jax.tree.leaves(jax.tree.map(lambda a, b: bool((a == b).all()), restored.params, target.params)))

    # --log_images: the first layer's filters and the first test image's maps in every layer, at each evaluation.
    assert set(events.Tags()["images"]) == {"filters/ConvBlock_0/Conv_0", *(f"activations/ConvBlock_{i}{part}"
                                            for i in (0, 1) for part in ("/Conv_0", "/BatchNorm_0", ""))}
    filters_logged = events.Images("filters/ConvBlock_0/Conv_0")
    assert [e.step for e in filters_logged] == [6, 12]
    kernel = np.asarray(restored.params["ConvBlock_0"]["Conv_0"]["kernel"])  # 16 of 5×5, in a row 1 pixel apart.
    expected = (figures.tile(inspect_filters.kernel_images(kernel))[..., 0] * 255).round()
    logged = np.asarray(Image.open(io.BytesIO(filters_logged[-1].encoded_image_string)))
    assert logged.shape == (5, 16 * 6 - 1)
    np.testing.assert_array_equal(logged, expected)
    assert events.Images("activations/ConvBlock_1")[-1].width == 16 * 8 - 1  # 32 maps of 7×7, 16 to a row.


def test_the_network_learns_the_synthetic_task(tmp_path, idx_dir):
    results = loop.train_and_evaluate(Config(data_dir=idx_dir, epochs=8, batch_size=25), str(tmp_path / "run"))
    assert results["test_accuracy"] > 0.9


def test_max_steps_stops_mid_epoch_and_still_evaluates(tmp_path, idx_dir):
    results = loop.train_and_evaluate(Config(data_dir=idx_dir, epochs=5, batch_size=50, max_steps=8), str(tmp_path))
    assert results["steps"] == 8 and results["epochs"] == pytest.approx(8 / 6, abs=1e-4)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize(  # Each a command (3 s): the everyday suite keeps a bad value, a malformed flag, a bad path.
    "flag, message",
    [
        ("--batch_size=0", "error: --batch_size must be a positive integer, got 0"),
        pytest.param("--learning_rate=-0.1", "error: --learning_rate must be > 0, got -0.1", marks=pytest.mark.slow),
        pytest.param("--epochs=-2", "error: --epochs must be a positive integer, got -2", marks=pytest.mark.slow),
        pytest.param("--model=resnet9000", "error: unknown model 'resnet9000'", marks=pytest.mark.slow),
        pytest.param("--dataset=no_such_dataset", "error: unknown dataset 'no_such_dataset'", marks=pytest.mark.slow),
        ("--batch_size=ten", "error: flag --batch_size=ten: invalid literal for int() with base 10: 'ten'"),
        pytest.param("--model=8xc8k5p0", "error: layer 7 'c8k5p0' on its 4×4 input: kernel spans 5 pixels",
                     marks=pytest.mark.slow),  # Found when built.
        ("--init_from=/nonexistent", "error: --init_from=/nonexistent holds no checkpoint"),
        pytest.param("--dtype=float16", "error: flag --dtype=float16: value should be one of <float32|bfloat16>",
                     marks=pytest.mark.slow),
    ],
)
def test_bad_flags_give_one_line_and_write_nothing(tmp_path, idx_dir, flag, message):
    workdir = tmp_path / "run"
    result = run_fashion(f"--workdir={workdir}", f"--data_dir={idx_dir}", flag)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith(message), result.stderr
    assert not workdir.exists()


def test_bad_data_gives_one_line_and_writes_nothing(tmp_path, idx_dir):
    images = os.path.join(idx_dir, "train-images-idx3-ubyte.gz")
    with open(images, "rb") as f:
        raw = f.read()
    with open(images, "wb") as f:
        f.write(raw[: len(raw) // 2])
    workdir = tmp_path / "run"
    result = run_fashion(f"--workdir={workdir}", f"--data_dir={idx_dir}")
    assert result.returncode != 0
    assert result.stderr.strip() == f"error: {images}: corrupt or truncated gzip data (Compressed file ended before the end-of-stream marker was reached); download it again"
    assert not workdir.exists()
