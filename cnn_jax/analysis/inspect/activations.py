"""Activation maps, and how sparse and how strong each layer's activations are over many images.

    outputs = activation_maps(model, variables, images, ["ConvBlock_0", "ConvBlock_1"])   # {name: [b, h, w, c]}
    stats = layer_statistics(model, variables, test_images)   # {name: {zero_fraction, off_fraction, mean, ...}}

Source document 003 says the maps of deeper layers are harder to read and
sparser; `layer_statistics` measures the second part: the fraction of exact
zeros in each layer's output (after a ReLU, the units that did not fire)
and its mean, over all the images given.
"""

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cnn_jax import data
from cnn_jax.analysis.inspect import taps


def activation_maps(model, variables, images: np.ndarray, layers: Sequence[str]) -> dict[str, np.ndarray]:
    """{name: output `[b, h, w, c]` (`[b, length, c]` along a sequence)} of each of `layers` for `images` as a batch
    holds them (uint8 images, float signals or token ids), from one forward pass."""
    _, outputs = _forward(model, variables, data.normalize(images))
    return {name: np.asarray(outputs[name]) for name in layers}


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, variables, images):
    return taps.forward(model, variables, images)


@functools.partial(jax.jit, static_argnums=0)
def _sums(model, variables, images, mask):
    """Per layer: (zeros, values <= 0, sum, minimum, count) over the images where `mask` is 1."""
    _, outputs = taps.forward(model, variables, images)

    def sums(out):
        weight = mask.reshape(-1, *[1] * (out.ndim - 1))
        per_image = out[0].size
        return (jnp.sum((out == 0) * weight), jnp.sum((out <= 0) * weight), jnp.sum(out * weight),
                jnp.min(jnp.where(weight > 0, out, jnp.inf)), jnp.sum(mask) * per_image)

    return {name: sums(out) for name, out in outputs.items()}


def layer_statistics(model, variables, images: np.ndarray, batch_size: int = 200) -> dict[str, dict]:
    """{name: {'zero_fraction', 'off_fraction', 'mean', 'rectified'}} of every layer over `images` (as a batch holds
    them: uint8 images, signals or token ids), in call order.

    `zero_fraction` is the share of exact zeros among all of the layer's
    values, `off_fraction` the share ≤ 0: those a ReLU applied to this output
    sets to zero (for a BatchNorm before a ReLU, the sparsity of the ReLU's
    output). `rectified` says whether no value was negative (a layer after a
    ReLU, or a pooling of one); there the two fractions are equal.
    """
    order = taps.layers(model, variables, images.shape[1:])
    batches = data.batches(images, np.zeros(len(images), np.int32), batch_size)
    parts = jax.device_get([_sums(model, variables, data.normalize(b["image"]), b["mask"]) for b in batches])
    stats = {}
    for name in order:
        zeros, off, total, minimum, count = np.array([part[name] for part in parts]).T
        n = count.sum()
        stats[name] = {"zero_fraction": float(zeros.sum() / n), "off_fraction": float(off.sum() / n),
                       "mean": float(total.sum() / n), "rectified": bool(minimum.min() >= 0)}
    return stats
