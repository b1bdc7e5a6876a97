"""The IDX format of MNIST and Fashion-MNIST: reading and writing files, and loading a folder of them."""

import gzip
import os
import zlib

import numpy as np

from cnn_jax.data.dataset import DataError, Dataset

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
IDX_STEMS = {
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
    for key, stem in IDX_STEMS.items():
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
