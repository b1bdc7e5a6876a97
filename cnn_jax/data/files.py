"""Image files and images of any size as a model's input: opening them (any format Pillow reads, grey or colour,
a GIF's first frame), and the two ways an image becomes `[h, w, c]` of a run's shape.

    centre(image, size)              evaluation (and `experiments.predict`): the largest centred crop of the
                                     target's aspect ratio, resized (for a square target: the shorter side
                                     resized, then centre-cropped)
    random_resized(image, size, rng) training: Inception's crop (a random 8-100% of the area at an aspect ratio
                                     of 3/4 to 4/3), resized

Both resize with Pillow's antialiased bilinear filter in one step from the crop box, as torchvision's
`RandomResizedCrop` and `Resize` do.
"""

import math
from collections.abc import Sequence

import numpy as np

from cnn_jax.data.dataset import DataError

SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
"""The file names taken for images in folders (any case); a file that does not decode is still skipped."""

SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)  # Inception's crop: its share of the area, and its width / height.


def is_image_name(name: str) -> bool:
    return name.lower().endswith(SUFFIXES) and not name.startswith(".")


def open_image(path: str, channels: int):
    """The image file at `path` as a Pillow image, grey ("L") or RGB as `channels` is 1 or 3, decoded; DataError
    naming the file if it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    if channels not in (1, 3):
        raise DataError(f"cannot convert {path} to {channels} channels: only grey (1) or RGB (3) images")
    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as image:
            image.load()  # Decodes (a GIF's first frame).
            return image if image.mode == mode else image.convert(mode)  # (A copy costs a third of a decode.)
    except FileNotFoundError:
        raise DataError(f"image file {path} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:  # Pillow's ways to say "corrupt".
        raise DataError(f"cannot read image file {path} ({type(e).__name__}); give a JPEG, PNG or another format "
                        "Pillow reads") from None


def from_array(image: np.ndarray):
    """uint8 `[h, w, c]` (c 1 or 3) as a Pillow image."""
    from PIL import Image

    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def as_array(image, channels: int) -> np.ndarray:
    """A Pillow image as uint8 `[h, w, channels]`."""
    return np.asarray(image, np.uint8).reshape(image.height, image.width, channels)


def _resized(image, size: tuple[int, int], box: tuple[float, float, float, float]):
    from PIL import Image

    height, width = size
    return image.resize((width, height), Image.Resampling.BILINEAR, box=box)


def centre(image, size: tuple[int, int]):
    """Evaluation's view of `image` at `size` (h, w): the largest centred crop of that aspect ratio, resized."""
    height, width = size
    scale = min(image.width / width, image.height / height)
    crop_w, crop_h = width * scale, height * scale
    left, top = (image.width - crop_w) / 2, (image.height - crop_h) / 2
    return _resized(image, size, (left, top, left + crop_w, top + crop_h))


def crop_box(width: int, height: int, rng: np.random.Generator) -> tuple[float, float, float, float] | None:
    """Inception's random crop of a `width` × `height` image: the first of 10 draws of area share in `SCALE` and
    log aspect ratio uniform in `RATIO` that fits, at a uniformly random place; None if none fits (torchvision's
    `RandomResizedCrop.get_params`, whose fallback is the centre crop)."""
    area = width * height
    log_ratio = np.log(RATIO)
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        ratio = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    return None


def random_resized(image, size: tuple[int, int], rng: np.random.Generator):
    """Training's view of `image` at `size` (h, w): Inception's random crop (`crop_box`), resized."""
    box = crop_box(image.width, image.height, rng)
    return centre(image, size) if box is None else _resized(image, size, box)


def read_image(path: str, shape: tuple[int, int, int]) -> np.ndarray:
    """The image file at `path` as uint8 `[h, w, c]` of `shape`, converted as evaluation converts an image
    (`centre`). DataError if it cannot be read."""
    height, width, channels = shape
    return as_array(centre(open_image(path, channels), (height, width)), channels)


class ImageFiles:
    """Image files read when a batch needs them (`cnn_jax.data.dataset.Images`): `paths`, their (h, w) `sizes`
    (from their headers) and the `channels` they are read with."""

    def __init__(self, paths: Sequence[str], sizes: np.ndarray, channels: int):
        self.paths, self.sizes, self.channels = np.asarray(paths, dtype=object), np.asarray(sizes).reshape(-1, 2), channels
        one_size = len(self.sizes) and (self.sizes == self.sizes[0]).all()
        height, width = (int(n) for n in self.sizes[0]) if one_size else (None, None)
        self.shape = (len(self.paths), height, width, channels)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index) -> "ImageFiles":
        return ImageFiles(self.paths[index], self.sizes[index], self.channels)

    def open(self, i: int):
        return open_image(self.paths[i], self.channels)
