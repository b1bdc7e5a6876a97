"""ResNet-18/34/50/101, GoogLeNet and the block variants: sizes, parameter counts, and one training step.

Reference counts are torchvision 0.28's (`sum(p.numel() for p in model.parameters())`,
224×224×3, 1000 classes).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SAME_BLOCKS, he_variables, normal, unoptimised_jit

from cnn_jax.analysis.arithmetic import count_params
from cnn_jax.errors import UserError
from cnn_jax.models import googlenet, resnet, variants

ZOO = {**resnet.MODELS, **googlenet.MODELS, **variants.MODELS}

TORCHVISION_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "googlenet": 6_624_904,
}
GOOGLENET_WITH_AUX_PARAMS = 13_004_888
FEATURES = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "googlenet": 1024}

SMALL_IMAGES = [(28, 28, 1), (32, 32, 3)]
# Compiling a forward pass of these takes seconds to tens of seconds: the full suite's, not the everyday one's.
HEAVY = [pytest.param(name, marks=pytest.mark.slow) if name in TORCHVISION_PARAMS else name for name in sorted(ZOO)]
IMAGENET = (224, 224, 3)


def abstract_variables(model, image_shape):
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *image_shape)))


def stem_weight_change(image_shape):
    """Weights the small-input stem (3×3/1 conv, 64 filters) has minus the ImageNet one (7×7/2, 3 channels)."""
    return 64 * 9 * image_shape[2] - 64 * 49 * 3


def head_change(features, num_classes):
    """Parameters an FC head from `features` to `num_classes` has minus a 1000-class one."""
    return (features + 1) * (num_classes - 1000)




@functools.cache
def initial_logits_and_variables(name, image_shape, num_classes=10):
    """Model `name`'s logits for a fixed batch of 2 random images, and the variables it was initialised with.

    `init_with_output` runs the model (train=False) on the batch it initialises from: one compilation for both.
    """
    model = ZOO[name].build(num_classes=num_classes)
    images = normal(1, (2, *image_shape))
    return unoptimised_jit(model.init_with_output)(jax.random.key(0), images)


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_imagenet_size_gives_1000_logits_with_torchvision_parameter_count(name):
    model = ZOO[name].build(num_classes=1000)
    variables = abstract_variables(model, IMAGENET)
    logits = jax.eval_shape(model.apply, variables, jnp.zeros((2, *IMAGENET)))
    assert logits.shape == (2, 1000)
    assert count_params(variables["params"]) == TORCHVISION_PARAMS[name]


def test_googlenet_auxiliary_heads_match_torchvision_and_are_sown_only_in_training():
    model = googlenet.GoogLeNet(num_classes=1000, aux_logits=True)
    variables = abstract_variables(model, IMAGENET)
    assert count_params(variables["params"]) == GOOGLENET_WITH_AUX_PARAMS
    images = jnp.zeros((2, *IMAGENET))
    train = functools.partial(model.apply, train=True, rngs={"dropout": jax.random.key(0)},
                              mutable=["batch_stats", "aux_logits"])
    logits, state = jax.eval_shape(train, variables, images)
    assert logits.shape == (2, 1000)
    assert jax.tree.map(lambda a: a.shape, state["aux_logits"]) == {"aux1": {"logits": ((2, 1000),)},
                                                                      "aux2": {"logits": ((2, 1000),)}}
    _, state = jax.eval_shape(functools.partial(model.apply, mutable=["aux_logits"]), variables, images)
    assert state == {}


@pytest.mark.parametrize("image_shape", SMALL_IMAGES)
@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_small_images_change_only_the_stem_and_head_parameter_counts(name, image_shape):
    variables = abstract_variables(ZOO[name].build(num_classes=10), image_shape)
    expected = TORCHVISION_PARAMS[name] + stem_weight_change(image_shape) + head_change(FEATURES[name], 10)
    assert count_params(variables["params"]) == expected
    # resnet18 at 32×32×3: 11,689,512 − 64·3·(49 − 9) − 513·990 = 11,173,962.


def test_googlenet_with_auxiliary_heads_on_small_images_changes_stem_and_three_heads():
    variables = abstract_variables(googlenet.GoogLeNet(num_classes=10, aux_logits=True), (32, 32, 3))
    expected = GOOGLENET_WITH_AUX_PARAMS + stem_weight_change((32, 32, 3)) + head_change(1024, 10) * 3
    assert count_params(variables["params"]) == expected == 9_952_958


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "googlenet"])
def test_imagenet_size_forward_pass_gives_finite_logits(name):
    """On `he_variables`: the model's own initialisers are tested at 32×32×3 (the same ones, but for the stem's
    kernel size); initialising here too would compile a second program as costly as the forward pass."""
    model = ZOO[name].build(num_classes=1000)
    images = normal(1, (1, *IMAGENET))
    logits = unoptimised_jit(model.apply)(he_variables(model, images), images)
    assert logits.shape == (1, 1000)
    assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("name", HEAVY)
def test_small_images_give_finite_10_class_logits(name, image_shape=(32, 32, 3)):
    """(At 28×28×1 tests/test_zoo.py's training-step test checks them.)"""
    if name in SAME_BLOCKS:
        model = ZOO[name].build(num_classes=10)
        images = normal(1, (2, *image_shape))
        logits = unoptimised_jit(model.apply)(he_variables(model, images), images)
    else:
        logits, _ = initial_logits_and_variables(name, image_shape)
    assert logits.shape == (2, 10)
    assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("width", [8, 32])
@pytest.mark.parametrize(("name", "weights_per_width_squared"), [
    ("conv7x7", 49), ("conv3x3x3", 27), ("plain3x3", 9), ("bottleneck", 3.25), ("factorised", 6)])
def test_variant_block_weight_count(name, weights_per_width_squared, width):
    model = ZOO[name].build(num_classes=10, width=width)
    block = abstract_variables(model, (32, 32, 3))["params"]["block"]
    kernels = [layer["Conv_0"]["kernel"] for layer in block.values()]  # Weights only: no BatchNorm scale/bias.
    assert sum(k.size for k in kernels) == weights_per_width_squared * width**2


@pytest.mark.parametrize("image_shape", [*SMALL_IMAGES, IMAGENET])
def test_variants_share_stem_and_head_and_differ_only_in_the_block(image_shape):
    width, channels, num_classes = 32, image_shape[2], 1000 if image_shape == IMAGENET else 10
    for name in variants.BLOCKS:
        model = ZOO[name].build(num_classes=num_classes, width=width)
        variables = abstract_variables(model, image_shape)
        assert count_params(variables["params"]["stem"]) == 9 * channels * width + 2 * width
        assert count_params(variables["params"]["head"]) == (width + 1) * num_classes
        assert jax.eval_shape(model.apply, variables, jnp.zeros((2, *image_shape))).shape == (2, num_classes)


def test_bottleneck_with_odd_width_names_the_divisor():
    model = ZOO["bottleneck"].build(num_classes=10, width=7)
    with pytest.raises(UserError, match="width 7 does not divide by 2"):
        abstract_variables(model, (28, 28, 1))
