"""Shared test fixtures: small synthetic IDX datasets written to a temporary folder."""

import os

import numpy as np
import pytest

from cnn_jax import data


def write_idx_dataset(directory, num_train=300, num_test=200, gz=True, seed=0):
    """Writes a learnable MNIST-format dataset: class k is a bright bar across row 2 + 2k, on noise.

    The bars are centred, so the classes survive left-right mirroring.
    """
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    for split, count in (("train", num_train), ("t10k", num_test)):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        images = rng.integers(0, 60, (count, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 + 2 * label : 4 + 2 * label, 6:22] = 255
        data.write_idx(os.path.join(directory, f"{split}-images-idx3-ubyte{suffix}"), images)
        data.write_idx(os.path.join(directory, f"{split}-labels-idx1-ubyte{suffix}"), labels)
    return directory


@pytest.fixture
def make_idx_dataset():
    """The function write_idx_dataset(directory, num_train, num_test, gz, seed)."""
    return write_idx_dataset


@pytest.fixture
def idx_dir(tmp_path):
    """A folder holding a small learnable Fashion-MNIST-format dataset (300 train, 200 test)."""
    directory = tmp_path / "idx"
    directory.mkdir()
    return write_idx_dataset(str(directory))
