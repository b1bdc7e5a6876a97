"""Feature visualisation: images, optimised from noise, that one channel, one neuron or one class responds to most.

    result = visualise(run.model, run.variables, "ConvBlock_1", None, (28, 28, 1), jax.random.key(0))
    result.images                        # [32, 28, 28, 1] in [0, 1]: image i excites channel result.targets[i]
    result.start, result.end             # [32]: that channel's mean activation on the start noise, and at the end
    visualise(model, variables, None, [3], (28, 28, 1), key, objective="logit")   # what the network takes for class 3

Source document 003 shows each kernel as an input optimised from random
noise. Optimised pixel by pixel, such an image becomes high-frequency noise
that the network answers and nobody can read. What makes it readable (Olah,
Mordvintsev and Schubert 2017, "Feature Visualization", and their Lucid
library), done here:

- The image is its Fourier coefficients, each scaled by 1/frequency (in
  cycles per image), so an Adam step changes every frequency about as much
  as natural images vary in it, instead of mostly the highest ones. A colour
  image's channels are coordinates in a decorrelated colour basis (the
  square root of the colour covariance, `colours`), mixed into RGB; a grey
  image has one channel. A sigmoid maps the result into [0, 1], the models'
  input range (`cnn_jax.data.normalize`).
- Every step sees each image moved, scaled and rotated at random
  (transformation robustness): a pattern that works at one exact pixel
  alignment only does not survive it. Lucid's magnitudes are pixels of
  224-pixel images (a shift of 12 in all); here the shift is a fraction of
  the image side (±5%), so a 28-pixel image moves as much, relative to
  itself. The image is periodic (an inverse FFT), so it wraps around.
- Adam at 0.05 for a few hundred steps.
- Dead units. A channel that the start image leaves at zero everywhere after
  its ReLU has no gradient, and would never move. For the first `warmup`
  steps the objective also counts the layer's pre-activation
  (`pre_activation`: a ConvBlock's BatchNorm). Lucid lets the ReLU's
  gradient through for the same purpose; convolutions and BatchNorms come
  before their ReLU already.
- Diversity (optional): `samples` images per target, the objective lowered
  by `diversity` × the mean cosine similarity of their Gram matrices (the
  "style" of the layer's activations) to the target's other images.

All targets are optimised together: image i of the batch maximises target
i (test-mode BatchNorm keeps the images independent), each step one jitted
program for the whole batch. Each image's noise and transformations come
from the key, its target and its sample number only, so a target's image
does not depend on which other targets share its batch.

A convolution applied to the image itself is linear in it, and so is the
mean of its channel: a flat image maximises it. Visualise such a layer's
block (after its ReLU), or its neurons (objective="neuron").
"""

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cnn_jax.analysis.inspect import taps
from cnn_jax.errors import UserError

OBJECTIVES = ("channel", "neuron", "logit")
"""What an image maximises: a channel's mean over the map, its neuron at the map's centre, or a class logit."""

IMAGENET_COLOURS = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32)
"""The square root of ImageNet's colour covariance as Lucid measured it; columns: luminance, then two opponent
colours. The default colour basis (`colour_basis` measures one from a dataset's images)."""


class Result(NamedTuple):
    """The optimised images and what they reach; image i is for `targets[i]` (a channel, or a class)."""

    images: np.ndarray  # [n, h, w, c] float32 in [0, 1]; `samples` consecutive images per target.
    targets: np.ndarray  # [n] int.
    start: np.ndarray  # [n] the objective on the start noise.
    end: np.ndarray  # [n] the objective on the final image.


@dataclasses.dataclass(frozen=True)
class _Objective:
    """What one step computes, besides its arrays: the compiled step's key."""

    objective: str
    layer: str | None
    stand_in: str | None  # The layer that also counts for the first `warmup` steps (`pre_activation`).
    warmup: int
    diversity: float
    diversity_layer: str | None
    samples: int
    image_shape: tuple[int, int, int]
    decay: float
    learning_rate: float


@dataclasses.dataclass(frozen=True)
class _Draws:
    """How the start noise and every step's transformations are drawn."""

    image_shape: tuple[int, int, int]
    samples: int
    steps: int
    noise: float
    jitter: float
    scale: float
    degrees: float
    learning_rate: float


def visualise(model: nn.Module, variables, layer: str | None, channels: Sequence[int] | None,
              image_shape: tuple[int, int, int], key: jax.Array | int, *, objective: str = "channel", steps: int = 256,
              learning_rate: float = 0.05, samples: int = 1, diversity: float = 0.0, jitter: float = 0.05,
              scale: float = 0.1, degrees: float = 10.0, warmup: int = 32, decay: float = 1.0, noise: float = 0.01,
              colours=None) -> Result:
    """Images [n, h, w, c] in [0, 1] that maximise `objective` for each of `channels` of `layer`, from noise.

    `layer` is a `taps.layers` name; `channels` are indices into its last
    axis (None: all of them). With objective="logit", `layer` is None and
    `channels` are classes (None: all). Each step moves each image by up to
    ±`jitter` of its side, scales it by a factor in 1 ± `scale` and rotates
    it by up to ±`degrees`. `warmup` steps also count the layer's
    pre-activation. `samples` images per target, pushed apart by
    `diversity` > 0. `decay` is the power of 1/frequency the Fourier
    coefficients are scaled by; `noise` their start's standard deviation.
    `colours` is the [3, 3] colour basis of 3-channel images
    (`IMAGENET_COLOURS` if None; `colour_basis` measures a dataset's). The
    start and end values are the objective on the untransformed images.
    UserError for an unknown layer, a channel or class out of range, or a
    setting out of range.
    """
    if objective not in OBJECTIVES:
        raise UserError(f"unknown `objective`='{objective}': choose one of {', '.join(OBJECTIVES)}")
    if steps < 1 or samples < 1 or warmup < 0:
        raise UserError(f"`steps`={steps}, `samples`={samples} and `warmup`={warmup}: steps and samples must be at "
                        "least 1, warmup at least 0")
    if diversity and samples < 2:
        raise UserError(f"`diversity`={diversity} needs `samples` of at least 2 images per target to push apart")
    image_shape = tuple(int(size) for size in image_shape)
    known = taps.layers(model, variables, image_shape)
    if objective == "logit":
        if layer is not None:
            raise UserError(f"the logit objective reads the logits, not `layer`='{layer}': pass layer=None")
        width = jax.eval_shape(lambda x: model.apply(variables, x, train=False),
                               jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)).shape[-1]
        stand_in, what = None, "classes"
        diversity_layer = taps.last_spatial_layer(known) if diversity else None
    else:
        if layer is None:
            raise UserError(f"the {objective} objective needs a `layer`: choose from {', '.join(known)}")
        width = known[taps.check_layers([layer], known)[0]].shape[-1]
        stand_in, what = pre_activation(layer, known), f"channels in layer '{layer}'"
        diversity_layer = layer
    targets = np.arange(width) if channels is None else np.asarray(channels, int).reshape(-1)
    bad = [int(target) for target in targets if not 0 <= target < width]
    if bad or not targets.size:
        raise UserError(f"channel {bad[0] if bad else '(none)'} is not one of the {width} {what}: choose channels "
                        f"from 0 to {width - 1}")
    if colours is None:
        colours = IMAGENET_COLOURS
    colours = jnp.asarray(colours, jnp.float32)
    if image_shape[-1] == 3 and colours.shape != (3, 3):
        raise UserError(f"`colours` has shape {tuple(colours.shape)}: a colour basis is a 3×3 matrix")
    goal = _Objective(objective, layer, stand_in, warmup, diversity, diversity_layer, samples, image_shape, decay,
                      learning_rate)
    draws = _Draws(image_shape, samples, steps, noise, jitter, scale, degrees, learning_rate)
    per_image = jnp.asarray(np.repeat(targets, samples), jnp.int32)
    images, start, end = _render(model, variables, per_image, _as_key(key), colours, goal, draws)
    return Result(np.asarray(images), np.asarray(per_image), np.asarray(start), np.asarray(end))


def pre_activation(layer: str, known: dict[str, taps.Layer]) -> str | None:
    """The last layer inside `layer` with as many channels (`known` from `taps.layers`), or None: what the
    warm-up counts besides `layer`.

    For a ConvBlock that is its value before the activation: its BatchNorm
    (its convolution where it has none). For a ResNet block, one of the two
    terms of the sum it applies its ReLU to: the last computed, its main
    path's last ConvBN, or its shortcut's where it has one. None for a
    convolution or a BatchNorm, which come before their ReLU, and for an
    Inception block, whose branches are each narrower than their concatenation.
    """
    width = known[layer].shape[-1]
    inside = [name for name, found in known.items() if name.startswith(layer + "/") and found.shape[-1] == width]
    return inside[-1] if inside else None


def colour_basis(images) -> np.ndarray:
    """The [3, 3] colour basis of `images` [..., 3] (uint8, or floats in [0, 1]): the square root of their colour
    covariance, its columns the principal colours (strongest first), scaled so the longest column is 1."""
    pixels = np.asarray(images).reshape(-1, 3).astype(np.float64)
    if np.asarray(images).dtype == np.uint8:
        pixels /= 255.0
    values, vectors = np.linalg.eigh(np.cov(pixels, rowvar=False))
    root = vectors[:, ::-1] * np.sqrt(np.maximum(values[::-1], 0.0))
    return (root / max(np.linalg.norm(root, axis=0).max(), 1e-12)).astype(np.float32)


def _as_key(key) -> jax.Array:
    """A typed PRNG key, from a seed or either kind of key JAX makes (`jax.random.key`, the legacy `PRNGKey`)."""
    if isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


def frequency_scale(height: int, width: int, decay: float = 1.0) -> np.ndarray:
    """[height, width // 2 + 1]: 1 / frequency ** `decay` for each coefficient of `jnp.fft.rfft2`'s layout, the
    frequency in cycles per image (of the longer side) and at least 1, so the constant term is scaled as the
    lowest frequencies are."""
    fy, fx = np.meshgrid(np.fft.fftfreq(height), np.fft.rfftfreq(width), indexing="ij")
    cycles = np.sqrt(fy * fy + fx * fx) * max(height, width)
    return (1.0 / np.maximum(cycles, 1.0) ** decay).astype(np.float32)


def _to_images(coefficients: jnp.ndarray, colours: jnp.ndarray, goal: _Objective) -> jnp.ndarray:
    """Images [n, h, w, c] in [0, 1] from Fourier coefficients [n, h, w // 2 + 1, c, 2] (real, imaginary).

    The coefficients are scaled by `frequency_scale` and, through the
    orthonormal inverse FFT, by a gain of max(h, w) / 4: one unit of a
    coefficient at f cycles per image moves pixels by about 1/(2f) at any
    resolution (Lucid's scaling at 224 pixels). Three channels are mixed
    into RGB by the colour basis; then a sigmoid.
    """
    h, w, c = goal.image_shape
    scale = jnp.asarray(frequency_scale(h, w, goal.decay))[None, :, :, None]
    spectrum = jax.lax.complex(coefficients[..., 0], coefficients[..., 1]) * scale
    x = jnp.fft.irfft2(spectrum, s=(h, w), axes=(1, 2), norm="ortho") * (max(h, w) / 4.0)
    if c == 3:
        x = x @ (colours / jnp.linalg.norm(colours, axis=0).max()).T
    return jax.nn.sigmoid(x)


def _warp(images: jnp.ndarray, matrix: jnp.ndarray, shift: jnp.ndarray) -> jnp.ndarray:
    """`images` [n, h, w, c] resampled: output pixel p of image i takes the (bilinearly interpolated) value at
    matrix[i] · (p − centre) + centre − shift[i], wrapping around the edges (the Fourier image is periodic).

    Bilinear interpolation is a sum over source pixels weighted by hat
    functions max(0, 1 − |distance|) per axis, so the warp is two small
    contractions (no gather, whose gradient, a scatter, XLA compiles and runs
    slowly on a CPU).
    """
    n, h, w, c = images.shape
    centre = jnp.array([(h - 1) / 2, (w - 1) / 2])
    grid = jnp.stack(jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij"), -1).reshape(h * w, 2) - centre
    source = jnp.einsum("nij,pj->npi", matrix, grid) + (centre - shift)[:, None, :]  # [n, h·w, 2]

    def hat(position, size):  # [n, h·w, size]: each source row (column) pixel's weight.
        distance = position[..., None] - jnp.arange(size)
        distance -= size * jnp.round(distance / size)  # Around the torus: within ±size/2 (`%` is slower).
        return jnp.maximum(1.0 - jnp.abs(distance), 0.0)

    rows = jnp.einsum("npx,nyxc->npyc", hat(source[..., 1], w), images)  # Interpolated along x, in every row.
    return jnp.einsum("npy,npyc->npc", hat(source[..., 0], h), rows).reshape(n, h, w, c)


def _random_transforms(keys: jax.Array, draws: _Draws) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(matrix [steps, n, 2, 2], shift [steps, n, 2]) for `_warp` at every step, image i's from `keys[i]`: a
    rotation by up to ±`degrees`, a scaling by 1 ± `scale` and a shift by up to ±`jitter` of the image's side,
    each uniform. Drawn before the optimisation, which then draws nothing."""
    h, w, _ = draws.image_shape
    uniform = jax.vmap(lambda key: jax.random.uniform(key, (draws.steps, 4), minval=-1.0, maxval=1.0))(keys)
    angle, zoom = uniform[..., 0] * math.radians(draws.degrees), 1.0 + uniform[..., 1] * draws.scale
    cos, sin = jnp.cos(angle) / zoom, jnp.sin(angle) / zoom
    matrix = jnp.stack([jnp.stack([cos, -sin], -1), jnp.stack([sin, cos], -1)], -2)
    shift = uniform[..., 2:] * draws.jitter * jnp.array([h, w], jnp.float32)
    return jnp.swapaxes(matrix, 0, 1), jnp.swapaxes(shift, 0, 1)


def _read(out: jnp.ndarray, objective: str, targets: jnp.ndarray) -> jnp.ndarray:
    """[n]: each image's target channel of a layer's output [n, h, w, C]: its mean, or its value at the centre."""
    if objective == "neuron":
        values = out[:, out.shape[1] // 2, out.shape[2] // 2, :]
    else:
        values = out.mean(axis=(1, 2))
    return jnp.take_along_axis(values, targets[:, None], axis=1)[:, 0]


def _similarity(out: jnp.ndarray, samples: int) -> jnp.ndarray:
    """[n]: each image's mean cosine similarity of its Gram matrix of `out` [n, h, w, C] to the other images of
    its target (`samples` consecutive images)."""
    n, h, w, c = out.shape
    flat = out.reshape(n, h * w, c)
    gram = jnp.einsum("npc,npd->ncd", flat, flat).reshape(n // samples, samples, c * c)
    gram = gram / (jnp.linalg.norm(gram, axis=-1, keepdims=True) + 1e-8)
    similarity = jnp.einsum("gid,gjd->gij", gram, gram)
    others = (similarity.sum(-1) - jnp.einsum("gii->gi", similarity)) / (samples - 1)
    return others.reshape(n)


def _objective(model: nn.Module, variables, images: jnp.ndarray, targets: jnp.ndarray, goal: _Objective,
               warm: jnp.ndarray | bool = False) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(what the optimiser maximises, summed over the images; each image's objective [n])."""
    logits, outputs = taps.forward(model, variables, images)
    if goal.objective == "logit":
        value = jnp.take_along_axis(logits, targets[:, None], axis=1)[:, 0]
    else:
        value = _read(outputs[goal.layer], goal.objective, targets)
    total = value.sum()
    if goal.stand_in is not None and goal.warmup:
        total += jnp.where(warm, _read(outputs[goal.stand_in], goal.objective, targets).sum(), 0.0)
    if goal.diversity:
        total -= goal.diversity * _similarity(outputs[goal.diversity_layer], goal.samples).sum()
    return total, value


def _render(model: nn.Module, variables, targets: jnp.ndarray, key: jax.Array, colours: jnp.ndarray,
            goal: _Objective, draws: _Draws) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """(images, objective at the start, objective at the end): `draws.steps` calls of one jitted step.

    The loop is Python's: XLA's CPU runtime runs a step inside a while loop
    (`lax.scan`) several times slower than the same step on its own. Every
    input is committed to the variables' device, so that the step's first
    call and the later ones (on its committed outputs) share one compiled
    program; each step's transformations come from the host.
    """
    device = next(iter(jax.tree.leaves(variables)[0].devices()))
    variables, targets, key, colours = jax.device_put((variables, targets, key, colours), device)
    coefficients, state, step, transforms = _draw(key, targets, draws=draws)
    start = _evaluate(coefficients, variables, targets, colours, model=model, goal=goal)[1]
    for matrix, shift in zip(*jax.device_get(transforms)):  # NumPy's slices: a device array's cost a dispatch each.
        coefficients, state, step = _step(coefficients, state, step, matrix, shift, variables, targets, colours,
                                          model=model, goal=goal)
    images, end = _evaluate(coefficients, variables, targets, colours, model=model, goal=goal)
    return images, start, end


# Run once, and mostly random bits: XLA's backend optimisations of threefry cost seconds and save nothing.
@functools.partial(jax.jit, static_argnames=("draws",),
                   compiler_options={"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})
def _draw(key: jax.Array, targets: jnp.ndarray, *, draws: _Draws):
    """(start coefficients, Adam's state, the step count 0, every step's transforms), each image's from the key,
    its target and its sample number."""
    h, w, c = draws.image_shape
    sample = jnp.arange(targets.shape[0]) % draws.samples
    keys = jax.vmap(lambda t, s: jax.random.fold_in(jax.random.fold_in(key, t), s))(targets, sample)
    noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 0), (h, w // 2 + 1, c, 2)))(keys)
    coefficients = noise * draws.noise
    transforms = _random_transforms(jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys), draws)
    return coefficients, optax.adam(draws.learning_rate).init(coefficients), jnp.zeros((), jnp.int32), transforms


@functools.partial(jax.jit, static_argnames=("model", "goal"), donate_argnums=(0, 1))
def _step(coefficients, state, step, matrix, shift, variables, targets, colours, *, model, goal):
    """One Adam step of every image on its objective, seen through this step's transformations."""

    def loss(coefficients):
        images = _warp(_to_images(coefficients, colours, goal), matrix, shift)
        return -_objective(model, variables, images, targets, goal, warm=step < goal.warmup)[0]

    changes, state = optax.adam(goal.learning_rate).update(jax.grad(loss)(coefficients), state, coefficients)
    return optax.apply_updates(coefficients, changes), state, step + 1


@functools.partial(jax.jit, static_argnames=("model", "goal"))
def _evaluate(coefficients, variables, targets, colours, *, model, goal):
    """(the images, the objective on them, untransformed)."""
    images = _to_images(coefficients, colours, goal)
    return images, _objective(model, variables, images, targets, goal)[1]
