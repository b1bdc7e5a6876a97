"""Datasets as in-memory arrays: IDX files (MNIST, Fashion-MNIST) or tensorflow-datasets.

Where the data comes from, in order:
  1. IDX files in `data_dir` (or `data_dir/<dataset>`), gzipped or raw;
  2. for Fashion-MNIST, the folder Debian's package `dataset-fashion-mnist` installs;
  3. tensorflow-datasets by name (downloads on machines with internet; any TFDS
     image-classification dataset with fixed-size images and `train`/`test` splits).
Nothing is downloaded at import time.
"""

import dataclasses
import gzip
import os
import zlib
from collections.abc import Iterator

import numpy as np

from cnn_jax.errors import UserError

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# IDX element types: code -> big-endian NumPy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# File stems of the MNIST family, by split and kind.
_IDX_STEMS = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}

CLASS_NAMES = {
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                      "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    "mnist": tuple(str(d) for d in range(10)),
}
IDX_DATASETS = tuple(CLASS_NAMES)


class DataError(UserError):
    """A data file or data source that cannot be used."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A labelled image dataset held in host memory.

    Images are uint8 `[examples, height, width, channels]`; labels int32 `[examples]`.
    """

    name: str
    source: str
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    def truncated(self, max_train: int = 0, max_test: int = 0) -> "Dataset":
        """The first `max_train` / `max_test` examples of each split (0 keeps a split whole)."""
        return dataclasses.replace(
            self,
            train_images=self.train_images[: max_train or None],
            train_labels=self.train_labels[: max_train or None],
            test_images=self.test_images[: max_test or None],
            test_labels=self.test_labels[: max_test or None],
        )


def read_idx(path: str) -> np.ndarray:
    """Reads one IDX file (gzipped or raw) into an array in native byte order.

    Raises DataError naming the file and what is wrong with it: a bad magic
    number, an unknown element type, a truncated header or payload, trailing
    bytes, or a corrupt gzip stream.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt or truncated gzip data ({e}); download it again") from None
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX header (4 bytes)")
    zeros, type_code, ndim = raw[:2], raw[2], raw[3]
    if zeros != b"\x00\x00" or type_code not in _IDX_DTYPES or ndim == 0:
        magic = int.from_bytes(raw[:4], "big")
        raise DataError(
            f"{path}: not an IDX file: magic number 0x{magic:08x}, expected 0x0000TTDD "
            f"with element type TT in {{08,09,0b,0c,0d,0e}} and DD >= 1 dimensions"
        )
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(f"{path}: truncated header: {ndim} dimensions need {header_size} bytes, file has {len(raw)}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = _IDX_DTYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header_size
    if actual < expected:
        raise DataError(
            f"{path}: truncated: header says shape {shape} ({expected} bytes of data), "
            f"file holds {actual}; download it again"
        )
    if actual > expected:
        raise DataError(f"{path}: {actual - expected} unexpected bytes after the {shape} array; the file is corrupt")
    return np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str, array: np.ndarray) -> None:
    """Writes `array` as an IDX file, gzipped if `path` ends in '.gz' (the inverse of read_idx)."""
    codes = {dtype.newbyteorder("="): code for code, dtype in _IDX_DTYPES.items()}
    array = np.asarray(array)
    if array.dtype not in codes or array.ndim == 0:
        raise ValueError(f"IDX holds arrays of {sorted(map(str, codes))} with >= 1 dimension, got {array.dtype} {array.shape}")
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    with open(path, "wb") as f:
        f.write(gzip.compress(raw) if path.endswith(".gz") else raw)


def _find_idx_files(directory: str) -> dict | None:
    """The four MNIST-family files in `directory`, or None if none is there.

    Raises DataError if only some of them are.
    """
    found, missing = {}, []
    for key, stem in _IDX_STEMS.items():
        for candidate in (stem, stem + ".gz"):
            if os.path.isfile(os.path.join(directory, candidate)):
                found[key] = os.path.join(directory, candidate)
                break
        else:
            missing.append(stem + "[.gz]")
    if not found:
        return None
    if missing:
        raise DataError(f"{directory}: has some IDX files but not {', '.join(missing)}")
    return found


def _load_idx_split(files: dict, split: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    images_path, labels_path = files[(split, "images")], files[(split, "labels")]
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_path}: expected uint8 images [count, height, width], got {images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected labels [count], got shape {labels.shape}")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if len(labels) and not 0 <= labels.min() <= labels.max() < num_classes:
        raise DataError(f"{labels_path}: labels must lie in [0, {num_classes}), found {labels.min()}..{labels.max()}")
    return images[..., None], labels.astype(np.int32)


def load_idx_dataset(name: str, directory: str) -> Dataset | None:
    """The MNIST-family dataset `name` from IDX files in `directory`, or None if absent."""
    files = _find_idx_files(directory)
    if files is None:
        return None
    class_names = CLASS_NAMES[name]
    train_images, train_labels = _load_idx_split(files, "train", len(class_names))
    test_images, test_labels = _load_idx_split(files, "test", len(class_names))
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(f"{directory}: train images are {train_images.shape[1:3]} but test images {test_images.shape[1:3]}")
    return Dataset(name, f"IDX files in {directory}", train_images, train_labels, test_images, test_labels, class_names)


def _idx_directories(name: str, data_dir: str | None) -> list[str]:
    dirs = [data_dir, os.path.join(data_dir, name)] if data_dir else []
    if name == "fashion_mnist":
        dirs.append(DEBIAN_FASHION_MNIST_DIR)
    return dirs


def _how_to_get(name: str) -> str:
    ways = [f"put the four IDX files ({', '.join(s + '[.gz]' for s in _IDX_STEMS.values())}) in --data_dir"]
    if name == "fashion_mnist":
        ways.append("install Debian's package: apt-get install dataset-fashion-mnist")
    ways.append(f"on a machine with internet, let tensorflow-datasets download '{name}' (pip install 'cnn_jax[tfds]')")
    return "; or ".join(ways)


def load_tfds_dataset(name: str, data_dir: str | None) -> Dataset:
    """An image-classification dataset through tensorflow-datasets (downloads if needed)."""
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DataError(f"dataset '{name}' needs tensorflow-datasets: pip install 'cnn_jax[tfds]'") from None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(
            f"unknown dataset '{name}': use one of {', '.join(IDX_DATASETS)} or a tensorflow-datasets name"
        ) from None
    features = builder.info.features
    if "image" not in features or "label" not in features or not hasattr(features["label"], "num_classes"):
        raise DataError(f"dataset '{name}' is not image classification: it needs 'image' and class 'label' features")
    try:
        builder.download_and_prepare()
        splits = _tfds_splits(builder)
        arrays = {split: _tfds_arrays(builder, split) for split in splits}
    except ImportError as e:
        raise DataError(f"reading '{name}' through tensorflow-datasets needs {e.name}: pip install 'cnn_jax[tfds]'") from None
    except Exception as e:  # Network, disk and preparation failures all end the same way for a user.
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DataError(
            f"cannot get dataset '{name}' through tensorflow-datasets ({first_line}); "
            f"ways to get it: {_how_to_get(name)}"
        ) from None
    (train_images, train_labels), (test_images, test_labels) = arrays["train"], arrays[splits[1]]
    return Dataset(
        name, f"tensorflow-datasets ({builder.data_dir})", train_images, train_labels,
        test_images, test_labels, tuple(features["label"].names),
    )


def _tfds_splits(builder) -> tuple[str, str]:
    """('train', the held-out split): 'test' if the dataset has one, else 'validation'.

    A builder that recorded no split names (tfds.testing.mock_data's, for one)
    is read as 'train' and 'test'.
    """
    splits = builder.info.splits
    if not splits:
        return "train", "test"
    for held_out in ("test", "validation"):
        if "train" in splits and held_out in splits:
            return "train", held_out
    raise DataError(f"dataset '{builder.name}' has splits {sorted(splits)}; cnn_jax needs 'train' and 'test' (or 'validation')")


def _tfds_arrays(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds

    ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
    images, labels = [], []
    for image_batch, label_batch in tfds.as_numpy(ds.batch(4096)):
        images.append(image_batch)
        labels.append(label_batch)
    return np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int32)


def load_dataset(name: str, data_dir: str | None = None) -> Dataset:
    """Loads dataset `name` from the first source that has it (see the module docstring)."""
    if data_dir is not None and not os.path.isdir(data_dir):
        raise DataError(f"--data_dir={data_dir} is not a directory")
    if name in IDX_DATASETS:
        for directory in _idx_directories(name, data_dir):
            if os.path.isdir(directory):
                dataset = load_idx_dataset(name, directory)
                if dataset is not None:
                    return dataset
    return load_tfds_dataset(name, data_dir)


def normalize(images):
    """uint8 pixels [..., H, W, C] -> float32 in [0, 1]; works on NumPy and JAX arrays."""
    return images.astype("float32") / 255.0


def random_flip(images, key):
    """Mirrors each image of `[b, h, w, c]` left-right with probability 1/2 (a JAX function)."""
    import jax

    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jax.numpy.where(flip, images[:, :, ::-1, :], images)


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The order of the training examples in `epoch`: a pure function of (seed, epoch)."""
    return np.random.default_rng((seed, epoch)).permutation(num_examples)


def batches(images: np.ndarray, labels: np.ndarray, batch_size: int, order: np.ndarray | None = None,
            part: tuple[int, int] = (0, 1)) -> Iterator[dict]:
    """Yields {'image', 'label'} batches in `order` (default: as stored).

    With `order` (training), the last incomplete batch is dropped so that every
    step sees the same shape. Without it (evaluation), every example is yielded
    once: the last batch is padded to full size and carries a 0/1 'mask'.
    `part=(i, n)` yields only the i-th of n equal slices of each batch (one
    process's share of a batch split over n processes; `batch_size` is the
    whole batch's size and n must divide it).
    """
    index, count = part
    share = slice(index * batch_size // count, (index + 1) * batch_size // count)
    if order is not None:
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[start : start + batch_size][share]
            yield {"image": images[idx], "label": labels[idx]}
        return
    for start in range(0, len(images), batch_size):
        image, label = images[start : start + batch_size], labels[start : start + batch_size]
        pad = batch_size - len(label)
        mask = np.concatenate([np.ones(len(label), np.float32), np.zeros(pad, np.float32)])
        if pad:
            image = np.concatenate([image, np.zeros((pad, *image.shape[1:]), image.dtype)])
            label = np.concatenate([label, np.zeros(pad, label.dtype)])
        yield {"image": image[share], "label": label[share], "mask": mask[share]}
