"""How layers run: the dispatch rules, the switch to XLA's operations, and every kernel against XLA's version.

Tests that need cnn_jax's compiled kernels say so in their names: they need
oneDNN and g++ on this machine (`ffi.INSTALL` says how; setup.sh does it).
"""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import custom_calls, ffi_targets, normal

from cnn_jax import layers, models
from cnn_jax.kernels import dispatch, ffi, tap_sum
from cnn_jax.layers import pooling
from cnn_jax.models import precision

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEEDS_KERNELS = f"cnn_jax's compiled CPU kernels need {ffi.INSTALL}"


def test_compiled_kernels_build_and_load_with_onednn_and_gxx_installed():
    assert ffi.load(), NEEDS_KERNELS


def _xla_conv(x, w, strides, padding):
    return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def assert_same_value_and_gradients(fast, x, w, strides, padding, rtol, atol):
    """`fast(x, w)` against XLA's convolution: output, and gradients for a random cotangent."""
    plain = functools.partial(_xla_conv, strides=strides, padding=padding)
    out = plain(x, w)
    np.testing.assert_allclose(jax.jit(fast)(x, w), out, rtol=rtol, atol=atol)
    cotangent = normal(2, out.shape)
    got = jax.jit(jax.grad(lambda x, w: jnp.sum(fast(x, w) * cotangent), (0, 1)))(x, w)
    want = jax.grad(lambda x, w: jnp.sum(plain(x, w) * cotangent), (0, 1))(x, w)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=rtol, atol=10 * atol)


@pytest.mark.parametrize("implementation", ["tap sum", "onednn and gxx"])
@pytest.mark.parametrize(
    "shape, kernel, strides, padding",
    [
        ((3, 28, 28, 1), (5, 5, 1, 16), (1, 1), ((2, 2), (2, 2))),  # The seed network's first layer.
        # The everyday suite checks the seed network's layer; the full suite the edge cases.
        pytest.param((2, 9, 11, 3), (3, 3, 3, 8), (2, 2), ((1, 1), (1, 1)), marks=pytest.mark.slow),
        pytest.param((2, 10, 10, 2), (4, 2, 2, 5), (3, 1), ((0, 2), (1, 0)),  # Output channels not a multiple of 8.
                     marks=pytest.mark.slow),
        pytest.param((2, 10, 13, 4), (4, 7, 4, 24), (3, 2), ((0, 2), (3, 0)),  # Kernel columns in blocks 5 + 2.
                     marks=pytest.mark.slow),
    ],
)
def test_few_channel_convolutions_equal_xla_convolution_in_value_and_gradient(implementation, shape, kernel, strides,
                                                                            padding):
    """The tap sum (without the compiled kernels), and `ffi.conv` with its own weight gradient for few channels."""
    if implementation == "onednn and gxx":
        assert ffi.load(), NEEDS_KERNELS
        few = dispatch.few_channel_weight_gradient(kernel)
        fast = lambda x, w: ffi.conv(x, w, strides, padding, few)  # noqa: E731
    else:
        fast = lambda x, w: tap_sum.conv(x, w, strides, padding)  # noqa: E731
    x, w = normal(0, shape), normal(1, kernel)
    assert_same_value_and_gradients(fast, x, w, strides, padding, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "shape, kernel, strides, padding",
    [
        ((4, 14, 14, 16), (5, 5, 16, 32), (1, 1), ((2, 2), (2, 2))),  # The seed network's second layer.
        pytest.param((3, 11, 9, 8), (3, 3, 8, 5), (2, 1), ((1, 0), (2, 1)), marks=pytest.mark.slow),
        pytest.param((2, 7, 7, 5), (1, 1, 5, 6), (1, 1), ((0, 0), (0, 0)), marks=pytest.mark.slow),
        ((4, 1, 1, 64), (3, 3, 64, 64), (1, 1), ((1, 1), (1, 1))),  # VGG's last layers at 28×28: all but one tap pad.
        # Strided 1×1s (shortcuts), with < 8 input channels, where oneDNN 3.2's AVX2 weight gradient is wrong; padded.
        ((3, 6, 10, 4), (1, 1, 4, 12), (2, 2), ((0, 0), (0, 0))),
        ((3, 7, 10, 4), (1, 1, 4, 12), (2, 3), ((1, 0), (0, 2))),
    ],
)
def test_onednn_convolution_equals_xla_convolution_in_value_and_gradient_with_onednn_and_gxx(shape, kernel, strides,
                                                                                           padding):
    assert ffi.load(), NEEDS_KERNELS
    x, w = normal(0, shape), normal(1, kernel)
    fast = lambda x, w: ffi.conv(x, w, strides, padding, False)  # noqa: E731
    assert_same_value_and_gradients(fast, x, w, strides, padding, rtol=1e-5, atol=1e-4)


DN = jax.lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))  # NHWC × HWIO, as Flax passes them.
PADS = ((1, 1), (1, 1))


def _conv_program(cin: int, padding, dilation: int = 1):
    """`dispatch.conv_general_dilated` lowered for an 8×8 map with `cin` channels and 8 3×3 filters."""
    conv = functools.partial(dispatch.conv_general_dilated, window_strides=(1, 1), padding=padding,
                             rhs_dilation=(dilation, dilation), dimension_numbers=DN)
    return jax.jit(conv).lower(jnp.zeros((1, 8, 8, cin)), jnp.zeros((3, 3, cin, 8)))


def test_plain_convolutions_run_on_onednn_and_others_on_xla_with_onednn_and_gxx():
    assert ffi.load(), NEEDS_KERNELS
    onednn = [custom_calls(_conv_program(cin, padding)) for cin, padding in ((1, PADS), (16, PADS), (16, "SAME"),
                                                                              (16, "VALID"))]
    assert all(calls == {"OnednnConvForward": 1} for calls in onednn)
    assert not custom_calls(_conv_program(16, ((-1, 1), (1, 1)))) and not custom_calls(_conv_program(16, PADS, 2))
    assert not custom_calls(_conv_program(16, "SAME", 2))


@pytest.mark.parametrize("padding, strides", [("SAME", (2, 2)), ("SAME", (1, 1)), ("VALID", (2, 1))])
def test_same_and_valid_padding_are_the_zeros_xla_adds(padding, strides):
    """A string padding becomes explicit zeros (asymmetric for "SAME" at stride 2 on an even map), on any backend."""
    x, w = normal(0, (2, 8, 8, 3)), normal(1, (3, 3, 3, 8))
    got = dispatch.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN)
    expected = jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_first_layers_get_their_own_weight_gradient_kernel():
    assert dispatch.few_channel_weight_gradient((5, 5, 1, 16))  # The seed network's first layer.
    assert not dispatch.few_channel_weight_gradient((5, 5, 16, 32))  # Many input channels: oneDNN's.
    assert not dispatch.few_channel_weight_gradient((3, 3, 3, 5))  # Output channels not a multiple of 8.


def test_without_the_compiled_kernels_few_channel_convolutions_are_tap_sums(monkeypatch):
    """On a machine where the kernels cannot be built (`ffi.load()` is False): no FFI call, and a tap sum for few
    channels, which XLA's program shows as no convolution at all."""
    monkeypatch.setattr(ffi, "load", lambda: False)
    for cin, convolutions in ((1, 0), (16, 1)):
        program = _conv_program(cin, PADS)
        assert program.as_text().count("stablehlo.convolution") == convolutions and not custom_calls(program)


def test_xla_only_switches_every_layer_to_xla_operations_with_onednn_and_gxx():
    assert ffi.load(), NEEDS_KERNELS
    with dispatch.xla_only():
        assert not dispatch.compiled_kernels()
        assert sum(ffi_targets(models.ConvNet(), (2, 28, 28, 1)).values()) == 0
    assert dispatch.compiled_kernels() and sum(ffi_targets(models.ConvNet(), (2, 28, 28, 1)).values()) > 0


def test_the_environment_variable_switches_to_xla_operations_and_rejects_unknown_values():
    check = ("from cnn_jax.kernels import dispatch; from cnn_jax.errors import UserError\n"
             "try:\n    print(dispatch.compiled_kernels())\nexcept UserError as e:\n    print(e)")
    results = {}
    for value in ("xla", "fast"):
        environment = {**os.environ, "CNN_JAX_KERNELS": value}
        results[value] = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT,
                                        env=environment).stdout.strip()
    assert results["xla"] == "False"
    assert results["fast"].startswith("CNN_JAX_KERNELS=fast is not one of auto, xla")


# The seed network's blocks with its pooling built in the ways a user might: all are the same 2×2 max-pool.
EQUIVALENT_POOLINGS = {
    "max_pool_2x2": pooling.max_pool_2x2,
    "lookup": pooling.lookup("max", 2),
    "lookup_with_stride": pooling.lookup("max", 2, 2, 0),
    "partial": functools.partial(pooling.max_pool, window=2),
    "partial_of_partial": functools.partial(functools.partial(pooling.max_pool, window=2), stride=2),
}


@pytest.mark.parametrize("name", list(EQUIVALENT_POOLINGS))
def test_the_seed_network_trains_through_the_fused_kernels_however_its_pooling_was_built_with_onednn_and_gxx(name):
    assert ffi.load(), NEEDS_KERNELS
    targets = ffi_targets(models.ConvNet(pool=EQUIVALENT_POOLINGS[name]), (2, 28, 28, 1))
    assert targets["BatchNormReluMaxPoolForward"] == 2
    # The first layer's weight gradient comes from the fused backward pass, the second's from oneDNN.
    assert targets["BatchNormReluMaxPoolBackwardToConvWeights"] == targets["BatchNormReluMaxPoolBackward"] == 1
    assert targets["OnednnConvWeightGradient"] == 1 and "FewChannelConvWeightGradient" not in targets


@pytest.mark.parametrize("block, shape", [
    (layers.ConvBlock(16, 5, padding=2, pool=None), (2, 28, 28, 1)),
    (layers.ConvBlock(16, 5, padding=2, pool=pooling.max_pool_2x2, activation=jnp.tanh), (2, 28, 28, 1)),
    (layers.ConvBlock(16, 5, padding=2, pool=pooling.lookup("max", 2, 1)), (2, 28, 28, 1)),
    (layers.ConvBlock(16, 5, padding=2, pool=pooling.lookup("avg", 2)), (2, 28, 28, 1)),
    (layers.ConvBlock(16, 5, padding=2, pool=pooling.max_pool_2x2, batch_norm=False), (2, 28, 28, 1)),
    (layers.ConvBlock(16, 5, padding=2, pool=pooling.max_pool_2x2), (2, 7, 7, 1)),  # Odd size.
])
def test_blocks_that_compute_something_else_are_not_fused(block, shape):
    assert not any(name.startswith("BatchNormReluMaxPool") for name in ffi_targets(block, shape))


@pytest.mark.parametrize(
    "shape, features, kernel, strides, padding",
    [
        # The everyday suite checks a tiny block and the seed network's first; the full suite the rest.
        pytest.param((8, 12, 10, 6), 5, 3, 1, 1, marks=pytest.mark.slow),
        pytest.param((3, 28, 28, 16), 5, 3, 1, 1, marks=pytest.mark.slow),
        ((2, 2, 4, 1), 5, 3, 1, 1),
        # Few input channels: the kernel's gradient from BatchNormReluMaxPoolBackwardToConvWeights.
        ((4, 28, 28, 1), 16, 5, 1, 2),  # The seed network's first layer.
        pytest.param((3, 13, 17, 3), 8, 3, 2, 2, marks=pytest.mark.slow),
        pytest.param((2, 12, 8, 2), 24, 3, 1, 1, marks=pytest.mark.slow),
    ],
)
def test_fused_batch_norm_relu_max_pool_equals_xla_layers_with_onednn_and_gxx(shape, features, kernel, strides,
                                                                             padding):
    """The fused kernels against XLA's convolution -> BatchNorm -> relu -> max-pool: outputs, statistics, gradients."""
    block = layers.ConvBlock(features, kernel, strides=strides, padding=padding, pool=pooling.max_pool_2x2)
    fused_program = assert_fused_block_equals_xla_layers(block, 3 * normal(0, shape) + 1)
    few_channels = dispatch.few_channel_weight_gradient((kernel, kernel, shape[-1], features))
    assert "BatchNormReluMaxPoolForward" in fused_program
    assert ("BatchNormReluMaxPoolBackwardToConvWeights" in fused_program) == few_channels


def assert_fused_block_equals_xla_layers(block, x, dtype: str = "float32") -> str:
    """`block`'s training step with the compiled kernels against XLA's layers, both computing in `dtype`
    (`cnn_jax.models.precision`): outputs, BatchNorm's statistics and the gradients of its parameters and input,
    for perturbed initial values, within float32's tolerance, or in bfloat16 `bfloat16_errors` summed over the
    inputs `x` (a list) within `assert_close_in_bfloat16`'s. Returns the fused step's program."""
    if dtype != "float32":
        errors = [fused_block_and_xla_layers(block, each, dtype)[1] for each in x]
        for leaf in zip(*errors, strict=True):
            error, xla_error = np.sum(leaf, axis=0)
            assert error <= max(2 * xla_error, 1e-2 * len(x)), f"relative errors {error:.2e}, XLA's {xla_error:.2e}"
        return fused_block_and_xla_layers(block, x[0], dtype)[0]
    return fused_block_and_xla_layers(block, x, dtype)[0]


def fused_block_and_xla_layers(block, x, dtype: str) -> tuple[str, list]:
    """`assert_fused_block_equals_xla_layers` for one input: (the fused step's program, in bfloat16 the
    `bfloat16_errors` of each output and gradient; in float32 none, each asserted equal)."""
    assert ffi.load(), NEEDS_KERNELS
    variables = jax.jit(block.init)(jax.random.key(1), x)
    rng = np.random.default_rng(2)  # In NumPy: eager JAX would compile a program per leaf's shape.
    variables = jax.tree.map(lambda v: v + 0.3 * rng.standard_normal(v.shape, np.float32), variables)
    weights = normal(3, jax.eval_shape(functools.partial(block.apply, train=True, mutable=["batch_stats"]),
                                       variables, x)[0].shape)

    exact = None

    def step():
        """A new function each call: `jax.jit` would reuse the program it traced for the same function, whatever
        `dispatch.xla_only()` says now."""
        def loss(params, x):
            y, updates = precision.apply(block.apply, {"params": params, "batch_stats": variables["batch_stats"]}, x,
                                         dtype, train=True, mutable=["batch_stats"])
            return jnp.sum(y * weights), (y, updates)

        return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))

    fused_program = step().lower(variables["params"], x).as_text()
    fused = step()(variables["params"], x)
    with dispatch.xla_only():
        plain_step = step()
        assert not custom_calls(plain_step.lower(variables["params"], x))  # XLA's own operations, no kernel.
        plain = plain_step(variables["params"], x)
        if dtype != "float32":  # The float32 computation on the values bfloat16 rounds the inputs to.
            dtype, rounded = "float32", precision.cast(precision.cast((variables["params"], x), "bfloat16"), "float32")
            exact = step()(*rounded)
    if exact is None:
        for got, want in zip(jax.tree.leaves(fused), jax.tree.leaves(plain), strict=True):  # The input's gradient too.
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
        return fused_program, []
    # Not the loss itself: a sum of terms of both signs has no relative accuracy in bfloat16.
    outputs_and_gradients = lambda result: (result[0][1], result[1])  # noqa: E731
    return fused_program, [bfloat16_errors(*leaves) for leaves in
                           zip(*(jax.tree.leaves(outputs_and_gradients(r)) for r in (fused, plain, exact)), strict=True)]


def bfloat16_errors(got, want, exact) -> tuple[float, float]:
    """The relative errors (L2, over the whole array) of `got` and of XLA's bfloat16 result `want` from `exact`
    (float32 on the same rounded inputs).

    Elementwise comparisons would fail on ties: where two values of a max-pooling window round to the same bfloat16,
    the first takes the gradient, and which ties arise depends on the last bit of each computation. On a small
    array one tie decided otherwise moves a gradient's error from 0.3% to 15%, for the kernels or for XLA (one
    block's four inputs: 15%, 0.3%, 0.3%, 0.3% against XLA's 5%, 7%, 0.3%, 0.3%), so blocks compare errors summed
    over several inputs."""
    got, want, exact = (np.asarray(a, np.float64) for a in (got, want, exact))
    scale = max(np.linalg.norm(exact), 1e-30)
    return np.linalg.norm(got - exact) / scale, np.linalg.norm(want - exact) / scale


def assert_close_in_bfloat16(got, want, exact):
    """`got` about as accurate as XLA's bfloat16 result `want` (`bfloat16_errors`): its error at most twice XLA's, or
    within 1% (a few of bfloat16's 2⁻⁸ steps)."""
    error, xla_error = bfloat16_errors(got, want, exact)
    assert error <= max(2 * xla_error, 1e-2), f"relative error {error:.2e}, XLA's bfloat16 {xla_error:.2e}"


@pytest.mark.parametrize("block, shape", [
    (layers.ConvBlock(8, 3, padding=1), (3, 6, 10, 4)),  # No pooling.
    pytest.param(layers.ConvBlock(8, 3, padding=1, pool=pooling.lookup("avg", 2)), (3, 6, 10, 4),
                 marks=pytest.mark.slow),  # Another pooling, after the kernel.
    pytest.param(layers.ConvBlock(24, 3, padding=1, pool=pooling.lookup("max", 3, 2, 1)), (2, 9, 7, 5),
                 marks=pytest.mark.slow),
    pytest.param(layers.ConvBN(8, (3, 3)), (3, 6, 10, 4), marks=pytest.mark.slow),  # ResNet's, GoogLeNet's.
    (layers.ConvBN(12, (1, 1), strides=2, relu=False), (3, 6, 10, 4)),  # A shortcut, and a block before its sum.
])
def test_fused_batch_norm_and_relu_equals_xla_layers_with_onednn_and_gxx(block, shape):
    program = assert_fused_block_equals_xla_layers(block, 3 * normal(0, shape) + 1)
    assert "BatchNormActForward" in program and "BatchNormActBackward" in program
    assert "BatchNormReluMaxPool" not in program


BFLOAT16_INSTRUCTIONS = pytest.mark.skipif(
    not ffi.has_bfloat16_instructions(), reason="this CPU has neither AVX-512 BF16 nor AMX-BF16, so the bfloat16 kernels "
    "are not used: bfloat16 layers are XLA's (test_precision.py trains through them)")


@BFLOAT16_INSTRUCTIONS
@pytest.mark.parametrize("shape, kernel, strides, padding", [
    ((3, 28, 28, 1), (5, 5, 1, 16), (1, 1), ((2, 2), (2, 2))),  # The seed network's first layer: its own gradient.
    ((2, 14, 14, 16), (5, 5, 16, 32), (1, 1), ((2, 2), (2, 2))),  # Its second: oneDNN's, summed in float32.
    pytest.param((2, 10, 13, 4), (4, 7, 4, 24), (3, 2), ((0, 2), (3, 0)), marks=pytest.mark.slow),
    pytest.param((2, 9, 11, 20), (3, 3, 20, 12), (2, 2), ((1, 0), (0, 1)), marks=pytest.mark.slow),
])
def test_bfloat16_convolutions_equal_xla_bfloat16_in_value_and_gradient_with_onednn_and_gxx(shape, kernel, strides,
                                                                                           padding):
    assert ffi.load(), NEEDS_KERNELS
    x, w = normal(0, shape).astype(jnp.bfloat16), (normal(1, kernel) / kernel[0]).astype(jnp.bfloat16)
    fast = lambda x, w: ffi.conv(x, w, strides, padding, dispatch.few_channel_weight_gradient(kernel))  # noqa: E731
    plain = functools.partial(_xla_conv, strides=strides, padding=padding)
    cotangent = normal(2, plain(x, w).shape).astype(jnp.bfloat16)
    results = []
    for conv, dtype in ((fast, jnp.bfloat16), (plain, jnp.bfloat16), (plain, jnp.float32)):  # x, w: bfloat16 values.
        value_and_grads = jax.jit(lambda x, w, g, conv=conv: (conv(x, w), jax.vjp(conv, x, w)[1](g)))
        results.append(value_and_grads(x.astype(dtype), w.astype(dtype), cotangent.astype(dtype)))
    assert {"OnednnConvForwardBF16", "OnednnConvInputGradientBF16"} <= set(
        custom_calls(jax.jit(lambda x, w: jax.vjp(fast, x, w)[1](cotangent)).lower(x, w)) |
        custom_calls(jax.jit(fast).lower(x, w)))
    for got, want, exact in zip(*map(jax.tree.leaves, results), strict=True):
        assert got.dtype == want.dtype == jnp.bfloat16
        assert_close_in_bfloat16(got, want, exact)


@BFLOAT16_INSTRUCTIONS
@pytest.mark.parametrize("block, shape, kernel", [
    (layers.ConvBlock(16, 5, padding=2, pool=pooling.max_pool_2x2), (3, 12, 12, 1),  # A first layer: its weights'
     "BatchNormReluMaxPoolBackwardToConvWeightsBF16"),                               # gradient in the fused kernel.
    pytest.param(layers.ConvBlock(8, 3, padding=1, pool=pooling.max_pool_2x2), (3, 6, 10, 12),
                 "BatchNormReluMaxPoolBackwardBF16", marks=pytest.mark.slow),
    (layers.ConvBlock(8, 3, padding=1), (3, 6, 10, 4), "BatchNormActBackwardBF16"),
    pytest.param(layers.ConvBN(12, (1, 1), strides=2, relu=False), (3, 6, 10, 4), "BatchNormActBackwardBF16",
                 marks=pytest.mark.slow),
])
def test_fused_kernels_in_bfloat16_equal_xla_layers_in_bfloat16_with_onednn_and_gxx(block, shape, kernel):
    inputs = [3 * normal(seed, shape) + 1 for seed in range(4)]
    program = assert_fused_block_equals_xla_layers(block, inputs, dtype="bfloat16")
    assert kernel in program


def test_a_resnet_block_trains_through_the_batch_norm_kernels_with_onednn_and_gxx():
    targets = ffi_targets(models.resnet.BasicBlock(16, strides=2), (2, 8, 8, 8))
    assert targets["BatchNormActForward"] == 3  # Two in the residual branch, one in the shortcut.
    assert targets["BatchNormActBackward"] == 3


@pytest.mark.parametrize("block", [layers.ConvBlock(16, 5, padding=2, pool=pooling.max_pool_2x2),
                                   pytest.param(layers.ConvBlock(8, 3, padding=1), marks=pytest.mark.slow)])
def test_fused_kernels_under_vmap_equal_them_one_by_one_with_onednn_and_gxx(block):
    """As `cnn_jax.training.vectorized` runs them (several models' parameters, one batch of images), in the two
    schedules of `csrc/stack.h`: a stack of 1 runs on all the cores as a call alone does, bit for bit; a stack of 3
    (more than this machine's cores) and a vmap of a vmap (2 models × 2 image batches) run side by side, one core
    each, whose sums split differently: within float32's rounding of the calls one by one, and the same bits on
    every call."""
    assert ffi.load(), NEEDS_KERNELS
    images = normal(0, (2, 4, 28, 28, 1))
    variables = jax.vmap(lambda key: block.init(key, images[0]))(jax.random.split(jax.random.key(1), 3))

    def grads(params, stats, x):
        def loss(params):
            y, _ = block.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
            return jnp.sum(y * jnp.sin(jnp.arange(y.size).reshape(y.shape)))

        return jax.grad(loss)(params)

    alone = jax.jit(grads)
    over_models = jax.jit(jax.vmap(grads, in_axes=(0, 0, None)))

    def assert_each_is_alone(program, models, images_in, cases, exact):
        """`cases`: {index of an element in `program`'s results: (its model, its image batch)}."""
        stacked = {c: jax.tree.map(lambda v: v[:models], variables[c]) for c in ("params", "batch_stats")}
        together = program(stacked["params"], stacked["batch_stats"], images_in)
        for got, repeated in zip(*(jax.tree.leaves(r) for r in (together, program(*stacked.values(), images_in))),
                                 strict=True):
            np.testing.assert_array_equal(got, repeated)
        for index, (k, b) in cases.items():
            model = (jax.tree.map(lambda v: v[k], variables[c]) for c in ("params", "batch_stats"))
            for got, want in zip(jax.tree.leaves(together), jax.tree.leaves(alone(*model, images[b])), strict=True):
                if exact:
                    np.testing.assert_array_equal(got[index], want)
                else:
                    np.testing.assert_allclose(got[index], want, rtol=1e-4, atol=1e-4)

    assert_each_is_alone(over_models, 1, images[0], {(0,): (0, 0)}, exact=True)
    assert_each_is_alone(over_models, 3, images[0], {(k,): (k, 0) for k in range(3)}, exact=False)
    nested = jax.jit(jax.vmap(over_models, in_axes=(None, None, 0)))
    assert_each_is_alone(nested, 2, images, {(b, k): (k, b) for b in range(2) for k in range(2)}, exact=False)


@pytest.mark.parametrize("x_shape, kernel_shape, y_shape", [
    ((3, 2, 6, 6, 1), (2, 3, 3, 1, 4), (3, 2, 6, 6, 4)),  # Stacks of 3 and 2.
    ((6, 6, 1), (3, 3, 1, 4), (1, 6, 6, 4)),  # The first operand of too low a rank, the others of one call.
    ((1, 6, 6, 1), (3, 3, 1), (1, 6, 6, 4))])  # A later one.
def test_a_kernel_refuses_operands_stacked_to_different_shapes_with_onednn_and_gxx(x_shape, kernel_shape, y_shape):
    """`csrc/stack.h` splits a call into its stack's elements only where every operand's leading axes agree (each
    the stack's size or 1): otherwise it fails the call rather than read past a buffer."""
    assert ffi.load(), NEEDS_KERNELS
    forward = ffi._call("OnednnConvForward", jax.ShapeDtypeStruct(y_shape, jnp.float32))
    with pytest.raises(Exception, match="stacked to different shapes"):
        forward(jnp.zeros(x_shape), jnp.zeros(kernel_shape),
                **ffi._attributes((1, 1), ((1, 1), (1, 1)))).block_until_ready()


def test_fused_kernel_takes_the_conv_bias_as_an_offset_that_moves_only_the_mean_with_onednn_and_gxx():
    assert ffi.load(), NEEDS_KERNELS
    x = 2 * normal(0, (4, 6, 8, 8)) + 1
    offset, scale, bias = (normal(i, (8,)) for i in (1, 2, 3))

    def fused(x, offset):
        return ffi.batch_norm_relu_max_pool(x, offset, scale, bias, 1e-5)

    @jax.jit  # One program: eagerly, each operation around the kernels would compile on its own.
    def outputs_and_gradients(x, offset, dy):
        outputs, vjp = jax.vjp(fused, x, offset)
        return outputs, fused(x, jnp.zeros(8)), vjp((dy, jnp.zeros(8), jnp.zeros(8)))

    dy = normal(4, (4, 3, 4, 8))
    (y, mean, var), (y0, mean0, var0), (dx, doffset) = outputs_and_gradients(x, offset, dy)
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_allclose(mean, mean0 + offset, rtol=1e-6)
    np.testing.assert_array_equal(var, var0)
    np.testing.assert_allclose(doffset, dx.sum(axis=(0, 1, 2)), atol=1e-5)  # The gradient of x + offset.


MAX_POOLINGS = {  # Test id -> (the pooling, the padding XLA's windowed reduction adds).
    "googlenet": (functools.partial(pooling.max_pool, window=3, stride=1, padding=1), ((1, 1), (1, 1))),
    "resnet_stem": (functools.partial(pooling.max_pool, window=3, stride=2, padding=1), ((1, 1), (1, 1))),
    "ceil_mode": (functools.partial(pooling.max_pool_ceil, window=3, stride=2), ((0, 0), (0, 1))),
}


def _xla_max_pool(x, window, stride, pads):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, window, window, 1), (1, stride, stride, 1),
                                 ((0, 0), *pads, (0, 0)))


def _max_pool_value_and_gradient(pool, x, dy):
    """`pool(x)` and its gradient for the cotangent `dy`, with the FFI targets the program calls."""
    program = jax.jit(lambda x, dy: (pool(x), jax.vjp(pool, x)[1](dy)[0]))
    return (*program(x, dy), set(custom_calls(program.lower(x, dy))))


@pytest.mark.parametrize("name", list(MAX_POOLINGS))
def test_overlapping_max_pooling_runs_on_onednn_equal_to_xla_s_with_onednn_and_gxx(name):
    """Values and gradients against XLA's windowed reduction (its select-and-scatter gradient) and against cnn_jax's
    own XLA version, on many tied maxima (integers in 0..3): the first maximum of a window, row-major, takes the
    gradient; a map of 7×8 leaves the ceil-mode pooling's last column a partial window."""
    assert ffi.load(), NEEDS_KERNELS
    pool, pads = MAX_POOLINGS[name]
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 4, (3, 7, 8, 5)).astype(np.float32))
    expected, expected_vjp = jax.vjp(lambda x: _xla_max_pool(x, 3, pool.keywords["stride"], pads), x)
    dy = normal(1, expected.shape)
    y, dx, targets = _max_pool_value_and_gradient(pool, x, dy)
    assert {"OnednnMaxPoolForward", "OnednnMaxPoolBackward"} <= targets
    with dispatch.xla_only():
        y_xla, dx_xla, targets_xla = _max_pool_value_and_gradient(pool, x, dy)
    assert not targets_xla
    for got in (y, y_xla):
        np.testing.assert_array_equal(got, expected)
    for got in (dx, dx_xla):  # Sums of up to 9 windows' gradients, in another order.
        np.testing.assert_allclose(got, expected_vjp(dy)[0], atol=1e-6)


@BFLOAT16_INSTRUCTIONS
def test_bfloat16_max_pooling_equals_xla_bfloat16_with_onednn_and_gxx():
    pool, pads = MAX_POOLINGS["googlenet"]
    x, dy = normal(0, (2, 9, 9, 16)).astype(jnp.bfloat16), normal(1, (2, 9, 9, 16)).astype(jnp.bfloat16)
    y, dx, targets = _max_pool_value_and_gradient(pool, x, dy)
    assert {"OnednnMaxPoolForwardBF16", "OnednnMaxPoolBackwardBF16"} <= targets
    assert y.dtype == dx.dtype == jnp.bfloat16
    np.testing.assert_array_equal(y, _xla_max_pool(x, 3, 1, pads))
    results = [jax.vjp(lambda x: _xla_max_pool(x, 3, 1, pads), x.astype(dtype))[1](dy.astype(dtype))[0]
               for dtype in (jnp.bfloat16, jnp.float32)]
    assert_close_in_bfloat16(dx, *results)


@pytest.mark.parametrize("shape, window, stride, padding", [
    ((2, 12, 4), 3, 2, 1),  # A sequence.
    ((2, 8, 8, 3), 2, 2, 0),  # Windows that tile the map: a reshape and a max.
])
def test_other_max_poolings_stay_xla_s(shape, window, stride, padding):
    pool = functools.partial(pooling.max_pool, window=window, stride=stride, padding=padding)
    assert not custom_calls(jax.jit(lambda x: jax.vjp(pool, x)[1](pool(x))).lower(jnp.zeros(shape)))


def test_max_pooling_under_vmap_equals_it_one_by_one_with_onednn_and_gxx():
    """A stack of 3 (more than this machine's cores: side by side, one core each) against each element alone."""
    assert ffi.load(), NEEDS_KERNELS
    pool = MAX_POOLINGS["googlenet"][0]
    x, dy = normal(0, (3, 2, 9, 9, 8)), normal(1, (3, 2, 9, 9, 8))
    together = jax.jit(jax.vmap(lambda x, dy: _max_pool_value_and_gradient(pool, x, dy)[:2]))(x, dy)
    for k in range(3):
        for got, want in zip(together, _max_pool_value_and_gradient(pool, x[k], dy[k])[:2], strict=True):
            np.testing.assert_array_equal(got[k], want)


@pytest.mark.slow
def test_max_pooling_on_two_devices_equals_one_device_with_onednn_and_gxx():
    """In a mesh each device pools its part of the batch (`ffi._per_device`); outside one, with several devices,
    the pooling is XLA's."""
    script = """
import functools, jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from cnn_jax.layers import pooling
pool = functools.partial(pooling.max_pool, window=3, stride=2, padding=1)
rng = np.random.default_rng(0)
x, dy = (jnp.asarray(rng.standard_normal(s).astype(np.float32)) for s in ((4, 9, 9, 3), (4, 5, 5, 3)))
step = lambda x, dy: (pool(x), jax.vjp(pool, x)[1](dy)[0])
alone = jax.jit(step)(x, dy)
mesh = jax.make_mesh((2,), ("batch",))
with jax.set_mesh(mesh):
    split = NamedSharding(mesh, PartitionSpec("batch"))
    program = jax.jit(step)
    x, dy = jax.device_put(x, split), jax.device_put(dy, split)
    together = program(x, dy)
    assert "OnednnMaxPoolBackward" in program.lower(x, dy).as_text()
np.testing.assert_array_equal(together[0], alone[0])
np.testing.assert_allclose(together[1], alone[1], atol=1e-6)  # Alone on two devices is XLA's: sums in another order.
print("equal")
"""
    environment = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=environment, capture_output=True, text=True)
    assert result.returncode == 0 and "equal" in result.stdout, result.stderr[-2000:]
