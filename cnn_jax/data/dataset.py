"""A labelled image dataset held in host memory, its class subsets and balanced subsets, and the error for data
that cannot be used."""

import dataclasses
from collections.abc import Sequence

import numpy as np

from cnn_jax.errors import UserError


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
