"""Datasets as in-memory arrays, and the batches training reads from them.

    dataset.py   `Dataset` (uint8 images, int32 labels, class names) and `DataError`
    sources.py   `load_dataset(name, data_dir)`: where a dataset comes from, in order
    idx.py       the IDX format of MNIST and Fashion-MNIST
    tfds.py      any image-classification dataset of tensorflow-datasets
    batching.py  pixel scaling, mirroring, each epoch's order and the batches
    files.py     image files (any format Pillow reads, any size) at a run's image shape
"""

from cnn_jax.data.batching import batches, epoch_permutation, normalize, random_flip
from cnn_jax.data.dataset import DataError, Dataset
from cnn_jax.data.files import read_image
from cnn_jax.data.idx import read_idx, write_idx
from cnn_jax.data.sources import load_dataset

__all__ = ["DataError", "Dataset", "batches", "epoch_permutation", "load_dataset", "normalize", "random_flip",
           "read_idx", "read_image", "write_idx"]
