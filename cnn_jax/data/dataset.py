"""A labelled image dataset held in host memory, and the error for data that cannot be used."""

import dataclasses

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
