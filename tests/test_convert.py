"""FC -> conv conversion: the converted head computes the original logits, and slides over larger images."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import normal

from cnn_jax import layers, models
from cnn_jax.analysis import convert
from cnn_jax.errors import UserError
from cnn_jax.layers.pooling import max_pool_2x2


class UnpaddedNet(nn.Module):
    """ConvNet without padding, and with a hidden FC layer: two [conv 5×5 VALID -> BN -> ReLU -> pool 2×2], FC-24-10.

    At 28×28×1 the head sees 4×4×8 features; the body's stride is 4.
    """

    @nn.compact
    def __call__(self, x, train=False):
        for width in (4, 8):
            x = layers.ConvBlock(width, 5, padding=0, pool=max_pool_2x2)(x, train)
        return layers.DenseHead(10, hidden=(24,), dropout=0.5)(x, train)


def trained_looking(variables, seed=0):
    """`variables` drawn afresh: parameters and BatchNorm means ~ 0.3·N(0, 1), variances ~ U[0.5, 1.5).

    Unlike an initialisation (zero biases, unit BatchNorm), no layer is an identity. Drawn by NumPy: eager
    `jax.random` would compile a program per leaf's shape.
    """
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if jax.tree_util.keystr(path).endswith("['var']"):
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), jnp.float32)
        return jnp.asarray(0.3 * rng.standard_normal(leaf.shape, np.float32))

    return jax.tree_util.tree_map_with_path(draw, variables)


def init(model, seed=0, shape=(28, 28, 1)):
    return trained_looking(jax.eval_shape(model.init, jax.random.key(seed), jnp.zeros((1, *shape))), seed)


# name: (model, training input size, a larger input). AlexNet and VGG without their adaptive averaging, as in the
# papers: the head's first layer becomes a 6×6 (AlexNet at 224) or 2×2 (VGG-11 at 64) convolution over the body's map.
HEADS = {
    "convnet": (models.ConvNet(), (28, 28, 1), 56),
    "hidden_fc_unpadded": (UnpaddedNet(), (28, 28, 1), 40),
    "alexnet": (models.lookup("alexnet")(num_classes=10, grid=None), (224, 224, 3), 288),
    "vgg11": (models.lookup("vgg11")(num_classes=10, grid=None), (64, 64, 3), 128),
}


# The seed network's conversion is the everyday suite's; the rest, seconds each, the full suite's.
SLOW_HEADS = [name if name == "convnet" else pytest.param(name, marks=pytest.mark.slow) for name in HEADS]


@pytest.mark.parametrize("name", SLOW_HEADS)
def test_score_map_at_training_size_is_the_models_logits(name):
    model, shape, _ = HEADS[name]
    variables = init(model, shape=shape)
    images = normal(1, (3, *shape))
    conv_variables, _ = convert.to_fully_convolutional(model, variables, shape)
    scores = convert.apply_fully_convolutional(model, conv_variables, images)
    assert scores.shape == (3, 1, 1, 10)
    logits = model.apply(variables, images)
    np.testing.assert_allclose(scores[:, 0, 0], logits, atol=1e-5 * np.abs(logits).max(), rtol=1e-5)


def test_conversion_reshapes_only_the_head_kernels():
    model = models.ConvNet()
    variables = init(model)
    conv_variables, stride = convert.to_fully_convolutional(model, variables, (28, 28, 1))
    head = conv_variables["params"]["DenseHead_0"]["Dense_0"]
    assert head["kernel"].shape == (7, 7, 32, 10)
    assert stride == (4, 4)
    # Flax flattens NHWC row-major: kernel row (h·7 + w)·32 + c is tap (h, w, c).
    np.testing.assert_array_equal(head["kernel"][2, 5, 17], variables["params"]["DenseHead_0"]["Dense_0"]["kernel"][(2 * 7 + 5) * 32 + 17])
    assert conv_variables["params"]["ConvBlock_1"] is variables["params"]["ConvBlock_1"]
    assert conv_variables["batch_stats"] is variables["batch_stats"]


@pytest.mark.slow  # 20 crops; the everyday suite converts the seed network
def test_score_map_entry_is_the_model_on_the_crop_at_stride_offsets_when_the_body_does_not_pad():
    """Entry (i, j) of the map of a 40×44 image is the model on the 28×28 crop at (4i, 4j), for every (i, j).

    Exact only because no layer of this body pads: a padded convolution sees
    zeros at the crop's border where the large image has real pixels (layer 1)
    or real features (deeper layers, where even a zero margin around the crop
    does not help: BatchNorm and biases make the features of zero pixels
    non-zero). The max-pooling windows line up because the offsets are
    multiples of the stride 4.
    """
    model = UnpaddedNet()
    variables = init(model)
    image = normal(2, (1, 40, 44, 1))
    conv_variables, (sh, sw) = convert.to_fully_convolutional(model, variables, (28, 28, 1))
    scores = convert.apply_fully_convolutional(model, conv_variables, image)[0]
    assert (sh, sw) == (4, 4)
    assert scores.shape == (4, 5, 10)  # (40 − 28)/4 + 1 by (44 − 28)/4 + 1: the last crop ends at the image's edge.
    offsets = [(i, j) for i in range(4) for j in range(5)]
    crops = jnp.concatenate([image[:, i * sh : i * sh + 28, j * sw : j * sw + 28] for i, j in offsets])
    expected = model.apply(variables, crops)
    np.testing.assert_allclose(np.stack([scores[i, j] for i, j in offsets]), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [name for name in SLOW_HEADS if name != "hidden_fc_unpadded"])
def test_padded_body_score_map_entry_is_its_head_on_the_feature_window(name):
    """For bodies with padded convolutions, entry (i, j) is the dense head on the feature window at (i, j).

    The features are the body's on the whole larger image, so this is the
    crop's classifier only away from the crop's border (see the test above).
    """
    model, shape, larger = HEADS[name]
    variables = init(model, shape=shape)
    image = normal(3, (2, larger, larger, shape[2]))

    heads = []

    def features_only(next_fun, args, kwargs, context):
        if not isinstance(context.module, layers.DenseHead):
            return next_fun(*args, **kwargs)
        heads.append(context.module.clone(parent=None))
        return args[0]

    with nn.intercept_methods(features_only):
        features = model.apply(variables, image)
    conv_variables, (stride, _) = convert.to_fully_convolutional(model, variables, shape)
    scores = convert.apply_fully_convolutional(model, conv_variables, image)
    window = conv_variables["params"]["DenseHead_0"]["Dense_0"]["kernel"].shape[0]
    positions = (larger - shape[0]) // stride + 1
    assert scores.shape == (2, positions, positions, 10) and features.shape[1] == window + positions - 1
    head = {"params": variables["params"]["DenseHead_0"]}
    for i, j in {(0, 0), (positions // 2, positions - 1), (positions - 1, 0), (positions - 1, positions - 1)}:
        expected = heads[0].apply(head, features[:, i : i + window, j : j + window])
        np.testing.assert_allclose(scores[:, i, j], expected, atol=1e-5 * np.abs(expected).max(), rtol=1e-5)


class StridedNet(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = layers.ConvBlock(4, 3, strides=2, padding=1, pool=max_pool_2x2)(x, train)
        return layers.DenseHead(10)(x)


def test_effective_stride_is_the_product_of_the_bodys_strides():
    model = StridedNet()
    _, stride = convert.to_fully_convolutional(model, init(model), (28, 28, 1))
    assert stride == (4, 4)  # conv stride 2 × pool stride 2.


class GlobalPoolNet(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return layers.DenseHead(10)(layers.ConvBlock(4, 3)(x, train).mean(axis=(1, 2)))


class PlainDense(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize("model, message", [
    (PlainDense(), "PlainDense does not end in one layers.DenseHead"),
    (GlobalPoolNet(), r"GlobalPoolNet's DenseHead sees features of shape \(4,\), not a \[height, width, channels\] map"),
    (models.lookup("alexnet")(num_classes=10), r"AlexNet's DenseHead sees 1×1 features whatever the image size .*grid=None"),
])
def test_models_without_a_dense_head_over_a_feature_map_are_refused(model, message):
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))  # Refused on shapes alone.
    variables = jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), shapes)
    with pytest.raises(UserError, match=message):
        convert.to_fully_convolutional(model, variables, (28, 28, 1))


def test_score_map_experiment_puts_garments_in_quadrants_and_gives_probabilities_per_position():
    from experiments import score_map

    images = np.stack([np.full((28, 28, 1), value, np.uint8) for value in (10, 20, 30, 40)])
    canvas = score_map.garment_canvas(images)
    assert canvas.shape == (56, 56, 1)
    assert [canvas[0, 0, 0], canvas[0, 55, 0], canvas[55, 0, 0], canvas[55, 55, 0]] == [10, 20, 30, 40]
    model = models.ConvNet()
    conv_variables, _ = convert.to_fully_convolutional(model, init(model), (28, 28, 1))
    probabilities = score_map.class_probabilities(model, conv_variables, canvas)
    assert probabilities.shape == (8, 8, 10)  # (56 − 28)/4 + 1 positions per axis.
    np.testing.assert_allclose(probabilities.sum(-1), 1, rtol=1e-5)
