"""The pictures `experiments.train --log_images` writes to TensorBoard at each evaluation (no matplotlib)."""

import numpy as np

from cnn_jax.analysis.inspect import activations, figures, filters, taps


def snapshot(model, variables, image: np.ndarray) -> dict[str, np.ndarray]:
    """What `experiments.train --log_images` writes to TensorBoard at each evaluation: the first convolution's
    kernels and `image`'s activation maps in the default layers (one example as a batch holds it: a uint8 image,
    a signal or token ids), as uint8 pictures `[H, W, c]` by tag. An image model's are mosaics of a picture per
    channel; a sequence model's are a row per kernel along its taps, and a row per channel along the positions."""
    known = taps.layers(model, variables, image.shape)
    kernels = filters.convolution_kernels(variables["params"], known)
    pictures = {}
    if kernels:
        first, kernel = next(iter(kernels.items()))
        shown = figures.displayable(filters.kernel_images(kernel))  # [out, kh, kw, c] or [out, k, c].
        pictures[f"filters/{first}"] = figures.tile(shown) if shown.ndim == 4 else shown
    maps = activations.activation_maps(model, variables, image[None], taps.default_layers(known))
    for name, layer_maps in maps.items():
        channels = figures.per_channel_scaled(layer_maps[0])  # [c, h, w, 1] or [c, length, 1].
        pictures[f"activations/{name}"] = figures.tile(channels) if channels.ndim == 4 else channels
    return {tag: (np.clip(picture, 0, 1) * 255).round().astype(np.uint8) for tag, picture in pictures.items()}
