"""The tensorflow-datasets path, offline: tfds.testing.mock_data stands in for the download."""

import numpy as np
import tensorflow_datasets as tfds

from cnn_jax.data import tfds as tfds_source
from cnn_jax.training import loop
from cnn_jax.training.config import Config


def test_tfds_dataset_arrives_as_uint8_arrays_with_class_names():
    with tfds.testing.mock_data(num_examples=12):
        dataset = tfds_source.load_tfds_dataset("fashion_mnist", None)
    assert dataset.train_images.shape == (12, 28, 28, 1) and dataset.train_images.dtype == np.uint8
    assert dataset.test_images.shape == (12, 28, 28, 1)
    assert dataset.train_labels.dtype == np.int32 and dataset.train_labels.max() < 10
    assert dataset.class_names[0] == "T-shirt/top" and dataset.num_classes == 10
    assert dataset.source.startswith("tensorflow-datasets")


def test_any_tfds_image_dataset_trains_by_name(tmp_path):
    with tfds.testing.mock_data(num_examples=40):
        results = loop.train_and_evaluate(Config(dataset="cifar10", epochs=1, batch_size=20), str(tmp_path))
    assert results["steps"] == 2
    assert results["data_source"].startswith("tensorflow-datasets")
    # The seed network adapted to 32×32×3 inputs: conv1 (5·5·3+1)·16, FC 32·8·8·10 + 10.
    assert results["params"] == 1216 + 32 + 12_832 + 64 + 20_490
