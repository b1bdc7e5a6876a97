"""The tensorflow-datasets path without a network: a local proxy serves TFDS's download step, and a proxy that is
not there stands for a machine offline. `tfds.testing.mock_data` stands in for whole datasets where only the
arrays matter."""

import http.server
import io
import threading

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download import downloader

from cnn_jax import data
from cnn_jax.data import tfds as tfds_source
from cnn_jax.training import loop
from cnn_jax.training.config import Config

TINY_IMAGES_URL = "http://cnn-jax.invalid/tiny_images.npz"  # Reserved top-level domain: it never resolves.


class CnnJaxTinyImages(tfds.core.GeneratorBasedBuilder):
    """A 4×4 greyscale dataset of two classes (dark, bright), downloaded from a URL that only the test's proxy
    serves: TFDS's real download, checksum, preparation and reading, on a file made here."""

    VERSION = tfds.core.Version("1.0.0")
    URL = TINY_IMAGES_URL

    def _info(self):
        features = tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(4, 4, 1)),
                                               "label": tfds.features.ClassLabel(names=["dark", "bright"])})
        return tfds.core.DatasetInfo(builder=self, features=features, supervised_keys=("image", "label"))

    def _split_generators(self, dl_manager):
        path = dl_manager.download(self.URL)
        return {"train": self._generate_examples(path, "train"), "test": self._generate_examples(path, "test")}

    def _generate_examples(self, path, split):
        with np.load(path) as arrays:
            for i, (image, label) in enumerate(zip(arrays[f"{split}_images"], arrays[f"{split}_labels"])):
                yield i, {"image": image, "label": label}


def tiny_images_file() -> bytes:
    """The downloaded file: 12 train and 6 test images, class 1 bright, as an .npz."""
    labels = {"train": np.arange(12) % 2, "test": np.arange(6) % 2}
    arrays = {f"{split}_labels": y for split, y in labels.items()}
    for split, y in labels.items():
        shade = 40 + 200 * y[:, None, None, None]
        arrays[f"{split}_images"] = np.broadcast_to(shade, (len(y), 4, 4, 1)).astype(np.uint8)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


@pytest.fixture
def local_proxy(monkeypatch):
    """An HTTP proxy on localhost that serves `tiny_images_file()` for TINY_IMAGES_URL and 404 for anything else;
    it records the URLs asked for."""
    body, requested = tiny_images_file(), []

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            requested.append(self.path)
            found = self.path == TINY_IMAGES_URL
            self.send_response(200 if found else 404)
            self.send_header("Content-Length", str(len(body) if found else 0))
            self.end_headers()
            if found:
                self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.delenv("no_proxy", raising=False)
    yield requested
    server.shutdown()


def test_a_dataset_is_downloaded_prepared_and_read_through_tfds(local_proxy, tmp_path):
    dataset = data.load_dataset("cnn_jax_tiny_images", str(tmp_path))
    assert local_proxy == [TINY_IMAGES_URL]
    assert dataset.train_images.shape == (12, 4, 4, 1) and dataset.test_images.shape == (6, 4, 4, 1)
    assert dataset.class_names == ("dark", "bright")
    assert dataset.source == f"tensorflow-datasets ({tmp_path}/cnn_jax_tiny_images/1.0.0)"
    np.testing.assert_array_equal(dataset.train_images[:, 0, 0, 0], np.where(dataset.train_labels == 1, 240, 40))
    assert (tmp_path / "cnn_jax_tiny_images" / "1.0.0" / "dataset_info.json").exists()
    again = data.load_dataset("cnn_jax_tiny_images", str(tmp_path))  # Prepared: read without a download.
    assert local_proxy == [TINY_IMAGES_URL] and np.array_equal(again.test_labels, dataset.test_labels)


def test_a_failed_download_says_so_and_lists_the_ways_to_get_the_data_offline(local_proxy, tmp_path, monkeypatch):
    monkeypatch.setattr(CnnJaxTinyImages, "URL", "http://cnn-jax.invalid/missing.npz")  # The proxy answers 404.
    with pytest.raises(tfds_source.DownloadFailed) as error:
        data.load_dataset("cnn_jax_tiny_images", str(tmp_path))
    message = str(error.value)
    assert message.startswith("downloading 'cnn_jax_tiny_images' through tensorflow-datasets failed (Failed to get "
                              "url http://cnn-jax.invalid/missing.npz. HTTP code: 404.)")
    assert "to get it without a network: prepare it where there is internet" in message and "\n" not in message
    assert message.endswith("copy ~/tensorflow_datasets/cnn_jax_tiny_images into `data_dir`")


def test_offline_cifar10_says_the_download_failed_and_asks_to_install_nothing(tmp_path, monkeypatch):
    """The real cifar10 builder, with its download going to a proxy where nothing listens (no retries)."""
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")  # The discard port: connection refused.
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setattr(downloader, "MAX_RETRIES", 0)  # TFDS retries 10 times over about 3 minutes.
    with pytest.raises(tfds_source.DownloadFailed) as error:
        data.load_dataset("cifar10", str(tmp_path))
    message = str(error.value)
    assert message.startswith("downloading 'cifar10' through tensorflow-datasets failed (")
    assert "to get it without a network" in message and "pip install" not in message


def test_a_module_tfds_needs_is_named_with_its_install_command(tmp_path, monkeypatch):
    def prepare_without_a_module(self, *args, **kwargs):
        raise ModuleNotFoundError("No module named 'importlib_resources'", name="importlib_resources")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", prepare_without_a_module)
    with pytest.raises(data.DataError, match="preparing 'cifar10' with tensorflow-datasets needs the Python module "
                                             "'importlib_resources', which is not installed: pip install "
                                             "importlib_resources$"):
        data.load_dataset("cifar10", str(tmp_path))


@pytest.mark.slow  # the everyday suite reads a dataset TFDS downloaded
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


def test_splits_default_to_test_then_validation_then_a_held_out_slice_of_train():
    splits = tfds_source._tfds_splits
    assert splits("d", {"train": 1, "test": 1, "validation": 1}, "", "") == ("train", "test")
    assert splits("d", {"train": 1, "validation": 1}, "", "") == ("train", "validation")
    assert splits("cats_vs_dogs", {"train": 1}, "", "") == ("train[:80%]", "train[80%:]")
    assert splits("d", {"train": 1}, "train[:50%]", "") == ("train[:50%]", "train[80%:]")
    assert splits("d", {"train": 1, "test": 1}, "", "train[:10%]") == ("train", "train[:10%]")
    with pytest.raises(data.DataError, match="dataset 'd' has no 'train' split .it has eval.; choose one with "
                                             "`train_split`"):
        splits("d", {"eval": 1}, "", "")


@pytest.mark.slow  # Trains through a mocked data source; the split defaults are tested above.
def test_a_tfds_dataset_of_images_of_any_size_streams_with_split_slicing(tmp_path):
    """cats_vs_dogs's images differ in size: read through a data source (mocked), image by image."""
    config = Config(dataset="cats_vs_dogs", image_size="16", train_split="train[:80%]", eval_split="train[80%:]",
                    batch_size=8, eval_batch_size=8, epochs=1)
    with tfds.testing.mock_data(num_examples=24):
        dataset = loop.plan(config)[1]
        assert not dataset.in_memory and dataset.train_images.shape == (24, None, None, 3)
        results = loop.train_and_evaluate(config, str(tmp_path))
    assert results["classes"] == ["cat", "dog"] and results["steps"] == 3 and results["image_shape"] == [16, 16, 3]
    assert results["data_source"].endswith(", trained on train[:80%], evaluated on train[80%:])")


@pytest.mark.slow  # Trains through mocked data (imports TensorFlow: 10 s); loading texts is tested in test_text.py.
def test_a_tfds_text_dataset_trains_textcnn_by_default(tmp_path):
    """imdb_reviews's builder, its reviews made up by mock_data: text through the vocabulary into textcnn."""
    config = Config(dataset="imdb_reviews", max_length=12, min_count=1, batch_size=6, eval_batch_size=6, epochs=1)
    with tfds.testing.mock_data(num_examples=12):
        results = loop.train_and_evaluate(config, str(tmp_path))
    assert results["model"] == "textcnn" and results["classes"] == ["neg", "pos"] and results["steps"] == 2
    assert results["image_shape"] == [12] and (tmp_path / "vocabulary.txt").read_text().startswith("<pad>\n<unk>\n")


def test_offline_imdb_reviews_lists_the_ways_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setattr(downloader, "MAX_RETRIES", 0)
    with pytest.raises(tfds_source.DownloadFailed) as error:
        loop.plan(Config(dataset="imdb_reviews", data_dir=str(tmp_path)))
    message = str(error.value)
    assert message.startswith("downloading 'imdb_reviews' through tensorflow-datasets failed (")
    assert "copy ~/tensorflow_datasets/imdb_reviews into `data_dir`" in message and "\n" not in message
