"""Mixed precision (`--dtype=bfloat16`): the policy against Flax's own mixed-precision layers, float32 master
weights, the summary's memory, the run's first line, and bad values. The bfloat16 kernels against XLA's bfloat16 are
in test_kernels.py; a bfloat16 run's bit-exact resume in test_ablate.py."""

from typing import Any

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import SAME_BLOCKS, normal

from cnn_jax import models
from cnn_jax.analysis import summary
from cnn_jax.errors import UserError
from cnn_jax.kernels import dispatch, ffi
from cnn_jax.layers import blocks, losses
from cnn_jax.models import precision
from cnn_jax.training import loop, steps
from cnn_jax.training.config import Config


class Small(nn.Module):
    """Conv -> BatchNorm -> ReLU -> Dense, computing in `dtype` the way Flax's layers do it themselves (their
    `dtype`, parameters float32), or, with None, in whatever their inputs and parameters are."""

    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(8, (3, 3), dtype=self.dtype)(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train, dtype=self.dtype)(x))
        return nn.Dense(10, dtype=self.dtype)(x.reshape(x.shape[0], -1))


BATCH = {"image": jnp.asarray(np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1)), jnp.uint8),
         "label": jnp.arange(16) % 10}


def flax_mixed_precision_step(state):
    """The reference: Flax's own bfloat16 layers (`dtype=bfloat16`) on the state's float32 parameters, the loss in
    float32, Adam on float32; returns (gradients, parameters after the step)."""
    reference = Small(dtype=jnp.bfloat16)

    def loss(params):
        logits, _ = reference.apply({"params": params, "batch_stats": state.batch_stats}, BATCH["image"] / 255.0,
                                    train=True, mutable=["batch_stats"])
        return losses.softmax_cross_entropy(logits.astype(jnp.float32), BATCH["label"]).mean()

    grads = jax.grad(loss)(state.params)
    adam = optax.adam(Config().learning_rate)
    updates, _ = adam.update(grads, adam.init(state.params), state.params)
    return grads, optax.apply_updates(state.params, updates)


def test_a_bfloat16_step_is_flax_mixed_precision_on_float32_master_weights():
    states = {dtype: steps.create_train_state(Small(), Config(dtype=dtype, augment="none"), (8, 8, 1))
              for dtype in ("float32", "bfloat16")}
    grads = {dtype: jax.jit(steps.gradients, static_argnums=(2, 3))(state, BATCH, "none",
                                                                      losses.softmax_cross_entropy)[0]
             for dtype, state in states.items()}
    want_grads, want_params = jax.jit(flax_mixed_precision_step)(states["bfloat16"])
    stepped, _ = jax.jit(steps.train_step)(states["bfloat16"], BATCH)
    paths = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(want_grads)]
    for path, got, want, float32 in zip(paths, *map(jax.tree.leaves, (grads["bfloat16"], want_grads,
                                                                        grads["float32"])), strict=True):
        assert got.dtype == jnp.float32 and np.abs(got - float32).max() > 0  # Not float32's gradients.
        if "BatchNorm" in path:  # Flax keeps its scale and bias float32; the policy rounds them (and so their
            np.testing.assert_allclose(got, want, rtol=2**-8, atol=0)  # gradients) to bfloat16 like any parameter.
        else:
            np.testing.assert_array_equal(got, want)  # Bit for bit: the same casts in the same places.
    for got, want in zip(jax.tree.leaves(stepped.params), jax.tree.leaves(want_params), strict=True):
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_a_bfloat16_conv_block_adds_its_bias_as_bfloat16_does_and_sums_its_gradient_in_float32():
    rng = np.random.default_rng(0)
    z, dy = (jnp.asarray(rng.normal(size=(64, 14, 14, 8)), jnp.bfloat16) for _ in range(2))
    bias = jnp.asarray(rng.normal(size=8), jnp.bfloat16)
    y, pullback = jax.vjp(blocks.add_bias, z, bias)
    assert y.dtype == jnp.bfloat16
    np.testing.assert_array_equal(y, z + bias)
    dz, dbias = pullback(dy)
    np.testing.assert_array_equal(dz, dy)
    exact = np.asarray(dy, np.float64).sum(axis=(0, 1, 2))
    np.testing.assert_allclose(np.asarray(dbias, np.float64), exact, rtol=2**-8, atol=0)  # One rounding to bfloat16.


def test_bfloat16_trains_the_seed_network_through_the_kernels_where_the_cpu_has_them():
    model = models.ConvNet()
    state = steps.create_train_state(model, Config(dtype="bfloat16"), (28, 28, 1))
    batch = {"image": jnp.asarray(np.random.default_rng(0).integers(0, 256, (8, 28, 28, 1)), jnp.uint8),
             "label": jnp.arange(8)}
    program = jax.jit(steps.train_step).lower(state, batch).as_text()
    if not dispatch.bfloat16_fast_path_missing():
        assert "OnednnConvForwardBF16" in program and "BatchNormReluMaxPoolBackwardToConvWeightsBF16" in program
    stepped, metrics = jax.jit(steps.train_step)(state, batch)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves((stepped.params, stepped.opt_state,
                                                                       stepped.batch_stats)) if leaf.ndim)
    assert np.isfinite(metrics["loss"]) and metrics["loss"].dtype == jnp.float32


def test_the_policy_casts_floating_parameters_and_inputs_and_returns_float32():
    model = Small()
    x = normal(0, (2, 8, 8, 1))
    variables = model.init(jax.random.key(0), x)
    seen = []
    with nn.intercept_methods(lambda f, args, kwargs, context: seen.append(f(*args, **kwargs)) or seen[-1]):
        logits = jax.eval_shape(lambda v, x: precision.apply(model.apply, v, x, "bfloat16"), variables, x)
    assert logits.dtype == jnp.float32
    assert [out.dtype for out in seen[:-1]] == [jnp.bfloat16] * 3  # Conv, BatchNorm, Dense; then the model.
    tokens = jnp.ones((2, 5), jnp.int32)
    assert precision.cast({"ids": tokens, "w": x}, "bfloat16")["ids"].dtype == jnp.int32


def test_the_summary_counts_activation_memory_in_the_run_dtype():
    model = models.ConvNet()
    float32, bfloat16 = (summary.summarize(model, (28, 28, 1), dtype) for dtype in ("float32", "bfloat16"))
    assert bfloat16["activation_bytes"] * 2 == float32["activation_bytes"]
    assert bfloat16["total_flops"] == float32["total_flops"] and bfloat16["total_params"] == float32["total_params"]


def test_a_bad_dtype_is_one_line():
    with pytest.raises(UserError, match="^`dtype` must be one of float32, bfloat16, got 'float16'$"):
        Config(dtype="float16").validate()


@pytest.mark.parametrize("setting, reason", [
    ({"backend": "gpu"}, ""),
    ({"CNN_JAX_KERNELS": "xla"}, "CNN_JAX_KERNELS=xla forces XLA's operations"),
    ({"load": False}, "cnn_jax's CPU kernels could not be built"),
    ({"flags": b"flags : fpu sse avx2 avx512f"}, "this CPU has neither AVX-512 BF16 nor AMX-BF16"),
    ({"flags": b"flags : fpu avx512f avx512_bf16"}, ""),
])
def test_where_the_bfloat16_kernels_are_unavailable_it_says_why(monkeypatch, setting, reason):
    monkeypatch.setattr(jax, "default_backend", lambda: setting.get("backend", "cpu"))
    monkeypatch.setenv("CNN_JAX_KERNELS", setting.get("CNN_JAX_KERNELS", "auto"))
    monkeypatch.setattr(ffi, "load", lambda: setting.get("load", True))
    monkeypatch.setattr(ffi, "_cpu_features", lambda: setting.get("flags", b"flags : amx_bf16"))
    assert dispatch.bfloat16_fast_path_missing().startswith(reason) and bool(reason) == bool(
        dispatch.bfloat16_fast_path_missing())


def test_a_bfloat16_run_says_so_on_its_first_line_and_records_its_dtype(tmp_path, idx_dir, capsys, monkeypatch):
    monkeypatch.setattr(ffi, "has_bfloat16_instructions", lambda: False)  # As on a CPU without them.
    results = loop.train_and_evaluate(Config(data_dir=idx_dir, epochs=1, batch_size=50, dtype="bfloat16"),
                                      str(tmp_path))
    first = capsys.readouterr().out.splitlines()[0]
    assert ("computing in bfloat16 through XLA's operations, slower than float32 here: this CPU has neither "
            "AVX-512 BF16 nor AMX-BF16") in first
    assert results["config"]["dtype"] == "bfloat16" and results["test_accuracy"] > 0.2


def _floating_operands(jaxpr, primitives=("conv_general_dilated", "dot_general")):
    """The dtypes of the floating operands of every convolution and matrix product in `jaxpr` and its sub-jaxprs."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in primitives:
            yield eqn.primitive.name, tuple(str(v.aval.dtype) for v in eqn.invars)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            yield from _floating_operands(sub, primitives)


@pytest.mark.parametrize("name", sorted(set(models.MODELS) - set(SAME_BLOCKS)))  # Deeper ones repeat their blocks.
def test_every_zoo_model_convolves_and_multiplies_in_bfloat16(name):
    from conftest import example_model

    model, shape = example_model(name)
    example = models.input_spec(model, shape)
    x = jax.ShapeDtypeStruct((2, *example.shape[1:]), example.dtype)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    forward = lambda v, x: precision.apply(model.apply, v, x, "bfloat16", train=True,  # noqa: E731
                                           mutable=["batch_stats", "aux_logits"], rngs={"dropout": jax.random.key(0)})
    with dispatch.xla_only():  # XLA's operations: the kernels take what these would have taken.
        jaxpr = jax.make_jaxpr(jax.grad(lambda v, x: forward(v, x)[0].sum()))(variables, x)
    operands = list(_floating_operands(jaxpr.jaxpr))
    assert operands and all(dtypes == ("bfloat16", "bfloat16") for _, dtypes in operands), operands


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("ours, flax_layer", [(blocks.Conv(8, (3, 3)), nn.Conv(8, (3, 3))),
                                              (blocks.Dense(8), nn.Dense(8))], ids=["Conv", "Dense"])
def test_the_layers_compute_flaxs_values_and_sum_their_bias_gradients_in_float32(ours, flax_layer, dtype):
    x, dy = normal(0, (32, 12, 12, 3)), normal(1, (32, 12, 12, 8))
    variables = ours.init(jax.random.key(0), x)
    assert jax.tree.structure(variables) == jax.tree.structure(flax_layer.init(jax.random.key(0), x))
    variables = {"params": {**variables["params"], "bias": normal(2, (8,))}}

    def pullback(module):
        with dispatch.xla_only():  # Op by op: under jit XLA may skip roundings (its excess precision) in either.
            y, pull = jax.vjp(lambda v, x: precision.apply(module.apply, v, x, dtype), variables, x)
        return y, *pull(dy)

    (y, grads, dx), (y_flax, grads_flax, dx_flax) = pullback(ours), pullback(flax_layer)
    np.testing.assert_array_equal(y, y_flax)
    np.testing.assert_array_equal(dx, dx_flax)
    np.testing.assert_array_equal(grads["params"]["kernel"], grads_flax["params"]["kernel"])
    exact = np.asarray(precision.cast(dy, dtype), np.float64).sum(axis=(0, 1, 2))
    bound = 2**-8 if dtype == "bfloat16" else 1e-6  # One rounding to bfloat16; float32's sum.
    np.testing.assert_allclose(np.asarray(grads["params"]["bias"], np.float64), exact, rtol=bound, atol=0)

