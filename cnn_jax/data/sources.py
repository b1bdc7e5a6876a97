"""Where a dataset comes from: `folder` is a folder of image files (`cnn_jax.data.folder`), `text` a file (or a
folder of files) of labelled texts (`cnn_jax.data.text`), `mnist1d` MNIST-1D, generated (`cnn_jax.data.mnist1d`); any
other name, in order:

  1. IDX files in `data_dir` (or `data_dir/<dataset>`), gzipped or raw, for the MNIST family;
  2. for Fashion-MNIST, the folder Debian's package `dataset-fashion-mnist` installs;
  3. tensorflow-datasets by name (prepared into `data_dir`, default `~/tensorflow_datasets`;
     downloads on machines with internet).

Nothing is downloaded at import time.
"""

import os

from cnn_jax.data import folder, idx, mnist1d, text, tfds
from cnn_jax.data.dataset import DataError, Dataset

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def _idx_directories(name: str, data_dir: str | None) -> list[str]:
    dirs = [data_dir, os.path.join(data_dir, name)] if data_dir else []
    if name == "fashion_mnist":
        dirs.append(DEBIAN_FASHION_MNIST_DIR)
    return dirs


def offline_ways(name: str) -> list[str]:
    """The ways to get dataset `name` onto a machine without internet."""
    ways = []
    if name in idx.IDX_DATASETS:
        ways.append(f"put the four IDX files ({', '.join(s + '[.gz]' for s in idx.IDX_STEMS.values())}) in `data_dir`")
    if name == "fashion_mnist":
        ways.append("install Debian's package: apt-get install dataset-fashion-mnist")
    ways.append(f"prepare it where there is internet (python -c \"import tensorflow_datasets as tfds; "
                f"tfds.builder('{name}').download_and_prepare()\") and copy ~/tensorflow_datasets/{name} into "
                "`data_dir`")
    return ways


def load_dataset(name: str, data_dir: str | None = None, test_fraction: float = 0.2, train_split: str = "",
                 eval_split: str = "", text_settings: text.TextSettings | None = None,
                 vocabulary: tuple[str, ...] | None = None) -> Dataset:
    """Loads dataset `name` from the first source that has it (see the module docstring).

    `test_fraction` is a folder's (or a text file's) held-out share (without
    split folders or files); `train_split` and `eval_split` are
    tensorflow-datasets split strings ("train[:80%]"; "" for the defaults of
    `tfds.load_tfds_dataset`). Texts are read with `text_settings` and
    encoded with `vocabulary` if given (a trained run's), else with one built
    from their training split. When tensorflow-datasets' download fails, the
    error lists the ways to get the data offline.
    """
    if name == folder.NAME:
        return folder.load_folder(data_dir, test_fraction)
    if name == text.NAME:
        return text.load_text_files(data_dir, test_fraction, text_settings, vocabulary)
    if name == mnist1d.NAME:
        return mnist1d.load_mnist1d()
    if data_dir is not None and not os.path.isdir(data_dir):
        raise DataError(f"`data_dir`={data_dir} is not a directory")
    if name in idx.IDX_DATASETS and not (train_split or eval_split):
        for directory in _idx_directories(name, data_dir):
            if os.path.isdir(directory):
                dataset = idx.load_idx_dataset(name, directory)
                if dataset is not None:
                    return dataset
    try:
        return tfds.load_tfds_dataset(name, data_dir, train_split, eval_split, text_settings, vocabulary)
    except tfds.DownloadFailed as e:
        raise tfds.DownloadFailed(f"{e}; to get it without a network: {'; or '.join(offline_ways(name))}") from None
