"""A folder of image files as a dataset, one subfolder per class (torchvision's `ImageFolder` layout):

    DIR/train/<class>/*   DIR/test/<class>/*   (or DIR/val/, DIR/validation/)
    DIR/<class>/*         a deterministic `test_fraction` of each class is held out for testing

Class names are the subfolders' names, sorted. Every file with an image suffix (`files.SUFFIXES`) is decoded
once when the dataset is loaded (in parallel threads, JPEGs at 1/8 scale); those that do not decode are skipped
and named in `Dataset.skipped`. Only the paths, sizes and labels stay in memory: the images are read again
when a batch needs them (`cnn_jax.data.pipeline`).
"""

import concurrent.futures
import os

import numpy as np
from tqdm import tqdm

from cnn_jax.data.dataset import DataError, Dataset
from cnn_jax.data.files import ImageFiles, is_image_name

NAME = "folder"  # The `dataset` setting for a folder.
TEST_FOLDERS = ("test", "val", "validation")
HOLD_OUT_SEED = 0  # The held-out files of a folder without split folders depend on the file names only.


def _class_folders(directory: str) -> list[str]:
    names = sorted(name for name in os.listdir(directory)
                   if os.path.isdir(os.path.join(directory, name)) and not name.startswith("."))
    if not names:
        raise DataError(f"folder {directory} holds no class folders; put each class's images in a folder of its "
                        "own (DIR/<class>/*.jpg, or DIR/train/<class>/* and DIR/test/<class>/*)")
    if len(names) == 1:
        raise DataError(f"folder {directory} holds one class folder ('{names[0]}'); a classifier needs at least two")
    return names


def _files(directory: str, classes: list[str]) -> tuple[list[str], np.ndarray]:
    """Every image file under `directory/<class>/` (sorted, subfolders included), and its class index."""
    paths, labels = [], []
    for k, name in enumerate(classes):
        found = sorted(os.path.join(root, file) for root, _, names in os.walk(os.path.join(directory, name))
                       for file in names if is_image_name(file))
        if not found:
            raise DataError(f"class folder {os.path.join(directory, name)} holds no image files; add some or remove "
                            "the folder")
        paths += found
        labels += [k] * len(found)
    return paths, np.asarray(labels, np.int32)


def _decode(path: str) -> tuple[int, int, bool] | None:
    """(height, width, whether in colour) of the image file at `path` if it decodes, else None."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height, colour = image.width, image.height, image.mode not in ("1", "L", "LA", "I", "I;16", "F")
            if image.format == "JPEG":
                image.draft(image.mode, (max(width // 8, 1), max(height // 8, 1)))  # Decodes 8× faster.
            image.load()
        return height, width, colour
    except Exception:  # Pillow raises many kinds for a corrupt file (OSError, SyntaxError, ValueError, ...).
        return None


def _scan(paths: list[str]) -> list[tuple[int, int, bool] | None]:
    """`_decode` of every file, in parallel threads (Pillow decodes without holding the GIL)."""
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        return list(tqdm(pool.map(_decode, paths, chunksize=64), total=len(paths), unit="file",
                         desc="checking image files", disable=len(paths) < 2000 or None, leave=False))


def held_out(labels: np.ndarray, fraction: float) -> np.ndarray:
    """A boolean mask: round(fraction · n) of each class's n files, drawn by a fixed seed."""
    rng = np.random.default_rng(HOLD_OUT_SEED)
    held = np.zeros(len(labels), bool)
    for k in np.unique(labels):
        members = np.flatnonzero(labels == k)
        held[rng.permutation(members)[: round(fraction * len(members))]] = True
    return held


def load_folder(directory: str | None, test_fraction: float = 0.2) -> Dataset:
    """The dataset in `directory` (see the module docstring); DataError for a layout it cannot use."""
    if not directory:
        raise DataError("`dataset`=folder needs `data_dir`: the folder holding one folder of images per class")
    if not os.path.isdir(directory):
        raise DataError(f"`data_dir`={directory} is not a directory")
    splits = [name for name in TEST_FOLDERS if os.path.isdir(os.path.join(directory, name))]
    if os.path.isdir(os.path.join(directory, "train")) and splits:
        train_dir, test_dir = os.path.join(directory, "train"), os.path.join(directory, splits[0])
        classes = _class_folders(train_dir)
        if _class_folders(test_dir) != classes:
            raise DataError(f"the class folders of {test_dir} ({', '.join(_class_folders(test_dir))}) are not those "
                            f"of {train_dir} ({', '.join(classes)}); give both the same classes")
        train, test = _files(train_dir, classes), _files(test_dir, classes)
        paths, labels = train[0] + test[0], np.concatenate([train[1], test[1]])
        is_test = np.arange(len(paths)) >= len(train[0])
    else:
        classes = _class_folders(directory)
        paths, labels = _files(directory, classes)
        is_test = held_out(labels, test_fraction)
    found = _scan(paths)
    good = np.asarray([info is not None for info in found])
    sizes = np.asarray([info[:2] for info in found if info], np.int64).reshape(-1, 2)
    colour = any(info[2] for info in found if info)
    images = ImageFiles([path for path, ok in zip(paths, good, strict=True) if ok], sizes, 3 if colour else 1)
    labels, is_test = labels[good], is_test[good]
    train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    for split, members in (("training", train), ("test", test)):
        missing = sorted(set(range(len(classes))) - set(labels[members].tolist()))
        if missing:
            raise DataError(f"the {split} split of folder {directory} has no readable images of class "
                            f"'{classes[missing[0]]}'; add readable images of that class")
    return Dataset(NAME, directory, images[train], labels[train], images[test], labels[test],
                   tuple(classes),
                   skipped=tuple(path for path, ok in zip(paths, good, strict=True) if not ok))
