"""The pictures `experiments.train --log_images` writes to TensorBoard at each evaluation (no matplotlib)."""

import numpy as np

from cnn_jax.analysis.inspect import activations, figures, filters, taps


def snapshot(model, variables, image: np.ndarray) -> dict[str, np.ndarray]:
    """What `experiments.train --log_images` writes to TensorBoard at each evaluation: the first convolution's
    kernels and uint8 `image`'s activation maps in the default layers, as uint8 mosaics `[H, W, c]` by tag."""
    known = taps.layers(model, variables, image.shape)
    kernels = filters.convolution_kernels(variables["params"], known)
    pictures = {}
    if kernels:
        first, kernel = next(iter(kernels.items()))
        pictures[f"filters/{first}"] = figures.tile(figures.displayable(filters.kernel_images(kernel)))
    maps = activations.activation_maps(model, variables, image[None], taps.default_layers(known))
    for name, layer_maps in maps.items():
        pictures[f"activations/{name}"] = figures.tile(figures.per_channel_scaled(layer_maps[0]))
    return {tag: (np.clip(picture, 0, 1) * 255).round().astype(np.uint8) for tag, picture in pictures.items()}
