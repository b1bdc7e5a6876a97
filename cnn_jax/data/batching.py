"""From arrays to training steps: pixel scaling, mirroring, each epoch's order and the batches themselves."""

from collections.abc import Iterator

import numpy as np


def normalize(inputs):
    """A model's input from a batch's: uint8 pixels [..., H, W, C] -> float32 in [0, 1]; signals (float32) and
    token ids (int32) as they are. Works on NumPy and JAX arrays."""
    return inputs.astype("float32") / 255.0 if inputs.dtype == np.uint8 else inputs


def random_flip(images, key):
    """Mirrors each image of `[b, h, w, c]` left-right with probability 1/2 (a JAX function)."""
    import jax

    flip = jax.random.bernoulli(key, 0.5, (images.shape[0], 1, 1, 1))
    return jax.numpy.where(flip, images[:, :, ::-1, :], images)


def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The order of the training examples in `epoch`: a pure function of (seed, epoch)."""
    return np.random.default_rng((seed, epoch)).permutation(num_examples)


def batches(images: np.ndarray, labels: np.ndarray, batch_size: int, order: np.ndarray | None = None,
            part: tuple[int, int] = (0, 1)) -> Iterator[dict]:
    """Yields {'image', 'label'} batches in `order` (default: as stored).

    With `order` (training), the last incomplete batch is dropped so that every
    step sees the same shape. Without it (evaluation), every example is yielded
    once: the last batch is padded to full size and carries a 0/1 'mask'.
    `part=(i, n)` yields only the i-th of n equal slices of each batch (one
    process's share of a batch split over n processes; `batch_size` is the
    whole batch's size and n must divide it).
    """
    index, count = part
    share = slice(index * batch_size // count, (index + 1) * batch_size // count)
    if order is not None:
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[start : start + batch_size][share]
            yield {"image": images[idx], "label": labels[idx]}
        return
    for start in range(0, len(images), batch_size):
        image, label = images[start : start + batch_size], labels[start : start + batch_size]
        pad = batch_size - len(label)
        mask = np.concatenate([np.ones(len(label), np.float32), np.zeros(pad, np.float32)])
        if pad:
            image = np.concatenate([image, np.zeros((pad, *image.shape[1:]), image.dtype)])
            label = np.concatenate([label, np.zeros(pad, label.dtype)])
        yield {"image": image[share], "label": label[share], "mask": mask[share]}
