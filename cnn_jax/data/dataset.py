"""A labelled dataset (images, signals or texts), its class subsets and balanced subsets, and the error for data that
cannot be used."""

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from cnn_jax.errors import UserError

IMAGES, SIGNALS, TOKENS = "images", "signals", "tokens"
"""What a dataset's inputs are, and what a model takes (`cnn_jax.models.inputs_of`): uint8 images
`[h, w, c]`; float32 signals `[length, channels]` (MNIST-1D); int32 token ids `[length]` (texts, through a
`vocabulary`)."""


class DataError(UserError):
    """A data file or data source that cannot be used."""


class Images(Protocol):
    """Images read one at a time, when a batch needs them: image files (`cnn_jax.data.files.ImageFiles`) or a
    tensorflow-datasets data source (`cnn_jax.data.tfds`)."""

    shape: tuple  # (examples, height, width, channels); height and width None when the images differ in size.

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice | np.ndarray) -> "Images":
        """The images at `index` (a slice, or an array of indices or a boolean mask), as NumPy indexes."""

    def open(self, i: int) -> Any:
        """Image `i` as a Pillow image ("L" or "RGB", as `shape`'s channels), decoded at its own size."""


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A labelled dataset of images, signals or texts (`kind`).

    `kind` IMAGES: images are uint8 `[examples, height, width, channels]` held in memory, or
    images read one by one when a batch needs them (`ImageFiles`, or a
    tensorflow-datasets data source), of one size or of any; labels are
    int32 `[examples]`, in memory. `input_shape` is the (h, w, c) the images
    become as a model's input (`cnn_jax.data.pipeline`); None: their own,
    one size for all. `skipped` names the files left out because they do not
    decode.

    `kind` SIGNALS: float32 `[examples, length, channels]` in memory (the
    image fields hold them). `kind` TOKENS: each text as int32 token ids
    `[examples, length]`, padded with 0; `vocabulary[id]` is the word of
    each id (0 padding, 1 unknown words), the one the run saves and reuses
    (`cnn_jax.data.text`).
    """

    name: str
    source: str
    train_images: "np.ndarray | Images"
    train_labels: np.ndarray
    test_images: "np.ndarray | Images"
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    input_shape: tuple[int, int, int] | None = None
    skipped: tuple[str, ...] = ()
    kind: str = IMAGES
    vocabulary: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_dtype(self) -> np.dtype:
        """The dtype of a batch's inputs: uint8 images, float32 signals, int32 token ids."""
        return np.dtype({IMAGES: np.uint8, SIGNALS: np.float32, TOKENS: np.int32}[self.kind])

    @property
    def image_shape(self) -> tuple[int, ...]:
        """The (h, w, c) of the model's input ((length, channels) of a signal, (length,) of a text); DataError if
        the images differ in size and no `input_shape` is set."""
        if self.input_shape:
            return self.input_shape
        shape = tuple(self.train_images.shape[1:])
        if None in shape:
            raise DataError(f"the images of {self.name} are not all of one size; give `image_size` (for example "
                            "224, or 299,299) to train on them")
        return shape

    @property
    def in_memory(self) -> bool:
        """Whether batches are slices of arrays in memory: the images are arrays, not converted (`at_shape`)."""
        arrays = all(isinstance(images, np.ndarray) for images in (self.train_images, self.test_images))
        return arrays and self.input_shape is None

    def at_shape(self, size: tuple[int, int] | None, channels: int) -> "Dataset":
        """The dataset with its images becoming `size` (h, w; None: their own) and `channels` (0: their own) as a
        model's input."""
        if size is None and not channels:
            return self
        if self.kind != IMAGES:
            raise DataError(f"`image_size` and `channels` apply to images, and {self.name} holds {self.kind}; leave "
                            "them unset")
        own = self.train_images.shape[1:]
        height, width = size or own[:2]
        if None in (height, width):
            raise DataError(f"the images of {self.name} are not all of one size; give `image_size` with "
                            "`channels`")
        return dataclasses.replace(self, input_shape=(height, width, channels or own[2]))

    def truncated(self, max_train: int = 0, max_test: int = 0) -> "Dataset":
        """The first `max_train` / `max_test` examples of each split (0 keeps a split whole)."""
        return dataclasses.replace(
            self,
            train_images=self.train_images[: max_train or None],
            train_labels=self.train_labels[: max_train or None],
            test_images=self.test_images[: max_test or None],
            test_labels=self.test_labels[: max_test or None],
        )

    def class_indices(self, classes: Sequence[str]) -> list[int]:
        """The indices of `classes`, each an index ("3") or a class name (any case); UserError naming one that is
        not a class, or one given twice."""
        names = {name.lower(): k for k, name in enumerate(self.class_names)}
        indices = []
        for given in classes:
            text = given.strip()
            k = int(text) if text.isdigit() else names.get(text.lower())
            if k is None or not 0 <= k < self.num_classes:
                raise UserError(f"`classes`: '{text}' is not a class of {self.name}: give indices 0 to "
                                f"{self.num_classes - 1} or names ({', '.join(self.class_names)})")
            if k in indices:
                raise UserError(f"`classes`: class {k} ({self.class_names[k]}) is given twice")
            indices.append(k)
        return indices

    def with_classes(self, classes: Sequence[int]) -> "Dataset":
        """Only the examples of `classes` in both splits, relabelled 0, 1, ... in the order given."""
        relabel = np.full(self.num_classes, -1, np.int32)
        relabel[list(classes)] = np.arange(len(classes), dtype=np.int32)

        def keep(images, labels):
            kept = relabel[labels] >= 0
            return images[kept], relabel[labels[kept]]

        train_images, train_labels = keep(self.train_images, self.train_labels)
        test_images, test_labels = keep(self.test_images, self.test_labels)
        return dataclasses.replace(self, train_images=train_images, train_labels=train_labels,
                                   test_images=test_images, test_labels=test_labels,
                                   class_names=tuple(self.class_names[k] for k in classes))

    def balanced(self, per_class: int, seed: int) -> "Dataset":
        """`per_class` training examples of every class, drawn by `seed` (test split whole), in their original
        order. The same seed draws the same examples, and a smaller subset is part of a larger one."""
        counts = np.bincount(self.train_labels, minlength=self.num_classes)
        if per_class > counts.min():
            k = int(np.argmin(counts))
            raise UserError(f"`train_examples_per_class`={per_class} exceeds the {counts[k]:,} training examples of "
                            f"class {k} ({self.class_names[k]}); lower it")
        rng = np.random.default_rng(seed)
        chosen = np.sort(np.concatenate([rng.permutation(np.flatnonzero(self.train_labels == k))[:per_class]
                                         for k in range(self.num_classes)]))
        return dataclasses.replace(self, train_images=self.train_images[chosen],
                                   train_labels=self.train_labels[chosen])
