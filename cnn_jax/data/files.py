"""Image files as a model's input: any format Pillow reads, at any size, converted to a run's image shape."""

import numpy as np

from cnn_jax.data.dataset import DataError


def read_image(path: str, shape: tuple[int, int, int]) -> np.ndarray:
    """The image file at `path` as uint8 `[h, w, c]` of `shape`: grey or RGB as `c` is 1 or 3, the largest centred
    crop of the shape's aspect ratio, resized with a Lanczos filter. DataError if it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    height, width, channels = shape
    if channels not in (1, 3):
        raise DataError(f"cannot convert {path} to {channels} channels: only grey (1) or RGB (3) images")
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
    except FileNotFoundError:
        raise DataError(f"image file {path} does not exist") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"cannot read image file {path} ({type(e).__name__}); give a JPEG, PNG or another format "
                        "Pillow reads") from None
    scale = min(image.width / width, image.height / height)
    crop_w, crop_h = width * scale, height * scale
    left, top = (image.width - crop_w) / 2, (image.height - crop_h) / 2
    resized = image.resize((width, height), Image.Resampling.LANCZOS, box=(left, top, left + crop_w, top + crop_h))
    return np.asarray(resized, np.uint8).reshape(height, width, channels)
