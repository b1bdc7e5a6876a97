"""Which pixels, time steps or tokens decide a class: attribution maps of one logit per example, at the input's
resolution.

    maps = attribution.grad_cam(model, variables, images, classes)            # [b, h, w] float32
    maps = attribution.lookup("integrated_gradients")(model, variables, images, classes, steps=128)
    total, change = attribution.completeness(model, variables, images, classes)  # Σ IG ≈ f(x) − f(baseline)
    scores = attribution.saliency(model, variables, token_ids, classes)      # [b, length]: a score per token

Every method is `f(model, variables, inputs, classes, **options) -> maps`:
`inputs` what the model takes (`cnn_jax.models.inputs_of`): float images
`[b, h, w, c]` (`cnn_jax.data.normalize`), float signals `[b, length, c]` or
int token ids `[b, length]`; `classes` int `[b]` (the logit explained for
each example; `predicted` gives the network's own choice); maps `[b, h, w]`
or `[b, length]`, a value per pixel, time step or token. Each is jitted with
the model and its options static, so new variables of the same shapes (a
cascading randomisation) reuse the compiled program, and each can be called
inside `jax.jit` or `jax.vmap` (over classes, say).

Token ids are integers, without a gradient: a text is explained through its
word vectors as the network looks them up (`taps.embedding_layer`, `[b,
length, features]`), which the methods below treat as a sequence's channels,
except that a magnitude over them is their L2 norm. Integrated gradients'
zero baseline is then the text of padding only, whose vectors are zero. A
padding token gets 0 from every method: `cnn_jax.layers.Embedding` pins its
vector at zero after the lookup, so no change there reaches the network.

- saliency (Simonyan et al. 2014): max over channels of |∂ logit / ∂ pixel|; ≥ 0.
- smoothgrad (Smilkov et al. 2017): the gradient averaged over `samples`
  copies of the image with Gaussian noise (std `noise` × the image's value
  range), then max |·| over channels; ≥ 0.
- gradient_times_input (Shrikumar et al. 2016): ∂ logit / ∂ x ⊙ x summed
  over channels; signed. The first-order share of each pixel in f(x) − f(0).
- integrated_gradients (Sundararajan et al. 2017): (x − baseline) ⊙ the mean
  gradient along the straight path from the baseline to x, summed over
  channels; signed. It sums over the image to f(x) − f(baseline) up to the
  quadrature error (completeness, which `completeness` measures). The
  baseline is black (zeros) or the image blurred (a Gaussian of
  `blur_sigma` pixels, Xu et al. 2020: "no information" without
  introducing a colour). The path integral is the midpoint rule over
  `steps` points: the gradient of a ReLU network is piecewise constant along
  the path, which Gauss-Legendre's or the trapezoid's higher order cannot
  use (on the seed network at 64 steps the midpoint rule's worst error over
  64 test images was 0.7% of f(x) − f(baseline), Gauss-Legendre's 1.1%, the
  trapezoid's 1.5%).
- grad_cam (Selvaraju et al. 2017): ReLU(Σ_k α_k A_k) for a layer's output A
  (default `taps.last_spatial_layer`, the last block of a ConvNet, ResNet
  or GoogLeNet; or the `layer` named), α_k the spatial mean of
  ∂ logit / ∂ A_k, upsampled bilinearly; ≥ 0. The gradient is the logit's,
  not the softmax's, whose gradient mixes in every other class's evidence.
  Its means suit a head that averages the map (ResNet, GoogLeNet); where a
  dense layer reads the flattened map (the seed ConvNet), a class's weights
  depend on the position, their means often come out negative everywhere,
  and the map is all zeros (for the class it predicts, on 44 of the first
  100 test images after the headline run's 10 epochs; 62 after 600 steps).
- hires_cam (Draelos & Carin 2020): Grad-CAM with each position weighted by
  its own gradient; for a dense head on the flattened map, each position's
  exact share of the logit (minus the bias); ≥ 0.
- occlusion (Zeiler & Fergus 2014): how much the logit drops when a
  `patch` × `patch` square is set to `fill`, the square sliding by `stride`
  (the last one flush with the edge); each pixel gets the mean drop of the
  squares covering it; signed (negative where hiding a pixel helps the class).
  Along a sequence the square is a window of `patch` steps; over token ids,
  by default one token (its vector set to zero: the token made padding, Li
  et al. 2016's erasure).

Along a signal every method is the same with time steps for pixels; Grad-CAM
upsamples linearly.

Logits come from `taps.forward`: test mode, XLA's own operations. Test mode
makes the examples independent, so one backward pass of the chosen logits'
sum gives every example's gradient. The sampled methods (smoothgrad,
integrated_gradients, occlusion) run `chunk` samples (noisy copies, path
points, square positions) of the whole batch at a time, vmapped, and add
them up as they go: memory is about `chunk` forward-and-backward passes of
the batch, whatever `samples`, `steps` or the number of squares.
"""

import functools
import itertools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cnn_jax import data, models
from cnn_jax.analysis.inspect import taps
from cnn_jax.errors import UserError

Method = Callable[..., jnp.ndarray]
"""`f(model, variables, inputs [b, ...], classes [b], **options) -> maps [b, h, w] or [b, length]`."""


def default_key():
    """The key of the randomised methods and checks when none is given: `jax.random.key(0, impl="rbg")`, whose
    generator XLA compiles in a fraction of the time of threefry's, the usual keys'."""
    return jax.random.key(0, impl="rbg")


def _jit(*options: str):
    """`jax.jit` with the model and the named options static."""
    return functools.partial(jax.jit, static_argnames=("model", *options))


INPUTS = {data.IMAGES: (4, jnp.floating, "float images [batch, height, width, channels] (cnn_jax.data.normalize "
                                        "of the uint8 images)"),
          data.SIGNALS: (3, jnp.floating, "float signals [batch, length, channels]"),
          data.TOKENS: (2, jnp.integer, "integer token ids [batch, length]")}
"""What the methods take, by what the model takes: (rank, dtype, in words)."""


def _check(model: nn.Module, inputs: jnp.ndarray, classes: jnp.ndarray) -> jnp.ndarray:
    """`classes` as int32, if `inputs` is a batch of what `model` takes (`INPUTS`) and `classes` one int per
    example."""
    rank, dtype, words = INPUTS[models.inputs_of(model)]
    if inputs.ndim != rank or not jnp.issubdtype(inputs.dtype, dtype):
        raise UserError(f"`inputs` must be {words}, not {inputs.dtype} of shape {tuple(inputs.shape)}")
    if classes.shape != inputs.shape[:1] or not jnp.issubdtype(classes.dtype, jnp.integer):
        raise UserError(f"`classes` must be one int per example ({inputs.shape[0]}), not {classes.dtype} of shape "
                        f"{tuple(classes.shape)}")
    return classes.astype(jnp.int32)


def _reads_tokens(model: nn.Module) -> bool:
    return models.inputs_of(model) == data.TOKENS


def _chosen(logits: jnp.ndarray, classes: jnp.ndarray) -> jnp.ndarray:
    return jnp.take_along_axis(logits, classes[:, None], axis=1)[:, 0]


def target_logits(model: nn.Module, variables, inputs: jnp.ndarray, classes: jnp.ndarray) -> jnp.ndarray:
    """`[b]`: each example's logit of its class, in test mode."""
    return _chosen(taps.forward(model, variables, inputs)[0], classes)


@_jit()
def logits(model: nn.Module, variables, inputs: jnp.ndarray) -> jnp.ndarray:
    """`[b, classes]`: the logits, in test mode."""
    return taps.forward(model, variables, inputs)[0]


@_jit()
def predicted(model: nn.Module, variables, inputs: jnp.ndarray) -> jnp.ndarray:
    """`[b]` int32: the class each example is given (the largest logit)."""
    return jnp.argmax(taps.forward(model, variables, inputs)[0], axis=-1).astype(jnp.int32)


Logits = Callable[[jnp.ndarray], jnp.ndarray]
"""x -> logits `[b, classes]`: the network as a function of what the methods differentiate."""


def _differentiable(model: nn.Module, variables, inputs: jnp.ndarray) -> tuple[jnp.ndarray, Logits]:
    """(x, f): what the methods differentiate and the logits as a function of it, in test mode. Float images and
    signals: themselves and the network. Token ids: their word vectors as looked up (`taps.embedding_layer`),
    `[b, length, features]`, and the network with x in their place."""
    if not _reads_tokens(model):
        return inputs, lambda x: taps.forward(model, variables, x)[0]
    layer = taps.embedding_layer(taps.layers(model, variables, inputs.shape[1:]))
    vectors = taps.forward(model, variables, inputs)[1][layer]
    return vectors, lambda x: taps.forward(model, variables, inputs, edit=(layer, lambda _: x))[0]


def _gradients(f: Logits, x: jnp.ndarray, classes: jnp.ndarray) -> jnp.ndarray:
    """∂ (example i's logit of classes[i]) / ∂ x_i, shaped as x, in one backward pass."""
    return jax.grad(lambda x: _chosen(f(x), classes).sum())(x)


def _magnitude(model: nn.Module, gradients: jnp.ndarray) -> jnp.ndarray:
    """Each position's size of `gradients` `[b, ..., c]`: max |·| over channels; over a word vector, its L2
    norm."""
    return jnp.linalg.norm(gradients, axis=-1) if _reads_tokens(model) else jnp.abs(gradients).max(axis=-1)


UNROLLED = 8
"""Rounds up to which `_weighted_sum` writes its rounds out one after another rather than as a loop: on XLA's
CPU backend the seed network's gradient ran 6× slower inside a loop (`lax.scan`) than outside, and each round
written out adds only its share of compile time."""


def _weighted_sum(f: Callable[[jnp.ndarray], jnp.ndarray], weights: np.ndarray, chunk: int) -> jnp.ndarray:
    """Σ_i weights[i] · f(i) over i < len(weights), `chunk` evaluations at a time (vmapped), one round after
    another, so that memory holds one round's.

    The last round is padded with indices of weight 0, so `f` must accept
    indices up to a multiple of `chunk` (a clamped gather does). Up to
    `UNROLLED` rounds are written out, each made to wait for the sum so far
    by an index that depends on it (plus 0): XLA would otherwise run them
    side by side, and 4 rounds of integrated gradients of 100 seed-network
    images took 3.3× one round's memory (1.1 GiB); so they take 1.03×.
    More rounds are a loop. (`lax.optimization_barrier` did not order them
    on XLA's CPU backend.)
    """
    if chunk < 1:
        raise UserError(f"`chunk`={chunk} must be at least 1")
    count = len(weights)
    chunk = min(chunk, count)
    rounds = -(-count // chunk)
    padded = np.zeros(rounds * chunk, np.float32)
    padded[:count] = weights
    indices = jnp.arange(rounds * chunk).reshape(rounds, chunk)
    weights = jnp.asarray(padded.reshape(rounds, chunk))

    def add(total, round_):
        index, weight = round_
        return total + jnp.tensordot(weight, jax.vmap(f)(index), axes=1), None

    shape = jax.eval_shape(f, jnp.zeros((), jnp.int32))
    total = jnp.zeros(shape.shape, shape.dtype)
    if rounds > UNROLLED:
        return lax.scan(add, total, (indices, weights))[0]
    for index, weight in zip(indices, weights):
        first = total.ravel()[0]
        index = index + (first != first).astype(index.dtype)  # +0, but only once the sum so far is known.
        total, _ = add(total, (index, weight))
    return total


@_jit()
def saliency(model: nn.Module, variables, inputs: jnp.ndarray, classes: jnp.ndarray) -> jnp.ndarray:
    """Max over channels of |∂ logit / ∂ pixel| (Simonyan et al. 2014), or over a token's word vector the
    gradient's L2 norm: `[b, h, w]` or `[b, length]`, ≥ 0."""
    classes = _check(model, inputs, classes)
    x, f = _differentiable(model, variables, inputs)
    return _magnitude(model, _gradients(f, x, classes))


@_jit()
def gradient_times_input(model: nn.Module, variables, inputs: jnp.ndarray, classes: jnp.ndarray) -> jnp.ndarray:
    """∂ logit / ∂ x ⊙ x summed over channels (Shrikumar et al. 2016), or over a token's word vector the dot
    product of the gradient and the vector: `[b, h, w]` or `[b, length]`, signed."""
    classes = _check(model, inputs, classes)
    x, f = _differentiable(model, variables, inputs)
    return (_gradients(f, x, classes) * x).sum(axis=-1)


def _over_positions(x: jnp.ndarray) -> tuple[int, ...]:
    """The axes of `x` `[b, ..., c]` between the examples and the channels."""
    return tuple(range(1, x.ndim - 1))


@_jit("samples", "noise", "chunk")
def smoothgrad(model: nn.Module, variables, inputs: jnp.ndarray, classes: jnp.ndarray, key=None,
               samples: int = 25, noise: float = 0.15, chunk: int = 16) -> jnp.ndarray:
    """Max over channels of |the gradient averaged over `samples` noisy copies| (Smilkov et al. 2017), or over a
    token's word vector its L2 norm; ≥ 0.

    The noise is Gaussian with std `noise` × (max − min) of each image (of
    each text's word vectors), the paper's 10-20%; `key` draws it, the same
    draws for every call with the same key (default `default_key()`).
    """
    classes = _check(model, inputs, classes)
    if samples < 1:
        raise UserError(f"`samples`={samples} must be at least 1")
    key = default_key() if key is None else key
    x, f = _differentiable(model, variables, inputs)
    every = (*_over_positions(x), x.ndim - 1)
    spread = noise * (x.max(axis=every, keepdims=True) - x.min(axis=every, keepdims=True))

    def noisy_gradient(i):
        shaken = x + spread * jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
        return _gradients(f, shaken, classes)

    return _magnitude(model, _weighted_sum(noisy_gradient, np.full(samples, 1 / samples), chunk))


BASELINES = ("black", "blurred")


def blur(images: jnp.ndarray, sigma: float) -> jnp.ndarray:
    """`images` `[b, ..., c]` under a Gaussian blur of std `sigma` pixels (time steps), along each axis between the
    examples and the channels, the weights renormalised at the edges."""
    if sigma <= 0:
        raise UserError(f"`blur_sigma`={sigma} must be positive")

    def matrix(size):
        offsets = np.arange(size)[:, None] - np.arange(size)[None, :]
        weights = np.exp(-0.5 * (offsets / sigma) ** 2)
        return jnp.asarray(weights / weights.sum(axis=1, keepdims=True), images.dtype)

    for axis in _over_positions(images):
        images = jnp.moveaxis(jnp.tensordot(matrix(images.shape[axis]), images, axes=(1, axis)), 0, axis)
    return images


def baseline_of(images: jnp.ndarray, baseline: str = "black", blur_sigma: float = 4.0) -> jnp.ndarray:
    """Integrated gradients' starting point: zeros ("black"; for word vectors, a text of padding) or
    `blur(images, blur_sigma)` ("blurred")."""
    if baseline == "black":
        return jnp.zeros_like(images)
    if baseline == "blurred":
        return blur(images, blur_sigma)
    raise UserError(f"unknown `baseline`='{baseline}': choose one of {', '.join(BASELINES)}")


def _path_attributions(model, variables, inputs, classes, baseline, blur_sigma, steps, chunk):
    """(integrated gradients shaped as x, f(x) − f(baseline)) for x and f of `_differentiable`."""
    if steps < 1:
        raise UserError(f"`steps`={steps} must be at least 1")
    x, f = _differentiable(model, variables, inputs)
    start = baseline_of(x, baseline, blur_sigma)
    alphas = jnp.asarray((np.arange(steps) + 0.5) / steps, x.dtype)  # The midpoint rule.

    def gradient_at(i):
        return _gradients(f, start + alphas[i] * (x - start), classes)

    attributions = (x - start) * _weighted_sum(gradient_at, np.full(steps, 1 / steps), chunk)
    return attributions, _chosen(f(x), classes) - _chosen(f(start), classes)


@_jit("baseline", "blur_sigma", "steps", "chunk")
def integrated_gradients(model: nn.Module, variables, inputs: jnp.ndarray, classes: jnp.ndarray,
                         baseline: str = "black", blur_sigma: float = 4.0, steps: int = 64,
                         chunk: int = 16) -> jnp.ndarray:
    """Integrated gradients (Sundararajan et al. 2017) summed over channels (over a token's word vector):
    `[b, h, w]` or `[b, length]`, signed, summing to about f(x) − f(baseline) per example. `baseline` "black"
    or "blurred" (`blur_sigma` pixels); `steps` points of the midpoint rule on the path, `chunk` of them at a
    time."""
    classes = _check(model, inputs, classes)
    attributions, _ = _path_attributions(model, variables, inputs, classes, baseline, blur_sigma, steps, chunk)
    return attributions.sum(axis=-1)


@_jit("baseline", "blur_sigma", "steps", "chunk")
def completeness(model: nn.Module, variables, inputs: jnp.ndarray, classes: jnp.ndarray, baseline: str = "black",
                 blur_sigma: float = 4.0, steps: int = 64, chunk: int = 16) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(Σ of `integrated_gradients` per example, f(x) − f(baseline) for its class): `[b]` each, equal but for
    the quadrature error, which more `steps` shrink. A check of a run's settings, and of the method."""
    classes = _check(model, inputs, classes)
    attributions, change = _path_attributions(model, variables, inputs, classes, baseline, blur_sigma, steps, chunk)
    return attributions.reshape(len(attributions), -1).sum(axis=1), change


def _positions(model: nn.Module, inputs: jnp.ndarray) -> tuple[int, ...]:
    """`(b, ...)`, the shape of a method's maps: the input's without its channels (token ids have none)."""
    return tuple(inputs.shape) if _reads_tokens(model) else tuple(inputs.shape[:-1])


def grad_cam_layer(model: nn.Module, variables, image_shape: tuple[int, ...], layer: str | None = None) -> str:
    """The layer `grad_cam` uses: `layer` if the model has it (UserError listing them if not), else the last
    spatial one (`taps.last_spatial_layer`)."""
    known = taps.layers(model, variables, image_shape)
    if layer is None:
        return taps.last_spatial_layer(known)
    taps.check_layers([layer], known)
    if not known[layer].editable:
        editable = [name for name, found in known.items() if found.editable]
        raise UserError(f"Grad-CAM cannot use layer '{layer}' (a {known[layer].kind} inside a module): name the "
                        f"module around it, one of {', '.join(editable)}")
    return layer


@_jit("layer", "hires")
def grad_cam(model: nn.Module, variables, inputs: jnp.ndarray, classes: jnp.ndarray,
             layer: str | None = None, hires: bool = False) -> jnp.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) at `layer` (default the last spatial layer), upsampled bilinearly
    (along a sequence, linearly) to the input: `[b, h, w]` or `[b, length]`, ≥ 0. The channel weights are the
    spatial means of the logit's gradient (not the softmax's) with respect to the layer's output; `hires`
    weighs each position by its own gradient instead (`hires_cam`)."""
    classes = _check(model, inputs, classes)
    layer = grad_cam_layer(model, variables, inputs.shape[1:], layer)
    _, layer_outputs = jax.eval_shape(lambda x: taps.forward(model, variables, x), inputs)
    delta = jnp.zeros(layer_outputs[layer].shape, layer_outputs[layer].dtype)

    def chosen(delta):
        logits, outputs = taps.forward(model, variables, inputs, edit=(layer, lambda a: a + delta))
        return _chosen(logits, classes).sum(), outputs[layer]

    gradient, activation = jax.grad(chosen, has_aux=True)(delta)
    weights = gradient if hires else gradient.mean(axis=_over_positions(gradient), keepdims=True)
    cam = jax.nn.relu((activation * weights).sum(axis=-1))
    return jax.image.resize(cam, _positions(model, inputs), "bilinear").astype(jnp.float32)


def hires_cam(model: nn.Module, variables, inputs: jnp.ndarray, classes: jnp.ndarray,
              layer: str | None = None) -> jnp.ndarray:
    """HiResCAM (Draelos & Carin 2020): `grad_cam` with each position's activations weighted by their own
    gradient rather than the channel's mean. Where a dense layer reads the flattened map (the seed network's
    head) that is each position's exact share of the logit, while Grad-CAM's means, blind to where each weight
    sits, often come out negative everywhere (a map of zeros after the ReLU)."""
    return grad_cam(model, variables, inputs, classes, layer=layer, hires=True)


def patches(shape: tuple[int, ...], patch: int | None = None, stride: int | None = None) -> np.ndarray:
    """`[count, *shape]` 0/1 masks of occlusion's patches: squares of `patch` pixels a side on an image `(height,
    width)`, row by row, or windows of `patch` steps along a sequence `(length,)`; the last along each axis flush
    with the edge. `patch` defaults to a quarter of the shortest side, `stride` to half the patch."""
    patch = max(1, min(shape) // 4) if patch is None else patch
    stride = max(1, patch // 2) if stride is None else stride
    if not 1 <= patch <= min(shape) or stride < 1:
        side = "the image's shorter side" if len(shape) == 2 else "the length"
        raise UserError(f"`patch`={patch} must be from 1 to {side} ({min(shape)}) and `stride`={stride} at least 1")

    def starts(size):
        found = list(range(0, size - patch + 1, stride))
        return found if found[-1] == size - patch else [*found, size - patch]

    corners = list(itertools.product(*(starts(size) for size in shape)))
    masks = np.zeros((len(corners), *shape), np.float32)
    for mask, corner in zip(masks, corners):
        mask[tuple(slice(start, start + patch) for start in corner)] = 1
    return masks


@_jit("patch", "stride", "fill", "chunk")
def occlusion(model: nn.Module, variables, inputs: jnp.ndarray, classes: jnp.ndarray, patch: int | None = None,
              stride: int | None = None, fill: float = 0.0, chunk: int = 16) -> jnp.ndarray:
    """Occlusion (Zeiler & Fergus 2014): each pixel's (time step's, token's) mean drop of the logit over the
    `patches` covering it when they are set to `fill` (0: black; a token's vector, padding): `[b, h, w]` or
    `[b, length]`, signed. One forward pass of the batch per patch. Over token ids `patch` defaults to 1, each
    token in turn."""
    classes = _check(model, inputs, classes)
    x, f = _differentiable(model, variables, inputs)
    patch = 1 if patch is None and _reads_tokens(model) else patch
    masks = patches(x.shape[1:-1], patch, stride)
    original = _chosen(f(x), classes)
    gathered = jnp.asarray(masks)

    def drops(i):
        mask = gathered[i][None, ..., None]
        hidden = x * (1 - mask) + fill * mask
        change = original - _chosen(f(hidden), classes)
        return change.reshape(-1, *[1] * (masks.ndim - 1)) * gathered[i]

    maps = _weighted_sum(drops, np.ones(len(masks)), chunk) / jnp.asarray(masks.sum(axis=0))
    # Padding made padding changes nothing: 0, not the rounding of two forward passes (about 1e-7).
    return jnp.where(inputs != 0, maps, 0.0) if _reads_tokens(model) and patch == 1 else maps


METHODS: dict[str, Method] = {
    "saliency": saliency,
    "smoothgrad": smoothgrad,
    "gradient_times_input": gradient_times_input,
    "integrated_gradients": integrated_gradients,
    "grad_cam": grad_cam,
    "hires_cam": hires_cam,
    "occlusion": occlusion,
}
"""The attribution methods by name; each `f(model, variables, inputs, classes, **options) -> maps`."""

SIGNED = ("gradient_times_input", "integrated_gradients", "occlusion")
"""The methods whose maps have a sign (evidence for the class, and against it); the others' are ≥ 0."""


def lookup(name: str) -> Method:
    """The method called `name`; UserError listing `METHODS` if there is none."""
    if name not in METHODS:
        raise UserError(f"unknown attribution method '{name}': choose one of {', '.join(METHODS)}")
    return METHODS[name]
