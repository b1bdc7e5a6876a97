"""Translation invariance, measured: shifting images, a network's response to shifts, and the command."""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import normal

from cnn_jax.analysis import invariance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_shift_moves_the_image_and_fills_the_border_with_zeros_or_wraps_it():
    image = np.arange(1, 17, dtype=np.uint8).reshape(1, 4, 4, 1)
    right = invariance.shift(image, 1, invariance.RIGHT)[0, ..., 0]
    np.testing.assert_array_equal(right, [[0, 1, 2, 3], [0, 5, 6, 7], [0, 9, 10, 11], [0, 13, 14, 15]])
    up = invariance.shift(image, 2, invariance.UP)[0, ..., 0]
    np.testing.assert_array_equal(up, [[9, 10, 11, 12], [13, 14, 15, 16], [0, 0, 0, 0], [0, 0, 0, 0]])
    wrapped = invariance.shift(image, 1, invariance.LEFT, circular=True)[0, ..., 0]
    np.testing.assert_array_equal(wrapped[:, -1], [1, 5, 9, 13])
    assert invariance.shift(image, 0, invariance.DOWN) is not image  # A copy, even unmoved.


class CircularConvThenMean(nn.Module):
    """A convolution with circular padding, then the mean over positions: exactly invariant to circular shifts."""

    @nn.compact
    def __call__(self, x):
        return nn.Conv(5, (3, 3), padding="CIRCULAR")(x).mean(axis=(1, 2))


def test_a_network_exactly_invariant_to_circular_shifts_answers_every_shift_alike():
    model, images = CircularConvThenMean(), normal(0, (40, 12, 12, 2))
    variables = model.init(jax.random.key(0), images[:1])
    logits_fn = jax.jit(lambda x: model.apply(variables, x))
    labels = np.asarray(logits_fn(images)).argmax(-1)
    response = invariance.shift_response(logits_fn, np.asarray(images), labels, range(6), circular=True)
    assert response["shift"] == list(range(6)) and response["accuracy"] == [1.0] * 6
    np.testing.assert_allclose(response["logit_change"], 0, atol=1e-5)
    zero_filled = invariance.shift_response(logits_fn, np.asarray(images), labels, [0, 3])  # Borders now differ.
    assert zero_filled["logit_change"][0] == 0 and zero_filled["logit_change"][1] > 1e-3


def test_a_trained_run_is_measured_on_its_shifted_test_images(tiny_run):
    measured = invariance.run_response(tiny_run, 2)
    assert measured["shift"] == [0, 1, 2] and len(measured["accuracy"]) == 3
    assert measured["logit_change"][0] == 0 < measured["logit_change"][2]
    assert measured["gap"] == pytest.approx(measured["train_accuracy"] - measured["accuracy"][0])
    assert measured["spec"] == "convnet" and measured["params"] == 29_034
    entry = invariance.over_seeds({"max_pool": [measured, measured]})["models"]["max_pool"]
    assert entry["accuracy"] == measured["accuracy"] and entry["accuracy_std"] == [0.0] * 3 and entry["seeds"] == 2


@pytest.mark.slow  # Trains five networks (synthetic data), then starts the command again to find them finished.
def test_the_command_trains_measures_and_writes_its_table_and_plot(tmp_path, idx_dir):
    args = [sys.executable, "-m", "experiments.invariance", f"--workdir={tmp_path}", "--quick", "--seeds=1",
            f"--data_dir={idx_dir}", "--max_shift=2"]
    result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "max_pool" in result.stdout and "mlp" in result.stdout and "train-test gap" in result.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert list(summary["models"]) == ["max_pool", "avg_pool", "strided", "global_avg", "mlp"]
    assert summary["models"]["mlp"]["params"] == 28_630 and summary["models"]["max_pool"]["params"] == 29_034
    rows = (tmp_path / "summary.csv").read_text().splitlines()
    assert rows[0].startswith("model,shift,accuracy_mean") and len(rows) == 1 + 5 * 3
    assert (tmp_path / "invariance.png").stat().st_size > 10_000
