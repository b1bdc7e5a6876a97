import gzip
import os

import numpy as np
import pytest

from cnn_jax import data
from cnn_jax.data import sources
from cnn_jax.errors import UserError


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, suffix, dtype):
    array = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4).astype(dtype)
    path = str(tmp_path / f"a.idx{suffix}")
    data.write_idx(path, array)
    result = data.read_idx(path)
    assert result.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(result, array)


def test_idx_header_is_the_documented_format(tmp_path):
    path = str(tmp_path / "labels")
    data.write_idx(path, np.array([3, 1, 4], np.uint8))
    assert open(path, "rb").read() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 3, 1, 4])


def _write(tmp_path, raw, name="bad-idx"):
    path = str(tmp_path / name)
    with open(path, "wb") as f:
        f.write(raw)
    return path


GOOD_HEADER = bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3])  # uint8, shape (2, 3)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"\x00\x00", "too short for an IDX header"),
        (bytes([1, 2, 8, 1, 0, 0, 0, 1, 7]), "not an IDX file: magic number 0x01020801"),
        (bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 7]), "not an IDX file: magic number 0x00004201"),
        (bytes([0, 0, 8, 0]), "not an IDX file: magic number 0x00000800"),
        (bytes([0, 0, 8, 3, 0, 0, 0, 2]), "truncated header: 3 dimensions need 16 bytes, file has 8"),
        (GOOD_HEADER + bytes(5), "truncated: header says shape (2, 3) (6 bytes of data), file holds 5"),
        (GOOD_HEADER + bytes(8), "2 unexpected bytes after the (2, 3) array"),
        (gzip.compress(GOOD_HEADER + bytes(6), mtime=0)[:-6], "corrupt or truncated gzip data"),  # mtime=0: the
        # same bytes in every xdist worker, which must collect the same test ids.
    ],
)
def test_bad_idx_files_name_the_file_and_the_fault(tmp_path, raw, message):
    path = _write(tmp_path, raw)
    with pytest.raises(data.DataError) as error:
        data.read_idx(path)
    assert str(error.value).startswith(path + ": ")
    assert message in str(error.value)


def test_missing_idx_file_is_a_data_error(tmp_path):
    with pytest.raises(data.DataError, match="cannot read"):
        data.read_idx(str(tmp_path / "nope"))


def test_data_errors_are_user_errors():
    assert issubclass(data.DataError, UserError)


@pytest.mark.parametrize("gz", [True, False])
def test_load_dataset_reads_idx_files_from_data_dir(tmp_path, make_idx_dataset, gz):
    make_idx_dataset(str(tmp_path), num_train=30, num_test=20, gz=gz)
    dataset = data.load_dataset("fashion_mnist", str(tmp_path))
    assert dataset.train_images.shape == (30, 28, 28, 1) and dataset.train_images.dtype == np.uint8
    assert dataset.test_images.shape == (20, 28, 28, 1)
    assert dataset.train_labels.dtype == np.int32 and dataset.train_labels.shape == (30,)
    assert dataset.num_classes == 10 and dataset.class_names[9] == "Ankle boot"
    assert dataset.source == f"IDX files in {tmp_path}"


def test_load_dataset_also_looks_in_a_subfolder_named_after_the_dataset(tmp_path, make_idx_dataset):
    os.makedirs(tmp_path / "mnist")
    make_idx_dataset(str(tmp_path / "mnist"), num_train=10, num_test=10)
    assert data.load_dataset("mnist", str(tmp_path)).class_names[3] == "3"


def test_partial_idx_folder_names_the_missing_files(tmp_path, make_idx_dataset):
    make_idx_dataset(str(tmp_path), num_train=10, num_test=10)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(data.DataError, match=r"has some IDX files but not t10k-labels-idx1-ubyte\[\.gz\]"):
        data.load_dataset("fashion_mnist", str(tmp_path))


def test_image_and_label_counts_must_match(tmp_path, make_idx_dataset):
    make_idx_dataset(str(tmp_path), num_train=10, num_test=10)
    data.write_idx(str(tmp_path / "train-labels-idx1-ubyte.gz"), np.zeros(9, np.uint8))
    with pytest.raises(data.DataError, match="holds 10 images but .* holds 9 labels"):
        data.load_dataset("fashion_mnist", str(tmp_path))


def test_labels_must_name_a_class(tmp_path, make_idx_dataset):
    make_idx_dataset(str(tmp_path), num_train=10, num_test=10)
    data.write_idx(str(tmp_path / "t10k-labels-idx1-ubyte.gz"), np.full(10, 10, np.uint8))
    with pytest.raises(data.DataError, match=r"labels must lie in \[0, 10\), found 10..10"):
        data.load_dataset("fashion_mnist", str(tmp_path))


def test_images_must_be_three_dimensional(tmp_path, make_idx_dataset):
    make_idx_dataset(str(tmp_path), num_train=10, num_test=10)
    data.write_idx(str(tmp_path / "train-images-idx3-ubyte.gz"), np.zeros((10, 784), np.uint8))
    with pytest.raises(data.DataError, match=r"expected uint8 images \[count, height, width\], got uint8 \(10, 784\)"):
        data.load_dataset("fashion_mnist", str(tmp_path))


def test_data_dir_must_exist(tmp_path):
    with pytest.raises(data.DataError, match="is not a directory"):
        data.load_dataset("fashion_mnist", str(tmp_path / "nope"))


def test_without_any_source_the_error_lists_the_ways_to_get_the_data(tmp_path, monkeypatch):
    import tensorflow_datasets as tfds

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'storage.googleapis.com'")

    monkeypatch.setattr(sources, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "absent"))
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(data.DataError) as error:
        data.load_dataset("fashion_mnist", str(tmp_path))
    message = str(error.value)
    assert "\n" not in message
    assert "Failed to resolve" in message
    assert "put the four IDX files" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert message.startswith("downloading 'fashion_mnist' through tensorflow-datasets failed")
    assert "copy ~/tensorflow_datasets/fashion_mnist into `data_dir`" in message


def test_unknown_dataset_is_named(tmp_path):
    with pytest.raises(data.DataError, match="unknown dataset 'no_such_dataset'"):
        data.load_dataset("no_such_dataset", str(tmp_path))


def test_debian_package_provides_the_real_fashion_mnist():
    assert os.path.isdir(sources.DEBIAN_FASHION_MNIST_DIR), "apt-get install dataset-fashion-mnist (setup.sh does)"
    dataset = data.load_dataset("fashion_mnist")
    assert dataset.train_images.shape == (60000, 28, 28, 1)
    assert dataset.test_images.shape == (10000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(dataset.train_labels), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(dataset.test_labels), [1000] * 10)


def test_epoch_permutation_is_a_pure_function_of_seed_and_epoch():
    a = data.epoch_permutation(0, 3, 100)
    np.testing.assert_array_equal(a, data.epoch_permutation(0, 3, 100))
    np.testing.assert_array_equal(np.sort(a), np.arange(100))
    assert not np.array_equal(a, data.epoch_permutation(0, 4, 100))
    assert not np.array_equal(a, data.epoch_permutation(1, 3, 100))


def test_training_batches_drop_the_remainder_and_follow_the_order():
    images, labels = np.arange(10)[:, None, None, None], np.arange(10)
    order = np.array([9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    got = [b["label"].tolist() for b in data.batches(images, labels, 4, order)]
    assert got == [[9, 8, 7, 6], [5, 4, 3, 2]]


def test_evaluation_batches_cover_every_example_once_with_a_mask():
    images, labels = np.arange(10)[:, None, None, None], np.arange(10)
    got = list(data.batches(images, labels, 4))
    assert [b["label"].tolist() for b in got] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 0]]
    assert got[-1]["mask"].tolist() == [1, 1, 0, 0]
    assert all(b["image"].shape == (4, 1, 1, 1) for b in got)


def test_random_flip_mirrors_each_image_or_leaves_it():
    import jax

    images = np.random.default_rng(0).normal(size=(1000, 4, 5, 2)).astype(np.float32)
    flipped = np.asarray(data.random_flip(images, jax.random.PRNGKey(0)))
    mirrored = np.all(flipped == images[:, :, ::-1, :], axis=(1, 2, 3))
    kept = np.all(flipped == images, axis=(1, 2, 3))
    assert np.all(mirrored ^ kept)
    assert 0.45 < mirrored.mean() < 0.55
