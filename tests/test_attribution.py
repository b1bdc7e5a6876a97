"""Attribution maps and their sanity checks: the maps find the evidence, integrated gradients add up, random
weights scramble the gradient methods, and Grad-CAM picks its layer in residual and Inception networks."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats
from conftest import he_variables, unoptimised_jit

from cnn_jax import models
from cnn_jax.analysis.inspect import attribution, sanity
from cnn_jax.errors import UserError

SIZE, CLASSES, PATCH = 24, 4, 6
_rows, _cols = np.mgrid[:PATCH, :PATCH]
PATTERNS = np.stack([_rows % 2 == 0, _cols % 2 == 0, (_rows // 2 + _cols // 2) % 2 == 0,
                     (_rows + _cols) % 3 == 0]).astype(np.float32)
"""Each class's evidence, a 6×6 texture: horizontal stripes, vertical stripes, a checkerboard, diagonals."""


KEY = jax.random.key(0, impl="rbg")  # XLA compiles threefry's generator, the usual keys', in seconds, this in less.


def textures_in_quadrants(count: int, seed: int):
    """(images [n, 24, 24, 1], labels, quadrants): on noise, the label's texture somewhere in one quadrant
    (0 top left, 1 top right, 2 bottom left, 3 bottom right) and, in another, a solid bright square that is no
    class's evidence (a map that just follows brightness goes there)."""
    rng = np.random.default_rng(seed)
    labels, quadrants = rng.integers(0, CLASSES, count), rng.integers(0, 4, count)
    images = rng.uniform(0, 0.3, (count, SIZE, SIZE, 1)).astype(np.float32)
    half = SIZE // 2
    for image, label, quadrant in zip(images, labels, quadrants):
        top = quadrant // 2 * half + rng.integers(0, half - PATCH + 1)
        left = quadrant % 2 * half + rng.integers(0, half - PATCH + 1)
        image[top:top + PATCH, left:left + PATCH, 0] = np.maximum(image[top:top + PATCH, left:left + PATCH, 0],
                                                                  PATTERNS[label])
        other = rng.choice([q for q in range(4) if q != quadrant])
        top, left = other // 2 * half + rng.integers(1, half - 4), other % 2 * half + rng.integers(1, half - 4)
        image[top:top + 4, left:left + 4] = 1.0
    return images, labels.astype(np.int32), quadrants


def quadrant_of_maximum(maps: np.ndarray) -> np.ndarray:
    peak = maps.reshape(len(maps), -1).argmax(axis=1)
    return (peak // SIZE >= SIZE // 2) * 2 + (peak % SIZE >= SIZE // 2)


@pytest.fixture(scope="module")
def textures():
    """(model, trained variables, held-out images, labels, quadrants): a ConvNet(8, 16) trained 100 steps of 64
    (all 100 held-out images right)."""
    model = models.ConvNet(features=(8, 16), num_classes=CLASSES)
    images, labels, _ = textures_in_quadrants(100 * 64, seed=0)
    variables = jax.jit(functools.partial(model.init, train=False))(KEY, jnp.zeros((1, SIZE, SIZE, 1)))
    optimiser = optax.adam(5e-3)

    @jax.jit
    def step(params, batch_stats, opt_state, x, y):
        def loss(params):
            logits, updated = model.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                          mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updated["batch_stats"]

        grads, batch_stats = jax.grad(loss, has_aux=True)(params)
        updates, opt_state = optimiser.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state

    params, batch_stats, opt_state = variables["params"], variables["batch_stats"], optimiser.init(variables["params"])
    for start in range(0, len(images), 64):
        params, batch_stats, opt_state = step(params, batch_stats, opt_state, images[start:start + 64],
                                              labels[start:start + 64])
    test_images, test_labels, test_quadrants = textures_in_quadrants(100, seed=1)
    return model, {"params": params, "batch_stats": batch_stats}, test_images, test_labels, test_quadrants


def test_grad_cam_and_occlusion_peak_in_the_quadrant_holding_the_class_texture(textures):
    model, variables, images, labels, quadrants = textures
    assert np.mean(np.asarray(attribution.predicted(model, variables, images)) == labels) >= 0.95
    for name in ("grad_cam", "hires_cam", "occlusion"):
        maps = np.asarray(attribution.lookup(name)(model, variables, images, labels))
        assert maps.shape == (100, SIZE, SIZE) and np.isfinite(maps).all()
        assert np.mean(quadrant_of_maximum(maps) == quadrants) >= 0.9, name
    # Another class's Grad-CAM is another map: the one explained is the class asked for.
    other = attribution.grad_cam(model, variables, images, (labels + 1) % CLASSES)
    assert not np.allclose(other, attribution.grad_cam(model, variables, images, labels))


def test_integrated_gradients_add_up_to_the_logit_change_within_1_percent(textures):
    model, variables, images, labels, _ = textures
    total, change = attribution.completeness(model, variables, images[:16], labels[:16])
    assert np.all(np.abs(change) > 1)
    np.testing.assert_array_less(np.abs(total - change), 0.01 * np.abs(change))


class Linear(nn.Module):
    """Logits W · flatten(x) + b: every gradient method has a closed form."""

    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(CLASSES)(x.reshape(len(x), -1))


def test_integrated_gradients_and_saliency_are_exact_for_a_linear_model():
    model = Linear()
    images = jnp.asarray(np.random.default_rng(0).uniform(size=(3, 8, 8, 2)), jnp.float32)
    variables = model.init(KEY, images)
    classes = jnp.array([0, 2, 3])
    weights = variables["params"]["Dense_0"]["kernel"].T.reshape(CLASSES, 8, 8, 2)[classes]
    for baseline in attribution.BASELINES:
        start = attribution.baseline_of(images, baseline)
        total, change = attribution.completeness(model, variables, images, classes, baseline=baseline, steps=3)
        np.testing.assert_allclose(total, change, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(change, ((images - start) * weights).sum(axis=(1, 2, 3)), rtol=1e-5, atol=1e-6)
    maps = attribution.integrated_gradients(model, variables, images, classes, steps=3)
    np.testing.assert_allclose(maps, (images * weights).sum(axis=-1), rtol=1e-5, atol=1e-6)
    looped = attribution.integrated_gradients(model, variables, images, classes, steps=9, chunk=1)  # 9 rounds.
    np.testing.assert_allclose(looped, maps, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(attribution.saliency(model, variables, images, classes),
                               np.abs(weights).max(axis=-1), rtol=1e-6)
    np.testing.assert_allclose(attribution.smoothgrad(model, variables, images, classes, samples=2),
                               np.abs(weights).max(axis=-1), rtol=1e-5)


class Features(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.relu(nn.Conv(5, (3, 3))(x))


class AveragedHead(nn.Module):
    """Conv-ReLU, global average, dense: the head Grad-CAM generalises CAM (Zhou et al. 2016) from."""

    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(CLASSES)(Features()(x).mean(axis=(1, 2)))


def test_grad_cam_of_an_averaged_head_is_its_class_activation_map():
    model = AveragedHead()
    images = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 6, 6, 1)), jnp.float32)
    variables = model.init(KEY, images)
    classes = jnp.array([1, 3])
    features = Features().apply({"params": variables["params"]["Features_0"]}, images)
    weights = variables["params"]["Dense_0"]["kernel"][:, classes].T  # [b, channels]
    cam = np.maximum(np.einsum("bhwc,bc->bhw", features, weights), 0) / 36  # Grad-CAM's α is w / (h·w).
    assert attribution.grad_cam_layer(model, variables, (6, 6, 1)) == "Features_0"
    np.testing.assert_allclose(attribution.grad_cam(model, variables, images, classes), cam, rtol=1e-5, atol=1e-7)


def test_integrated_gradients_memory_is_one_chunk_of_steps_however_many_steps():
    model = AveragedHead()
    images = jnp.asarray(np.random.default_rng(0).uniform(size=(8, 16, 16, 1)), jnp.float32)
    variables = model.init(KEY, images)

    def temporary_bytes(steps):
        compiled = attribution.integrated_gradients.lower(model, variables, images, jnp.zeros(8, int), steps=steps,
                                                          chunk=16).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    assert temporary_bytes(128) < 1.1 * temporary_bytes(16)  # 8 rounds of 16 steps; side by side they took 4.6×.


@pytest.mark.slow  # Maps of four methods at every step of the cascade.
def test_cascading_randomisation_scrambles_the_gradient_methods_and_flags_a_map_of_the_image(textures, monkeypatch):
    model, variables, images, labels, _ = textures
    monkeypatch.setitem(attribution.METHODS, "brightness", lambda model, variables, images, classes: images[..., 0])
    methods = ["saliency", "smoothgrad", "integrated_gradients", "brightness"]
    options = {"smoothgrad": {"samples": 8}, "integrated_gradients": {"steps": 16}}
    report = sanity.cascading_randomisation(model, variables, images[:16], labels[:16], methods,
                                            KEY, options)
    for name in methods[:3]:
        groups, correlations = zip(*report[name].correlations)
        assert groups == ("DenseHead_0", "ConvBlock_1", "ConvBlock_0")
        assert correlations[-1] < 0.3, (name, correlations)
    for name in ("saliency", "smoothgrad"):  # Magnitudes: integrated gradients' |x · ∇| keeps the image's edges.
        assert report[name].absolute_correlations[-1][1] < 0.3 and not report[name].flagged, name
    assert [rho for _, rho in report["brightness"].correlations] == pytest.approx([1, 1, 1])
    assert report["brightness"].flagged


def test_spearman_is_scipys_rank_correlation_and_0_for_a_constant_map():
    a, b = np.random.default_rng(0).normal(size=(2, 3, 40))
    b[2] = 1.0  # A constant map ranks nothing: 0.
    expected = [scipy.stats.spearmanr(x, y).statistic for x, y in zip(a[:2], b[:2])]
    np.testing.assert_allclose(sanity.spearman(a, b), [*expected, 0.0], atol=1e-12)


@pytest.mark.slow  # Compiles a zoo model's Grad-CAM.
@pytest.mark.parametrize("name, layer", [("resnet18", "stage4_block2"), ("googlenet", "inception5b")])
def test_grad_cam_default_layer_is_the_last_block_of_residual_and_inception_networks(name, layer):
    model = models.lookup(name)(num_classes=10)
    variables = he_variables(model, jnp.zeros((1, 32, 32, 3)))
    assert attribution.grad_cam_layer(model, variables, (32, 32, 3)) == layer
    images = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 32, 32, 3)), jnp.float32)
    maps = np.asarray(unoptimised_jit(functools.partial(attribution.grad_cam.__wrapped__, model))(
        variables, images, jnp.array([0, 7])))
    assert maps.shape == (2, 32, 32) and np.isfinite(maps).all()
    assert np.all(maps.max(axis=(1, 2)) > 0) and np.all(maps.std(axis=(1, 2)) > 0.01 * maps.max(axis=(1, 2)))


def test_unknown_methods_layers_and_settings_are_user_errors(textures):
    model, variables, images, labels, _ = textures
    images, labels = images[:2], labels[:2]
    with pytest.raises(UserError, match="unknown attribution method 'lime': choose one of saliency, smoothgrad"):
        attribution.lookup("lime")
    with pytest.raises(UserError, match="unknown layer 'ConvBlock_9': choose from ConvBlock_0/Conv_0"):
        attribution.grad_cam(model, variables, images, labels, layer="ConvBlock_9")
    with pytest.raises(UserError, match="cannot use layer 'ConvBlock_0/Conv_0'.*one of ConvBlock_0/BatchNorm_0"):
        attribution.grad_cam(model, variables, images, labels, layer="ConvBlock_0/Conv_0")
    with pytest.raises(UserError, match="unknown `baseline`='white': choose one of black, blurred"):
        attribution.integrated_gradients(model, variables, images, labels, baseline="white")
    with pytest.raises(UserError, match="`patch`=30 must be from 1 to the image's shorter side"):
        attribution.occlusion(model, variables, images, labels, patch=30)
    with pytest.raises(UserError, match="`inputs` must be float images"):
        attribution.saliency(model, variables, (images * 255).astype(np.uint8), labels)
    with pytest.raises(UserError, match="`classes` must be one int per example"):
        attribution.saliency(model, variables, images, labels[:1])
    with pytest.raises(UserError, match="unknown attribution method 'lime'"):
        sanity.cascading_randomisation(model, variables, images, labels, ["saliency", "lime"])
    # Grad-CAM on a layer named works: the first block's map is 12×12, upsampled.
    maps = attribution.grad_cam(model, variables, images, labels, layer="ConvBlock_0")
    assert maps.shape == (2, SIZE, SIZE) and np.isfinite(maps).all()
