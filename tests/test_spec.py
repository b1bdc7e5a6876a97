import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import normal

from cnn_jax import models
from cnn_jax.analysis import arithmetic
from cnn_jax.errors import UserError
from cnn_jax.kernels import ffi
from cnn_jax.models import spec
from cnn_jax.models.spec import PatternNet, Stage
from cnn_jax.training import steps
from cnn_jax.training.config import Config

SEED_SPEC = "c16k5-max-c32k5-max"


def init(model, shape=(1, 28, 28, 1)):
    """`model.init`, compiled unoptimised as `steps.create_train_state` does: far faster than op by op."""
    args = (jax.random.key(0), jnp.zeros(shape))
    return jax.jit(model.init).lower(*args).compile({"xla_backend_optimization_level": 0})(*args)


def test_spec_lists_stages_hidden_layers_and_options():
    model = spec.parse("2xc32-max-c64k5s2p1-avgk3s2-fc128-fc64:nobn:act=tanh:drop=0.5")
    assert model.func is PatternNet
    assert model.keywords == dict(
        stages=(Stage((32, 32), pool="max"),
                Stage((64,), kernel_size=5, strides=2, padding=1, pool="avg", pool_window=3, pool_stride=2)),
        hidden=(128, 64), activation="tanh", batch_norm=False, dropout=0.5,
    )
    assert model(num_classes=3).num_classes == 3


def test_a_change_of_convolution_geometry_or_a_lone_pooling_starts_a_stage():
    assert spec.parse("max-c8-c8k5-c16k5").keywords["stages"] == (
        Stage((), pool="max"), Stage((8,)), Stage((8, 16), kernel_size=5))


@pytest.mark.parametrize("name", ["c32", "fc10", "2xc8", SEED_SPEC, "c8:nobn"])
def test_specs_are_told_from_zoo_names(name):
    assert spec.is_spec(name)


@pytest.mark.parametrize("name", ["convnet", "vgg16", "resnet18", "lenet5"])
def test_zoo_names_are_not_specs(name):
    assert not spec.is_spec(name)


def test_seed_spec_is_the_seed_network_with_its_29034_parameters_and_outputs():
    """The variables of models.ConvNet, with the same names, and its outputs, in evaluation and training."""
    convnet, patternnet = models.ConvNet(), spec.parse(SEED_SPEC)(num_classes=10)
    rng = np.random.default_rng(1)  # In NumPy: eager JAX would compile a program per leaf's shape.
    variables = jax.tree.map(lambda v: v + 0.1 * rng.standard_normal(v.shape, np.float32), init(convnet))
    own = init(patternnet)
    assert jax.tree.structure(variables) == jax.tree.structure(own)
    assert arithmetic.count_params(own["params"]) == 29_034
    x = normal(2, (4, 28, 28, 1))

    @functools.partial(jax.jit, static_argnums=0)
    def outputs(model, variables):  # In evaluation, and in training with the new BatchNorm statistics.
        return model.apply(variables, x), model.apply(variables, x, train=True, mutable=["batch_stats"])

    jax.tree.map(np.testing.assert_array_equal, outputs(patternnet, variables), outputs(convnet, variables))


@pytest.mark.parametrize("text", [
    SEED_SPEC,
    "2xc64-max-2xc128-max-3xc256-max-2xfc512:drop=0.5",
    "c6k5p0-avg-c16k5p0-avg-fc120-fc84:nobn:act=tanh",
    "c32s2-c64s2-global_avg",
    "max-c8-c16-l2k3s1p1-fc10",
])
def test_to_spec_gives_back_the_spec(text):
    model = spec.parse(text)()
    assert spec.to_spec(model) == text
    assert spec.parse(spec.to_spec(model))() == model


def test_to_spec_writes_defaults_out_and_repeats_as_counts():
    assert spec.to_spec(spec.parse("c32k3s1-c32-maxk2s2p0-fc8-fc8:bn:act=relu:drop=0")()) == "2xc32-max-2xfc8"


def test_seed_spec_trains_through_the_fused_cpu_kernels_with_onednn_and_gxx_installed():
    from conftest import ffi_targets

    assert ffi.load(), ffi.INSTALL
    targets = ffi_targets(spec.parse(SEED_SPEC)(), (2, 28, 28, 1))
    # The first layer (one input channel) also gets its weight gradient from the fused kernel.
    assert targets["BatchNormReluMaxPoolBackwardToConvWeights"] == 1 and targets["BatchNormReluMaxPoolBackward"] == 1
    assert targets["BatchNormReluMaxPoolForward"] == 2


@pytest.mark.parametrize("text, message", [
    ("c32-mx!-max", "model spec 'c32-mx!-max': token 2 'mx!' at column 5 is not a layer; write layers such as"),
    ("c32k-max", "token 1 'c32k' at column 1 is not a convolution; write layers"),
    ("c32--max", "token 2 '' at column 5 is not a layer"),
    ("0xc32", "token 1 '0xc32' at column 1 is not a layer"),
    ("c8-fc", "token 2 'fc' at column 4 is not a fully connected layer"),
    ("fc10-c32", "token 2 'c32' at column 6 comes after a fully connected layer"),
    ("c8-fc8:bn:fast", "option 2 'fast' at column 11 is not an option; write layers"),
    ("c8-fc8:drop=1.5", "option 1 'drop=1.5' at column 8 needs a rate from 0 up to (not including) 1"),
    ("c8:drop=0.5", "option 1 'drop=0.5' at column 4 has no effect: dropout follows hidden FC layers"),
])
def test_malformed_spec_names_the_token_its_column_and_the_grammar(text, message):
    with pytest.raises(UserError, match=re.escape(message)):
        spec.parse(text)


def test_unknown_activation_lists_the_activations():
    with pytest.raises(UserError, match=re.escape(
            "option 1 'act=swish' at column 4 names no activation: unknown activation 'swish': "
            "choose one of relu, sigmoid, tanh, abs_tanh, leaky_relu, elu, gelu, silu") + "$"):
        spec.parse("c8:act=swish")


def test_unknown_pooling_lists_the_poolings():
    with pytest.raises(UserError, match=re.escape(
            "token 2 'maxx' at column 4 names no pooling: unknown pooling 'maxx': choose one of max, avg, l2,")):
        spec.parse("c8-maxx")


@pytest.mark.parametrize("text, message", [
    ("c8k5p0-max-c8k5p0-max-c8k5p0",
     "layer 5 'c8k5p0' on its 4×4 input: kernel spans 5 pixels, more than the padded input 4 + 2·0 = 4 "
     "(out = floor((in + 2·padding − dilation·(kernel − 1) − 1)/stride) + 1 with in=4, kernel=5, stride=1"),
    ("c8k7s2p1-c8k7s2p1-c8k7s2p1", "layer 3 'c8k7s2p1' on its 4×4 input: kernel spans 7 pixels"),
    ("c8-maxk3-maxk3-maxk3-maxk3",
     "layer 5 'maxk3' on its 1×1 input: max_pool: window 3 is larger than the padded input 1 + 2·0 = 1 "
     "(out = floor((in + 2·padding − window)/stride) + 1 with in=1"),
    ("global_avg-c8", "layer 2 needs a [batch, height, width, channels] map, but layer 1 'global_avg' leaves"),
])
def test_stack_too_deep_for_its_input_fails_at_init_naming_the_layer_and_formula(text, message):
    model = spec.parse(text)()
    with pytest.raises(UserError, match=re.escape(message)):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 28, 28, 1)))


def test_a_tanh_avg_pooling_spec_learns_in_one_adam_step():
    model = spec.parse("c8-avg-c16-avg-fc32:act=tanh:drop=0.2")(num_classes=10)
    state = steps.create_train_state(model, Config(learning_rate=1e-2, lr_schedule="constant"), (28, 28, 1))
    rng = np.random.default_rng(0)
    batch = {"image": rng.integers(0, 256, (16, 28, 28, 1), np.uint8), "label": rng.integers(0, 10, 16)}
    step = jax.jit(steps.train_step)
    state, before = step(state, batch)
    _, after = step(state.replace(step=0), batch)  # The same dropout mask as the first step.
    assert after["loss"] < before["loss"]


def test_dropout_acts_in_training_only():
    model = spec.parse("fc64:drop=0.5")(num_classes=4)
    x = jnp.ones((2, 3, 3, 1))
    variables = init(model, x.shape)
    apply = jax.jit(model.apply, static_argnames="train")
    assert jnp.array_equal(apply(variables, x), apply(variables, x))
    dropped = apply(variables, x, train=True, rngs={"dropout": jax.random.key(0)})
    assert not jnp.allclose(dropped, apply(variables, x))
