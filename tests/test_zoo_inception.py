"""InceptionV3: torchvision's parameter counts, its input sizes and small-image stem, real forward passes, and the
auxiliary classifiers' place in the training loss (not in evaluation)."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import he_variables, normal, unoptimised_jit

from cnn_jax.analysis.arithmetic import count_params
from cnn_jax.errors import UserError
from cnn_jax.models.inception import InceptionV3, init
from cnn_jax.training import steps
from cnn_jax.training.config import Config

# torchvision 0.28's inception_v3(aux_logits=..., init_weights=True): sum(p.numel() for p in model.parameters()).
TORCHVISION_PARAMS, TORCHVISION_PARAMS_WITH_AUX = 23_834_568, 27_161_264


def abstract(model, shape):
    return jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *shape)))


@pytest.mark.parametrize("aux, expected", [(False, TORCHVISION_PARAMS), (True, TORCHVISION_PARAMS_WITH_AUX)])
def test_counts_at_299x299x3_equal_torchvision(aux, expected):
    assert count_params(abstract(InceptionV3(num_classes=1000, aux_logits=aux), (299, 299, 3))["params"]) == expected


def test_small_images_get_the_small_stem_with_the_same_weights_but_the_first_layers_channels():
    grids = {}

    def watch(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.module.name in ("Mixed_5d", "Mixed_6e", "Mixed_7c"):
            grids[context.module.name] = out.shape[1]
        return out

    model = InceptionV3(num_classes=10)
    with nn.intercept_methods(watch):
        variables = abstract(model, (28, 28, 1))
    assert grids == {"Mixed_5d": 11, "Mixed_6e": 5, "Mixed_7c": 2}
    # The first convolution has 32·3·3 weights per input channel; the head 2049 per class.
    assert count_params(variables["params"]) == TORCHVISION_PARAMS - 32 * 9 * 2 - 2049 * 990


@pytest.mark.parametrize("size", [74, 64, 18])  # Below torchvision's 75 (from 64 up), and below the small stem's 19.
def test_too_small_images_are_a_one_line_error_naming_the_minimum(size):
    with pytest.raises(UserError, match=f"inception_v3 needs images of at least 75×75 .or, below 64×64, its "
                                        f"small-image stem's 19×19.; got {size}×{size}: raise `image_size`"):
        abstract(InceptionV3(), (size, size, 3))


@pytest.mark.parametrize("size", [75, 19])
def test_the_minimum_sizes_themselves_run(size):
    assert abstract(InceptionV3(num_classes=10), (size, size, 3))["params"]["fc"]["kernel"].shape == (2048, 10)


@pytest.mark.slow
def test_real_forward_passes_at_75_and_299_give_finite_logits():
    """On `he_variables`: initialising the whole network compiles a program costlier than both forward passes
    (25 s); its initialiser is tested on its own below."""
    model = InceptionV3(num_classes=1000)
    variables = he_variables(model, np.zeros((1, 75, 75, 3), np.float32))  # The same variables at any size.
    for size in (75, 299):
        logits = unoptimised_jit(model.apply)(variables, normal(size, (1, size, size, 3)))
        assert logits.shape == (1, 1000) and np.all(np.isfinite(logits))
    aux = jax.eval_shape(functools.partial(InceptionV3(aux_logits=True).apply, train=True, mutable=["batch_stats",
                                                                                                     "aux_logits"],
                                           rngs={"dropout": jax.random.key(1)}),
                         abstract(InceptionV3(aux_logits=True), (299, 299, 3)), jnp.zeros((2, 299, 299, 3)))[1]
    assert jax.tree.map(lambda a: a.shape, aux["aux_logits"]) == {"AuxLogits": {"logits": ((2, 1000),)}}


def test_the_initialiser_is_torchvisions_truncated_normal(stddev=0.1):
    """torchvision's `trunc_normal_(std=stddev, a=-2, b=2)`: bounds of ±2 in absolute terms (20 to 2000 standard
    deviations), so a plain normal of that deviation."""
    draws = np.asarray(init(stddev)(jax.random.key(0), (200_000,)))
    assert abs(draws.std() / stddev - 1) < 0.01 and abs(draws.mean()) < 0.01 * stddev
    assert abs((np.abs(draws) > 2 * stddev).mean() - 0.0455) < 0.003  # A normal's tails, not cut at 2σ.


class TwoHeads(nn.Module):
    """A main and an auxiliary classifier of 2 classes on 2 pixels, the auxiliary one sown only in training."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        if train or self.is_initializing():
            aux = nn.Dense(2, name="aux")(x)
            if train:
                self.sow("aux_logits", "logits", aux)
        return nn.Dense(2, name="main")(x)


def test_auxiliary_losses_weigh_0_3_in_the_training_loss_and_not_in_evaluation():
    model = TwoHeads()
    state = steps.create_train_state(model, Config(), (1, 2, 1))
    batch = {"image": np.array([[[[10], [200]]], [[[90], [30]]]], np.uint8), "label": np.array([0, 1], np.int32)}
    images = batch["image"].astype(np.float32).reshape(2, 2) / 255

    def expected(params):
        ce = lambda layer: optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
            images @ params[layer]["kernel"] + params[layer]["bias"], batch["label"]).mean()
        return ce("main") + 0.3 * ce("aux"), ce("main")

    gradients = unoptimised_jit(functools.partial(steps.gradients, augment="none",
                                                  loss=steps.losses.softmax_cross_entropy))
    grads, _, metrics = gradients(state, batch)
    (_, main), want = jax.value_and_grad(expected, has_aux=True)(state.params)
    np.testing.assert_allclose(float(metrics["loss"]), float(main), rtol=1e-6)  # The reported loss: the main one.
    for layer in ("main", "aux"):
        np.testing.assert_allclose(grads[layer]["kernel"], want[layer]["kernel"], rtol=1e-5, atol=1e-7)
    assert float(jnp.abs(grads["aux"]["kernel"]).sum()) > 0
    sums = unoptimised_jit(steps.eval_step)(state, {**batch, "mask": np.ones(2, np.float32)})
    np.testing.assert_allclose(float(sums["loss"]) / 2, float(main), rtol=1e-6)
