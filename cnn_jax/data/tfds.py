"""Image- and text-classification datasets through tensorflow-datasets (TFDS), downloaded and prepared on first
use.

TFDS prepares a dataset once into its data folder (`data_dir`, default
`~/tensorflow_datasets`) and reads it from there afterwards; preparing needs
TensorFlow (`pip install 'cnn_jax[tfds]'`) and, for most datasets, internet.
Any dataset with a class 'label' feature and an 'image' feature (image
classification) or text features (text classification: `imdb_reviews`,
`ag_news_subset`, `glue/sst2`) works. It trains on
`train_split` and evaluates on `eval_split`, TFDS split strings
("train[:80%]"); by default on "train", and on "test", else "validation",
else (a dataset with a training split only, such as `cats_vs_dogs`) the
last `HELD_OUT` of "train", training on the rest.

A dataset of images of one size, at most `IN_MEMORY_BYTES` of them, is read
into arrays once (the fastest way to train on it); any other is read image
by image as batches need them, through TFDS's random-access data source
(`tfds.data_source`, ArrayRecord files: a dataset of images of several sizes
is prepared in that format).

A text dataset's texts are its feature `TextSettings.text_column` if it has
it, else its only text feature, else all its text features joined by a space
in their order (`ag_news_subset`: title and description); they become token
ids through `cnn_jax.data.text`. An evaluation split chosen by default whose
labels are all -1 (unlabelled: `glue/sst2`'s "test") is passed over for the
next one ("validation").
"""

import sys

import numpy as np

from cnn_jax.data.dataset import IMAGES, TOKENS, DataError, Dataset
from cnn_jax.data.idx import IDX_DATASETS
from cnn_jax.data.text import TextSettings, text_dataset

HELD_OUT = 20  # Percent of "train" held out for evaluation when a dataset has no other split.
IN_MEMORY_BYTES = 2 << 30  # Larger datasets are streamed.

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


def load_tfds_dataset(name: str, data_dir: str | None, train_split: str = "", eval_split: str = "",
                      text: TextSettings | None = None, vocabulary: tuple[str, ...] | None = None) -> Dataset:
    """The image- or text-classification dataset `name` through tensorflow-datasets, prepared first if it is not
    yet, with its `train_split` and `eval_split` (see the module docstring). A text dataset's texts become token
    ids by `text` (required for one), through `vocabulary` if given, else the training texts' own.

    Raises DataError if `name` is not a TFDS image- or text-classification
    dataset, a module TFDS needs is missing (naming it and its install
    command), a split has no labels, or preparing fails; `DownloadFailed` if
    the download failed.
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
    kind, text_features = _kind(name, features, text.text_column if text else "")
    if kind == TOKENS and text is None:
        raise ValueError(f"dataset '{name}' is text classification: load_tfds_dataset needs its `text` settings")
    one_size = kind == IMAGES and None not in features["image"].shape
    try:
        if not builder.is_prepared():
            print(f"preparing '{name}' with tensorflow-datasets in {builder.data_dir} (a download first; without "
                  "a network it fails after TFDS's retries, a few minutes)", file=sys.stderr, flush=True)
        builder.download_and_prepare(file_format=None if kind == TOKENS or one_size else "array_record")
        splits = _tfds_splits(builder.name, builder.info.splits, train_split, eval_split)
        if kind == TOKENS:
            splits, (train_texts, train_labels), (test_texts, test_labels) = _labelled_texts(
                name, builder, splits, text_features, train_split, eval_split)
        elif one_size and _size_in_bytes(builder, splits) <= IN_MEMORY_BYTES:
            (train_images, train_labels), (test_images, test_labels) = (_tfds_arrays(builder, s) for s in splits)
        else:
            (train_images, train_labels), (test_images, test_labels) = (_tfds_source(builder, s) for s in splits)
    except ImportError as e:
        raise _missing_module(e, f"preparing '{name}' with tensorflow-datasets") from None
    except DataError:
        raise
    except Exception as e:  # TFDS raises many kinds (network, checksums, disk, parsing); each ends a run alike.
        if _is_download_failure(e):
            raise DownloadFailed(f"downloading '{name}' through tensorflow-datasets failed ({_first_line(e)})") from None
        raise DataError(f"preparing '{name}' through tensorflow-datasets failed ({_first_line(e)})") from None
    where = "" if splits == ("train", "test") else f", trained on {splits[0]}, evaluated on {splits[1]}"
    source = f"tensorflow-datasets ({builder.data_dir}{where})"
    if kind == TOKENS:
        return text_dataset(name, source, train_texts, train_labels, test_texts, test_labels,
                            features["label"].names, text, vocabulary)
    return Dataset(name, source, train_images, train_labels, test_images, test_labels,
                   tuple(features["label"].names))


def _kind(name: str, features, text_column: str) -> tuple[str, list[str]]:
    """(IMAGES or TOKENS, the text features that make a text: `text_column` if there is one, else all, in order);
    DataError for a dataset that is neither image nor text classification."""
    import tensorflow_datasets as tfds

    texts = [key for key, feature in features.items() if isinstance(feature, tfds.features.Text)]
    if "label" in features and hasattr(features["label"], "num_classes"):
        if "image" in features:
            return IMAGES, []
        if texts:
            return TOKENS, [text_column] if text_column in texts else texts
    raise DataError(f"dataset '{name}' is neither image nor text classification: it needs a class 'label' feature "
                    "and an 'image' feature or text features")


def _labelled_texts(name: str, builder, splits: tuple[str, str], keys: list[str], train_split: str,
                    eval_split: str):
    """(the splits, then (texts, labels) of each): an evaluation split chosen by default whose labels are all -1
    gives way to the next (`_tfds_splits`); DataError for a split of examples without labels."""
    train, test = _tfds_texts(builder, splits[0], keys), _tfds_texts(builder, splits[1], keys)
    if not eval_split and len(test[1]) and (test[1] < 0).all():
        splits = _tfds_splits(builder.name, builder.info.splits, train_split, "", unlabelled=(splits[1],))
        test = _tfds_texts(builder, splits[1], keys)
    for split, (_, labels), setting in zip(splits, (train, test), ("train_split", "eval_split")):
        if (labels < 0).any():
            some = "has no labels" if (labels < 0).all() else f"has {np.sum(labels < 0):,} examples without a label"
            raise DataError(f"split '{split}' of dataset '{name}' {some} (label -1); choose another with "
                            f"`{setting}`")
    return splits, train, test


def _tfds_texts(builder, split: str, keys: list[str]) -> tuple[list[str], np.ndarray]:
    """The texts of `split` (its features `keys` joined by a space, decoded from UTF-8) and their labels."""
    import tensorflow_datasets as tfds

    ds = builder.as_dataset(split=split, shuffle_files=False).map(lambda ex: {k: ex[k] for k in (*keys, "label")})
    texts, labels = [], [np.zeros(0, np.int32)]
    for batch in tfds.as_numpy(ds.batch(4096)):
        texts += [" ".join(part.decode("utf-8", "replace") for part in parts) for parts in zip(*map(batch.get, keys))]
        labels.append(batch["label"].astype(np.int32))
    return texts, np.concatenate(labels)


def _tfds_splits(name: str, splits, train_split: str, eval_split: str, unlabelled: tuple[str, ...] = ()
                 ) -> tuple[str, str]:
    """(the split to train on, the one to evaluate on): those given, else 'train' and 'test' or 'validation' (the
    first not `unlabelled`), else the start and the last `HELD_OUT` percent of 'train'.

    A builder that recorded no split names (tfds.testing.mock_data's, for one)
    is read as having 'train', 'test' and 'validation'.
    """
    if not splits:
        return train_split or "train", eval_split or next(s for s in ("test", "validation") if s not in unlabelled)
    if train_split and eval_split:
        return train_split, eval_split
    if "train" not in splits and not train_split:
        raise DataError(f"dataset '{name}' has no 'train' split (it has {', '.join(sorted(splits))}); choose one "
                        "with `train_split`")
    held_out = next((split for split in ("test", "validation") if split in splits and split not in unlabelled), None)
    if eval_split or held_out:
        return train_split or "train", eval_split or held_out
    return train_split or f"train[:{100 - HELD_OUT}%]", f"train[{100 - HELD_OUT}%:]"


def _size_in_bytes(builder, splits: tuple[str, str]) -> int:
    """The bytes of the images of `splits` as uint8 arrays (0 when the builder does not know its sizes)."""
    examples = 0
    for split in splits:
        try:
            examples += builder.info.splits[split].num_examples
        except (KeyError, ValueError, TypeError):  # Unknown splits (mock_data), or a split string TFDS rejects later.
            pass
    return examples * int(np.prod(builder.info.features["image"].shape))


class TfdsImages:
    """The images of a split of a TFDS data source, read one by one (`cnn_jax.data.dataset.Images`)."""

    def __init__(self, source, indices: np.ndarray, image_shape: tuple):
        """`image_shape`: the feature's (h, w, c), None where it varies."""
        self.source, self.indices, self.image_shape = source, indices, image_shape
        self.shape = (len(indices), *image_shape)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index) -> "TfdsImages":
        return TfdsImages(self.source, self.indices[index], self.image_shape)

    def open(self, i: int):
        from cnn_jax.data.files import from_array

        image = from_array(np.asarray(self.source[int(self.indices[i])]["image"], np.uint8))
        mode = "L" if self.image_shape[2] == 1 else "RGB"
        return image if image.mode == mode else image.convert(mode)


def _tfds_source(builder, split: str) -> tuple[TfdsImages, np.ndarray]:
    """The images of `split` read as batches need them, and its labels (read now, without decoding an image)."""
    import tensorflow_datasets as tfds

    images = builder.as_data_source(split=split)
    records = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    labels = np.fromiter((records[k]["label"] for k in range(len(records))), np.int32, len(records))
    height, width, channels = builder.info.features["image"].shape
    return TfdsImages(images, np.arange(len(labels)), (height, width, channels or 3)), labels


def _tfds_arrays(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds

    ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
    images, labels = [], []
    for image_batch, label_batch in tfds.as_numpy(ds.batch(4096)):
        images.append(image_batch)
        labels.append(label_batch)
    return np.concatenate(images).astype(np.uint8), np.concatenate(labels).astype(np.int32)
