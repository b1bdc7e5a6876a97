"""Image-classification datasets through tensorflow-datasets (TFDS), downloaded and prepared on first use.

TFDS prepares a dataset once into its data folder (`data_dir`, default
`~/tensorflow_datasets`) and reads it from there afterwards; preparing needs
TensorFlow (`pip install 'cnn_jax[tfds]'`) and, for most datasets, internet.
Any dataset with an 'image' and a class 'label' feature, fixed-size images
and `train` plus `test` (or `validation`) splits works.
"""

import sys

import numpy as np

from cnn_jax.data.dataset import DataError, Dataset
from cnn_jax.data.idx import IDX_DATASETS

# pip requirements of modules that tensorflow-datasets imports only when preparing or reading a dataset.
_INSTALLS = {"tensorflow": "'cnn_jax[tfds]'"}


class DownloadFailed(DataError):
    """tensorflow-datasets could not download a dataset (no network, or its server refused)."""


def _missing_module(error: ImportError, doing: str) -> DataError:
    return DataError(f"{doing} needs the Python module '{error.name}', which is not installed: "
                     f"pip install {_INSTALLS.get(error.name, error.name)}")


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def _is_download_failure(error: Exception) -> bool:
    """Whether `error` comes from fetching files: a network error, or TFDS's own download error."""
    import requests
    from tensorflow_datasets.core.download import download_manager, downloader

    failures = (requests.RequestException, ConnectionError, TimeoutError, downloader.download_utils_lib.DownloadError,
                download_manager.NonMatchingChecksumError)
    return isinstance(error, failures)


def load_tfds_dataset(name: str, data_dir: str | None) -> Dataset:
    """The image-classification dataset `name` through tensorflow-datasets, prepared first if it is not yet.

    Raises DataError if `name` is not a TFDS image-classification dataset, a
    module TFDS needs is missing (naming it and its install command), or
    preparing fails; `DownloadFailed` if the download failed.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise _missing_module(e, f"dataset '{name}'") from None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"unknown dataset '{name}': use one of {', '.join(IDX_DATASETS)} or a tensorflow-datasets "
                        "name") from None
    features = builder.info.features
    if "image" not in features or "label" not in features or not hasattr(features["label"], "num_classes"):
        raise DataError(f"dataset '{name}' is not image classification: it needs 'image' and class 'label' features")
    try:
        if not builder.is_prepared():
            print(f"preparing '{name}' with tensorflow-datasets in {builder.data_dir} (a download first; without "
                  "a network it fails after TFDS's retries, a few minutes)", file=sys.stderr, flush=True)
        builder.download_and_prepare()
        splits = _tfds_splits(builder)
        arrays = {split: _tfds_arrays(builder, split) for split in splits}
    except ImportError as e:
        raise _missing_module(e, f"preparing '{name}' with tensorflow-datasets") from None
    except DataError:
        raise
    except Exception as e:  # TFDS raises many kinds (network, checksums, disk, parsing); each ends a run alike.
        if _is_download_failure(e):
            raise DownloadFailed(f"downloading '{name}' through tensorflow-datasets failed ({_first_line(e)})") from None
        raise DataError(f"preparing '{name}' through tensorflow-datasets failed ({_first_line(e)})") from None
    (train_images, train_labels), (test_images, test_labels) = arrays["train"], arrays[splits[1]]
    return Dataset(name, f"tensorflow-datasets ({builder.data_dir})", train_images, train_labels,
                   test_images, test_labels, tuple(features["label"].names))


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
    raise DataError(f"dataset '{builder.name}' has splits {sorted(splits)}; cnn_jax needs 'train' and 'test' "
                    "(or 'validation')")


def _tfds_arrays(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds

    ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
    images, labels = [], []
    for image_batch, label_batch in tfds.as_numpy(ds.batch(4096)):
        images.append(image_batch)
        labels.append(label_batch)
    return np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int32)
