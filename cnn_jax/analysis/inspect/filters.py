"""A network's filters as pictures, hand-made edge filters, and how much the first layer's filters look like edges.

    kernel = convolution_kernels(params, taps.layers(model, variables, shape))["ConvBlock_0/Conv_0"]  # HWIO
    pictures = kernel_images(kernel)              # [out, kh, kw, in] in [0, 1], 0.5 = a zero weight
    norms = kernel_norms(kernel)                  # [out, in]: which inputs each output channel listens to
    responses = apply_filters(grey_image, HAND_MADE)   # {name: [h, w]}, through cnn_jax's own convolution
    scores = edge_scores(kernel, derivative_of_gaussian_bank(5))   # [out]: best |cosine| with an oriented edge

Source document 003 shows four hand-made 3×3 filters (horizontal,
vertical and the two diagonal edges) on a grey image, and says that a
CNN's first layer learns edge detectors. `edge_scores` measures that
claim: a filter's best absolute cosine similarity with a bank of oriented
first and second derivatives of Gaussians of the same size (a sign flip is
the same edge, dark-to-light instead of light-to-dark), to compare between
the trained filters and the same filters at initialisation.
"""

import jax.numpy as jnp
import numpy as np
from jax import lax

from cnn_jax.analysis.inspect import taps
from cnn_jax.kernels import dispatch

HAND_MADE = {
    # Source 003's four: each responds where brightness changes across its orientation.
    "horizontal edge": np.array([[1, 1, 1], [0, 0, 0], [-1, -1, -1]]),
    "vertical edge": np.array([[1, 0, -1], [1, 0, -1], [1, 0, -1]]),
    "diagonal edge (\\)": np.array([[0, 1, 1], [-1, 0, 1], [-1, -1, 0]]),
    "diagonal edge (/)": np.array([[1, 1, 0], [1, 0, -1], [0, -1, -1]]),
    "Sobel x": np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]]),
    "Sobel y": np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]]),
    "Laplacian": np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]]),
}
"""3×3 filters by name, as a convolution applies them (cross-correlation, as in every CNN); each sums to zero, so
a flat image gives zero."""


def convolution_kernels(params, known: dict[str, taps.Layer]) -> dict[str, np.ndarray]:
    """{layer name: HWIO kernel (WIO along a sequence)} of every convolution among the `known` layers
    (`taps.layers`), in call order, from `params` (the variables' 'params')."""
    kernels = {}
    for name, layer in known.items():
        if layer.kind == "Conv":
            subtree = params
            for part in name.split("/"):
                subtree = subtree[part]
            kernels[name] = np.asarray(subtree["kernel"])
    return kernels


def kernel_images(kernel: np.ndarray) -> np.ndarray:
    """HWIO `kernel` as one picture per output channel, `[out, kh, kw, in]` (a WIO kernel along a sequence: `[out,
    k, in]`), each scaled to [0, 1] around 0.5.

    Each filter is divided by its own largest |weight|, so zero is mid-grey,
    positive weights light and negative dark (in RGB, per colour).
    """
    pictures = np.moveaxis(kernel, -1, 0)
    scale = np.abs(pictures).max(axis=tuple(range(1, pictures.ndim)), keepdims=True)
    return 0.5 + 0.5 * pictures / np.where(scale > 0, scale, 1)


def kernel_norms(kernel: np.ndarray) -> np.ndarray:
    """The L2 norm of each (output, input) channel pair's spatial filter (HWIO or WIO `kernel`), `[out, in]`: for a
    deep layer, which input channels each output channel listens to."""
    return np.sqrt((kernel.astype(np.float64) ** 2).sum(axis=tuple(range(kernel.ndim - 2)))).T


def apply_filters(image: np.ndarray, bank: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """{name: response `[h, w]`} of each filter of `bank` on a grey float `image` `[h, w]`, zero-padded to keep the
    size, through cnn_jax's convolution (`dispatch.conv_general_dilated`, as every layer)."""
    kernels = np.stack(list(bank.values()), axis=-1).astype(np.float32)[:, :, None, :]  # HWIO, one input channel.
    kh, kw = kernels.shape[:2]
    numbers = lax.conv_dimension_numbers((1, *image.shape, 1), kernels.shape, ("NHWC", "HWIO", "NHWC"))
    out = dispatch.conv_general_dilated(jnp.asarray(image, jnp.float32)[None, :, :, None], jnp.asarray(kernels),
                                        (1, 1), ((kh // 2, kh // 2), (kw // 2, kw // 2)),
                                        dimension_numbers=numbers)
    return {name: np.asarray(out[0, :, :, k]) for k, name in enumerate(bank)}


def derivative_of_gaussian_bank(size: int, orientations: int = 8, sigmas=(0.5, 0.8, 1.2)) -> np.ndarray:
    """Oriented first and second derivatives of Gaussians on a `size`×`size` grid, `[filters, size, size]`, each of
    unit norm and zero mean: edges and bars at `orientations` angles in [0, π) and each scale in `sigmas` (in
    units of the filter's half-width)."""
    half = (size - 1) / 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1] / max(half, 1)
    bank = []
    for sigma in sigmas:
        gauss = np.exp(-(x**2 + y**2) / (2 * sigma**2))
        for angle in np.arange(orientations) * np.pi / orientations:
            u = x * np.cos(angle) + y * np.sin(angle)  # The coordinate across the edge.
            for filt in (-u * gauss, (u**2 / sigma**2 - 1) * gauss):
                filt = filt - filt.mean()
                norm = np.linalg.norm(filt)
                if norm > 1e-8:
                    bank.append(filt / norm)
    return np.stack(bank)


def edge_scores(kernel: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """Each output filter's best |cosine similarity| with a filter of `bank` (`[filters, kh, kw]`), `[out]`.

    A filter over several input channels (RGB) is scored on each input
    channel's slice and keeps its best: an edge in one colour is an edge.
    The filter's mean is removed first, as the bank's is: a constant offset
    only responds to brightness.
    """
    kh, kw, cin, cout = kernel.shape
    slices = np.moveaxis(kernel, (2, 3), (0, 1)).reshape(cin, cout, kh * kw).astype(np.float64)
    slices = slices - slices.mean(axis=-1, keepdims=True)
    norms = np.linalg.norm(slices, axis=-1, keepdims=True)
    unit = slices / np.where(norms > 0, norms, 1)
    cosines = np.abs(unit @ bank.reshape(len(bank), -1).T)  # [in, out, filters]
    return cosines.max(axis=(0, 2))
