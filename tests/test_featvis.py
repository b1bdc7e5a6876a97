"""Feature visualisation: images optimised from noise excite the seed network's channels, neurons and classes more
than its real test images do; the same key gives the same images; a colour zoo model runs; bad input is a UserError."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import unoptimised_jit

from cnn_jax import data, models
from cnn_jax.analysis.inspect import featvis, taps
from cnn_jax.errors import UserError
from cnn_jax.training import trained

BLOCKS = ("ConvBlock_0", "ConvBlock_1")  # 16 and 32 channels, each after its BatchNorm, ReLU and 2×2 max-pooling.


@pytest.fixture(scope="module")
def run(seed_run):
    return trained.load(seed_run)


@pytest.fixture(scope="module")
def untrained():
    """The seed network as initialised, for the tests that do not need what it learned."""
    model = models.ConvNet()
    return types.SimpleNamespace(model=model, variables=model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1))),
                                 image_shape=(28, 28, 1))


@pytest.fixture(scope="module")
def real_outputs(run):
    """{layer: [1000, h, w, c]}: the seed network's layers on its 1,000 test images."""
    outputs = jax.jit(lambda x: taps.forward(run.model, run.variables, x)[1])(data.normalize(run.dataset.test_images))
    return {name: np.asarray(array) for name, array in outputs.items()}


@pytest.fixture(scope="module")
def blocks(run):
    """{block: Result}: every channel of each block, at the defaults (256 steps)."""
    return {layer: featvis.visualise(run.model, run.variables, layer, None, run.dataset.image_shape,
                                     jax.random.key(0)) for layer in BLOCKS}


@pytest.mark.slow  # Optimises images on the trained seed network (the `seed_run` fixture).
@pytest.mark.parametrize("layer", BLOCKS)
def test_most_channels_beat_the_real_images(blocks, real_outputs, layer):
    """At least 75% of the channels end at or above their 99th percentile over the test images (of each image's
    mean activation) and at 3× their value on the start noise or more; the median channel gains 10× or more.

    10× for most channels is out of reach: a flat grey image (the start)
    already drives some channels of ConvBlock_1 to 1.2, near their 99th
    percentile on real images, and a [0, 1] image ends them at 3-6.
    """
    result = blocks[layer]
    p99 = np.percentile(real_outputs[layer].mean(axis=(1, 2)), 99, axis=0)
    width = len(p99)
    assert result.images.shape == (width, 28, 28, 1) and result.images.dtype == np.float32
    assert result.images.min() >= 0 and result.images.max() <= 1
    np.testing.assert_array_equal(result.targets, np.arange(width))
    excited = (result.end >= p99) & (result.end >= 3 * result.start)
    assert excited.mean() >= 0.75, (result.start, result.end, p99)
    assert np.median(result.end / np.maximum(result.start, 1e-6)) >= 10, (result.start, result.end)
    # Silent on the start noise: the warm-up on the BatchNorm revives them, to about their 99th percentile (one of
    # ConvBlock_0's ended at 99.8% of it on an AVX2 CPU, where the seed network trains to other bits).
    dead = result.start < 0.05
    assert np.all(result.end[dead] >= 0.95 * p99[dead]), (result.start, result.end, p99)


@pytest.mark.slow  # Optimises images on the trained seed network (the `seed_run` fixture).
def test_images_are_structured_and_differ_by_channel(blocks):
    """Not grey: the pixels of at least 90% of the images spread over [0, 1]; and no two channels share an image."""
    for result in blocks.values():
        assert np.mean(result.images.std(axis=(1, 2, 3)) > 0.2) >= 0.9
        flat = result.images.reshape(len(result.images), -1)
        distance = np.abs(flat[:, None] - flat[None]).mean(-1) + np.eye(len(flat))
        assert distance.min() > 0.1


@pytest.mark.slow  # Optimises images on the trained seed network (the `seed_run` fixture).
def test_same_key_same_images_whatever_the_batch(run, blocks):
    """The key fixes each image, whichever other channels share its batch; another key gives other images."""
    shape = run.dataset.image_shape
    again = featvis.visualise(run.model, run.variables, "ConvBlock_0", None, shape, jax.random.key(0))
    np.testing.assert_array_equal(again.images, blocks["ConvBlock_0"].images)
    two = featvis.visualise(run.model, run.variables, "ConvBlock_0", [5, 2], shape, jax.random.key(0))
    np.testing.assert_array_equal(two.targets, [5, 2])
    np.testing.assert_allclose(two.images, blocks["ConvBlock_0"].images[[5, 2]], atol=1e-4)
    np.testing.assert_allclose(two.end, blocks["ConvBlock_0"].end[[5, 2]], rtol=1e-4)
    other = featvis.visualise(run.model, run.variables, "ConvBlock_0", [5, 2], shape, 1)
    assert np.abs(other.images - two.images).mean(axis=(1, 2, 3)).min() > 0.1


@pytest.mark.slow  # Optimises images on the trained seed network (the `seed_run` fixture).
def test_logits_rise_until_the_network_sees_each_class(run):
    result = featvis.visualise(run.model, run.variables, None, None, run.dataset.image_shape, jax.random.key(0),
                               objective="logit", steps=32)
    np.testing.assert_array_equal(result.targets, np.arange(10))
    assert np.all(result.end > result.start + 5), (result.start, result.end)
    logits = jax.jit(lambda images: run.model.apply(run.variables, images, train=False))(result.images)
    np.testing.assert_array_equal(np.asarray(logits.argmax(-1)), np.arange(10))


@pytest.mark.slow  # Optimises images on the trained seed network (the `seed_run` fixture).
def test_centre_neurons_beat_the_real_images(run, real_outputs):
    layer = "ConvBlock_1/Conv_0"
    result = featvis.visualise(run.model, run.variables, layer, range(8), run.dataset.image_shape,
                               jax.random.key(0), objective="neuron", steps=64)
    p99 = np.percentile(real_outputs[layer][:, 7, 7, :8], 99, axis=0)  # The centre of the 14×14 map.
    assert np.mean(result.end >= p99) >= 0.75, (result.end, p99)


@pytest.mark.slow  # Two compilations of a colour model.
def test_colour_model_runs_with_diversity():
    """A 3-channel text-spec model: each target's `samples` images, in [0, 1]; the diversity term makes the two
    images of a target less alike (Gram matrices of the layer) and the colours come out correlated."""
    model = models.lookup("c8-max-c16-max-fc32")(num_classes=10)
    variables = unoptimised_jit(model.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    layer_of = jax.jit(lambda images: taps.forward(model, variables, images)[1]["ConvBlock_1"])
    similarity = {}
    for diversity in (0.0, 5.0):
        result = featvis.visualise(model, variables, "ConvBlock_1", [0, 5, 15], (16, 16, 3), jax.random.key(0),
                                   steps=32, samples=2, diversity=diversity)
        assert result.images.shape == (6, 16, 16, 3)
        np.testing.assert_array_equal(result.targets, [0, 0, 5, 5, 15, 15])
        assert np.isfinite(result.images).all() and result.images.min() >= 0 and result.images.max() <= 1
        assert np.all(np.isfinite(result.end))
        similarity[diversity] = np.asarray(featvis._similarity(layer_of(result.images), 2))
        if not diversity:
            assert np.all(result.end > result.start), (result.start, result.end)
            pixels = result.images.reshape(-1, 3)
            assert np.corrcoef(pixels.T)[0, 1] > 0.5  # Mostly luminance: ImageNet's colour basis.
    assert np.all(similarity[5.0] < similarity[0.0] - 0.05), similarity


def test_a_few_steps_raise_each_channel_from_its_start(untrained):
    """The whole path, cheaply: 2 channels of a block, 8 steps; images in [0, 1], each objective higher at the end."""
    result = featvis.visualise(untrained.model, untrained.variables, "ConvBlock_1", [3, 7], untrained.image_shape,
                               jax.random.key(0), steps=8)
    assert result.images.shape == (2, 28, 28, 1) and list(result.targets) == [3, 7]
    assert 0 <= result.images.min() and result.images.max() <= 1
    assert np.all(result.end > result.start), (result.start, result.end)


def test_colour_basis():
    """Grey pixels have one colour, luminance; a basis B of correlated pixels has B Bᵀ ∝ their covariance."""
    grey = np.repeat(np.random.default_rng(0).integers(0, 256, (500, 1), dtype=np.uint8), 3, axis=1)
    basis = featvis.colour_basis(grey)
    np.testing.assert_allclose(np.abs(basis[:, 0]), 1 / np.sqrt(3), atol=1e-5)
    np.testing.assert_allclose(basis[:, 1:], 0, atol=1e-5)
    pixels = np.random.default_rng(1).normal(size=(5000, 3)) @ np.array([[1, 0.5, 0.2], [0, 1, 0.3], [0, 0, 0.5]])
    basis = featvis.colour_basis(pixels)
    covariance = np.cov(pixels, rowvar=False)
    np.testing.assert_allclose(basis @ basis.T, covariance / np.trace(covariance) * np.trace(basis @ basis.T),
                               atol=1e-5)


def test_pre_activation(untrained):
    known = taps.layers(untrained.model, untrained.variables, untrained.image_shape)
    assert featvis.pre_activation("ConvBlock_1", known) == "ConvBlock_1/BatchNorm_0"
    assert featvis.pre_activation("ConvBlock_1/Conv_0", known) is None


@pytest.mark.parametrize("layer, channels, objective, words", [
    ("Dense_0", [0], "channel", ["unknown layer 'Dense_0'", "ConvBlock_1/Conv_0"]),
    ("ConvBlock_1", [3, 32], "channel", ["channel 32", "32 channels", "0 to 31"]),
    ("ConvBlock_0", [-1], "neuron", ["channel -1", "16 channels"]),
    (None, [10], "logit", ["channel 10", "10 classes"]),
    ("ConvBlock_0", [0], "logit", ["layer=None"]),
    (None, [0], "channel", ["needs a `layer`"]),
    ("ConvBlock_0", [0], "mean", ["unknown `objective`='mean'"]),
])
def test_bad_input_is_a_user_error(untrained, layer, channels, objective, words):
    with pytest.raises(UserError) as error:
        featvis.visualise(untrained.model, untrained.variables, layer, channels, untrained.image_shape, 0,
                          objective=objective)
    message = str(error.value)
    assert "\n" not in message and all(word in message for word in words), message
