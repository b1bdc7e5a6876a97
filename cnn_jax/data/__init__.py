"""Datasets (images, signals or texts), and the batches training reads from them.

    dataset.py   `Dataset` (uint8 images, float32 signals or int32 token ids; int32 labels, class names), what
                 each holds (IMAGES, SIGNALS, TOKENS) and `DataError`
    sources.py   `load_dataset(name, data_dir)`: where a dataset comes from, in order
    idx.py       the IDX format of MNIST and Fashion-MNIST
    tfds.py      any image- or text-classification dataset of tensorflow-datasets
    folder.py    a folder of image files, a class per subfolder
    files.py     image files (any format Pillow reads, any size) at a run's image shape
    text.py      labelled texts (CSV, TSV, JSON lines): words, the vocabulary, token ids
    mnist1d.py   MNIST-1D, generated
    batching.py  pixel scaling, mirroring, each epoch's order and the batches
    pipeline.py  the batches of a run, in memory or streamed
"""

from cnn_jax.data.batching import batches, epoch_permutation, normalize, random_flip
from cnn_jax.data.dataset import IMAGES, SIGNALS, TOKENS, DataError, Dataset
from cnn_jax.data.files import read_image
from cnn_jax.data.idx import read_idx, write_idx
from cnn_jax.data.sources import load_dataset

__all__ = ["IMAGES", "SIGNALS", "TOKENS", "DataError", "Dataset", "batches", "epoch_permutation", "load_dataset",
           "normalize", "random_flip", "read_idx", "read_image", "write_idx"]
