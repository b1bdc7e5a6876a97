"""Every pooling against a plain NumPy reference (values) and a jnp loop reference (gradients)."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import normal

from cnn_jax import layers
from cnn_jax.errors import UserError
from cnn_jax.layers import pooling

FORMULA = "out = floor((in + 2·padding − window)/stride) + 1"
KEYS = {"params": jax.random.key(1), "dropout": jax.random.key(2)}


def reference_pool(x, window, stride, padding, reduce, fill=0.0, xp=np):
    """Pools `x` [b, h, w, c] one window at a time; `reduce` maps a block [b, k, k, c] to [b, c]. xp is np or jnp."""
    stride = stride or window
    x = xp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=fill)
    out_h, out_w = ((size - window) // stride + 1 for size in x.shape[1:3])
    block = lambda i, j: x[:, i * stride : i * stride + window, j * stride : j * stride + window]
    return xp.stack([xp.stack([reduce(block(i, j)) for j in range(out_w)], 1) for i in range(out_h)], 1)


def gaussian_kernel(window, sigma):
    """exp(−d²/(2σ²)) by distance d from the window centre, normalised, `[window, window]`."""
    centre = (window - 1) / 2
    distance_squared = lambda i, j: (i - centre) ** 2 + (j - centre) ** 2
    weights = [[math.exp(-distance_squared(i, j) / (2 * sigma**2)) for j in range(window)] for i in range(window)]
    return np.array(weights) / np.sum(weights)


def stochastic_expectation(v):
    """Σ p_i a_i = Σ a² / Σ a over a block, negatives as 0, all-zero blocks 0."""
    a = v * (v > 0)
    total = a.sum((1, 2))
    return (a**2).sum((1, 2)) / (total + (total == 0))


# Test id -> (registry name, lookup options, block reduction, padding fill) of the windowed poolings.
WINDOWED = {
    "max": ("max", {}, lambda v: v.max((1, 2)), -np.inf),
    "avg": ("avg", {}, lambda v: v.mean((1, 2)), 0.0),
    "l2": ("l2", {}, lambda v: (abs(v) ** 2).sum((1, 2)) ** 0.5, 0.0),
    "l3": ("l2", {"p": 3.0}, lambda v: (abs(v) ** 3).sum((1, 2)) ** (1 / 3), 0.0),
    "gaussian": ("gaussian", {"sigma": 0.8}, None, 0.0),  # Its reduction depends on the window.
    "mixed": ("mixed", {"mix": 0.3}, None, None),  # Max and average, each padded its own way.
    "stochastic": ("stochastic", {}, stochastic_expectation, 0.0),  # Test mode.
}
CONFIGS = [(2, None, 0), (3, 2, 1), (3, None, 2)]  # (window, stride, padding)


def as_function(pool, x):
    """`pool` as a jitted function of x (test mode), initialising it first if it is a module."""
    if isinstance(pool, nn.Module):
        variables = pool.init(KEYS, x)
        return jax.jit(lambda x: pool.apply(variables, x))
    return jax.jit(pool)  # Plain poolings are pure functions of x.


def windowed_pool(test_id, window, stride, padding, x):
    """The pooling `test_id` names in WINDOWED, from `lookup`, as a function of x."""
    name, options, _, _ = WINDOWED[test_id]
    return as_function(pooling.lookup(name, window, stride, padding, **options), x)


def windowed_reference(test_id, window, stride, padding):
    """The loop reference of the pooling `test_id`, a function of (x, xp)."""
    _, options, reduce, fill = WINDOWED[test_id]
    if test_id == "mixed":
        pooled_max, pooled_avg = (windowed_reference(n, window, stride, padding) for n in ("max", "avg"))
        return lambda x, xp=np: options["mix"] * pooled_max(x, xp) + (1 - options["mix"]) * pooled_avg(x, xp)
    if test_id == "gaussian":
        weights = gaussian_kernel(window, options["sigma"])[None, :, :, None]
        reduce = lambda v: (v * weights).sum((1, 2))
    return lambda x, xp=np: reference_pool(x, window, stride, padding, reduce, fill, xp)


@pytest.mark.parametrize("window, stride, padding", CONFIGS)
@pytest.mark.parametrize("test_id", WINDOWED)
def test_windowed_pooling_equals_numpy_reference(test_id, window, stride, padding):
    x = np.random.default_rng(0).normal(size=(2, 7, 5, 3)).astype(np.float32)
    pooled = windowed_pool(test_id, window, stride, padding, x)(jnp.asarray(x))
    np.testing.assert_allclose(pooled, windowed_reference(test_id, window, stride, padding)(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("test_id", WINDOWED)
def test_windowed_pooling_gradient_equals_loop_reference(test_id):
    # Overlapping, padded windows: inputs feed several outputs, some windows hang over the edge.
    window, stride, padding = 3, 2, 1
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 7, 5, 3)), jnp.float32)
    pool = windowed_pool(test_id, window, stride, padding, x)
    reference = windowed_reference(test_id, window, stride, padding)
    cotangent = jnp.asarray(rng.normal(size=(2, 4, 3, 3)), jnp.float32)
    grad = jax.jit(jax.grad(lambda x: (pool(x) * cotangent).sum()))(x)
    expected = jax.jit(jax.grad(lambda x: (reference(x, jnp) * cotangent).sum()))(x)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-5)


def test_avg_pool_counts_padding_as_zeros():
    # Each 2×2 window of a padded 2×2 map of ones holds one real cell.
    pooled = pooling.avg_pool(jnp.ones((1, 2, 2, 1)), window=2, padding=1)
    np.testing.assert_allclose(pooled, np.full((1, 2, 2, 1), 0.25))


def test_l2_pool_of_zero_window_is_zero_with_zero_gradient():
    x = jnp.zeros((1, 4, 4, 1)).at[0, 0, 0, 0].set(3.0).at[0, 0, 1, 0].set(-4.0)
    value, grad = jax.value_and_grad(lambda x: pooling.lp_pool(x).sum())(x)
    assert value == 5.0  # sqrt(3² + 4²) from the one non-zero window.
    np.testing.assert_allclose(grad[0, :, :, 0], [[0.6, -0.8, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


def test_gaussian_weights_fall_off_with_distance_and_sum_to_one():
    weights = pooling.gaussian_weights(3, 1.0).reshape(3, 3)
    assert weights.sum() == pytest.approx(1.0)
    assert weights[0, 1] / weights[1, 1] == pytest.approx(math.exp(-0.5))
    assert weights[0, 0] / weights[1, 1] == pytest.approx(math.exp(-1.0))
    np.testing.assert_allclose(pooling.gaussian_weights(3, 1e4), np.full(9, 1 / 9))  # Wide σ: avg_pool.


def test_mixed_learned_has_a_trainable_mix_with_a_gradient():
    x = normal(0, (2, 6, 6, 3))
    pool = pooling.lookup("mixed_learned", mix=0.25)
    params = pool.init(KEYS, x)["params"]
    assert params["mix_logit"] == pytest.approx(math.log(0.25 / 0.75))
    grad = jax.grad(lambda params: pool.apply({"params": params}, x).sum())(params)
    # d/dθ Σ σ(θ)·max + (1 − σ(θ))·avg = σ'(θ)·Σ(max − avg), σ' = 0.25·0.75.
    expected = 0.25 * 0.75 * (pooling.max_pool(x) - pooling.avg_pool(x)).sum()
    assert grad["mix_logit"] == pytest.approx(float(expected), rel=1e-4)


def sample_stochastic_pool(x, seed):
    """Training-mode StochasticPool of x [1, 2, 2, channels]: one 2×2 window per channel, `[channels]`."""
    return pooling.StochasticPool().apply({}, x, train=True, rngs={"dropout": jax.random.key(seed)})[0, 0, 0]


def test_stochastic_pool_in_training_outputs_a_value_from_its_window():
    x = normal(0, (1, 2, 2, 20_000))
    out = np.asarray(sample_stochastic_pool(x, seed=5))
    windows = np.maximum(np.asarray(x[0]), 0).reshape(4, -1).T  # [channels, 4]
    assert np.all(np.any(windows == out[:, None], axis=-1))
    positive = windows.sum(-1) > 0
    assert np.all(out[positive] > 0)  # Zeros are drawn only from all-zero windows (1 in 16 here).
    assert np.all(out[~positive] == 0) and 1000 < (~positive).sum() < 1500


def test_stochastic_pool_samples_with_probability_proportional_to_activation():
    # One 2×2 window [1, 2, 3, 4] in each of 20000 channels: p = [0.1, 0.2, 0.3, 0.4].
    x = jnp.broadcast_to(jnp.array([[1.0, 2.0], [3.0, 4.0]])[None, :, :, None], (1, 2, 2, 20_000))
    out = np.asarray(sample_stochastic_pool(x, seed=0))
    frequencies = [(out == value).mean() for value in (1, 2, 3, 4)]
    np.testing.assert_allclose(frequencies, [0.1, 0.2, 0.3, 0.4], atol=0.015)


def test_stochastic_pool_at_test_is_probability_weighted_average():
    x = jnp.array([[1.0, 2.0], [3.0, 4.0]])[None, :, :, None]
    assert pooling.StochasticPool().apply({}, x)[0, 0, 0, 0] == pytest.approx(30 / 10)  # Σ a_i · a_i/Σa.
    assert pooling.StochasticPool().apply({}, -x)[0, 0, 0, 0] == 0.0  # All-zero after ReLU.


def spp_reference(x, levels, xp=np):
    """Max over adaptive bins [floor(i·h/n), ceil((i+1)·h/n)), each level flattened (row, column, channel)."""
    b, h, w, c = x.shape
    bins = lambda size, n: [(math.floor(i * size / n), math.ceil((i + 1) * size / n)) for i in range(n)]
    pooled = []
    for n in levels:
        grid = [[x[:, r0:r1, c0:c1].max((1, 2)) for c0, c1 in bins(w, n)] for r0, r1 in bins(h, n)]
        pooled.append(xp.stack([xp.stack(row, 1) for row in grid], 1).reshape(b, -1))
    return xp.concatenate(pooled, -1)


@pytest.mark.parametrize("height, width", [(13, 13), (28, 28), (3, 7)])  # 3 rows: fewer than level 4's bins.
def test_spp_gives_fixed_length_of_numpy_bin_maxima(height, width):
    x = np.random.default_rng(0).normal(size=(2, height, width, 3)).astype(np.float32)
    out = jax.jit(pooling.spatial_pyramid_pool)(jnp.asarray(x))
    assert out.shape == (2, 3 * (1 + 4 + 16))
    np.testing.assert_array_equal(out, spp_reference(x, (1, 2, 4)))


def test_spp_gradient_equals_loop_reference():
    x = normal(0, (2, 9, 7, 2))
    grad = jax.jit(jax.grad(lambda x: pooling.spatial_pyramid_pool(x).sum()))(x)
    np.testing.assert_array_equal(grad, jax.jit(jax.grad(lambda x: spp_reference(x, (1, 2, 4), xp=jnp).sum()))(x))


def fractional_reference(x, edges_h, edges_w, overlapping):
    """Max over the regions [b_i, b_(i+1)) of each image's boundaries (one cell more when overlapping)."""
    regions = lambda edges, size: [(a, min(b + overlapping, size)) for a, b in zip(edges[:-1], edges[1:])]
    rows, cols = regions(edges_h, x.shape[0]), regions(edges_w, x.shape[1])
    return np.array([[x[r0:r1, c0:c1].max((0, 1)) for c0, c1 in cols] for r0, r1 in rows])


@pytest.mark.parametrize("size, ratio, out", [(28, math.sqrt(2), 19), (13, math.sqrt(2), 9), (10, 1.5, 6), (7, 1.9, 3)])
def test_fractional_boundaries_step_by_floor_or_ceil_of_alpha_covering_the_input(size, ratio, out):
    assert math.floor(size / ratio) == out
    alpha = size / out  # Below 2 except on tiny inputs: 7 / 3 here.
    for offset in range(out):
        edges = np.asarray(pooling.fractional_boundaries(size, out, offset))
        assert edges[0] == 0 and edges[-1] == size
        assert set(np.diff(edges)) <= {math.floor(alpha), math.ceil(alpha)}


@pytest.mark.parametrize("overlapping", [False, True])
def test_fractional_max_pool_at_test_uses_fixed_sequence_ceil_i_h_over_out(overlapping):
    x = np.random.default_rng(0).normal(size=(2, 13, 10, 3)).astype(np.float32)
    pool = pooling.FractionalMaxPool(overlapping=overlapping)
    out = pool.apply({}, jnp.asarray(x))
    assert out.shape == (2, 9, 7, 3)  # floor(13/√2), floor(10/√2).
    edges_h, edges_w = ([math.ceil(i * size / n) for i in range(n + 1)] for size, n in ((13, 9), (10, 7)))
    for image, pooled in zip(x, np.asarray(out)):
        np.testing.assert_array_equal(pooled, fractional_reference(image, edges_h, edges_w, overlapping))
    again = pool.apply({}, jnp.asarray(x), rngs={"dropout": jax.random.key(9)})
    np.testing.assert_array_equal(out, again)


def test_fractional_max_pool_in_training_draws_a_sequence_per_image():
    x = np.random.default_rng(0).normal(size=(8, 9, 7, 2)).astype(np.float32)
    rngs = {"dropout": jax.random.key(3)}
    out = np.asarray(pooling.FractionalMaxPool().apply({}, jnp.asarray(x), train=True, rngs=rngs))
    assert out.shape == (8, 6, 4, 2)
    sequences = lambda size, n: [np.asarray(pooling.fractional_boundaries(size, n, r)) for r in range(n)]
    drawn = set()
    for image, pooled in zip(x, out):
        matches = [
            (tuple(h), tuple(w))
            for h in sequences(9, 6)
            for w in sequences(7, 4)
            if np.array_equal(pooled, fractional_reference(image, h, w, False))
        ]
        assert matches, "each image is pooled over one pair of valid boundary sequences"
        drawn.add(matches[0])
    assert len(drawn) > 1  # The images did not all get the same sequences.


def test_global_avg_pool_is_the_spatial_mean():
    x = np.random.default_rng(0).normal(size=(2, 5, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(pooling.global_avg_pool(jnp.asarray(x)), x.mean(axis=(1, 2)), rtol=1e-6)


def test_equal_poolings_built_different_ways_describe_themselves_alike():
    max_2x2 = pooling.Description("max", window=2, stride=2, padding=0)
    for pool in (pooling.max_pool_2x2, pooling.lookup("max"), pooling.lookup("max", window=2, stride=2),
                 functools.partial(pooling.max_pool, window=2), functools.partial(pooling.max_pool, stride=2)):
        assert pooling.describe(pool) == max_2x2
    assert pooling.describe(pooling.lookup("max", window=3, stride=2)) == pooling.Description("max", 3, 2, 0)
    assert pooling.describe(pooling.lookup("l2", 3, p=3.0)) == pooling.Description("l2", 3, 3, 0, (("p", 3.0),))
    learned = pooling.Description("mixed", 2, 2, 0, (("learned", True), ("mix", 0.5)))
    assert pooling.describe(pooling.lookup("mixed_learned")) == pooling.describe(pooling.MixedPool(learned=True)) == learned
    assert pooling.describe(pooling.lookup("spp")) == pooling.Description("spp", options=(("levels", (1, 2, 4)),))


def test_poolings_written_elsewhere_describe_as_nothing():
    assert pooling.describe(None) is None
    assert pooling.describe(lambda x: pooling.max_pool(x, 2)) is None
    assert pooling.describe(functools.partial(nn.max_pool, window_shape=(2, 2), strides=(2, 2))) is None


def test_lookup_of_unknown_name_lists_the_choices():
    with pytest.raises(UserError, match="unknown pooling 'median': choose one of max, avg, l2, gaussian, mixed"):
        pooling.lookup("median")


def test_lookup_rejects_options_a_pooling_does_not_have():
    with pytest.raises(UserError, match="pooling 'avg' has no option sigma; its options are: none"):
        pooling.lookup("avg", sigma=1.0)
    with pytest.raises(UserError, match="pooling 'spp' has no window, stride or padding"):
        pooling.lookup("spp", window=3)


@pytest.mark.parametrize("name", ["mixed_learned", "stochastic"])  # A parameter; randomness.
def test_module_poolings_work_as_a_conv_block_pool_in_training_and_test(name):
    block = layers.ConvBlock(features=4, batch_norm=False, pool=pooling.lookup(name))
    x = normal(0, (2, 8, 8, 3))
    variables = block.init(KEYS, x)
    test_out = block.apply(variables, x)
    train_out = block.apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)})
    assert test_out.shape == train_out.shape == (2, 4, 4, 4)
    assert ("mix_logit" in variables["params"].get("pool", {})) == (name == "mixed_learned")


@pytest.mark.parametrize("name", ["max", "avg", "l2", "gaussian", "mixed", "stochastic"])
@pytest.mark.parametrize(
    "window, stride, padding, problem",
    [
        (6, 1, 0, "window 6 is larger than the padded input 4 \\+ 2·0 = 4"),
        (2, 0, 0, "stride 0 is below 1"),
        (2, 1, 2, "padding 2 is outside \\[0, window\\)"),
    ],
)
def test_impossible_window_names_layer_input_formula_and_value(name, window, stride, padding, problem):
    layer = {
        "max": "max_pool",
        "avg": "avg_pool",
        "l2": "lp_pool",
        "gaussian": "gaussian_pool",
        "mixed": "MixedPool",
        "stochastic": "StochasticPool",
    }[name]
    x = jnp.zeros((1, 4, 4, 1))
    with pytest.raises(UserError) as error:
        as_function(pooling.lookup(name, window, stride, padding), x)(x)
    message = str(error.value)
    assert message.startswith(f"{layer}: ") and FORMULA in message and "in=4" in message
    assert error.match(problem)


def test_fractional_max_pool_rejects_ratios_outside_1_to_2_and_tiny_inputs():
    with pytest.raises(UserError, match="ratio=2.5 must be in \\(1, 2\\)"):
        pooling.FractionalMaxPool(ratio=2.5).apply({}, jnp.zeros((1, 8, 8, 1)))
    with pytest.raises(UserError, match="input 1×8 gives out = floor\\(in/ratio\\)"):
        pooling.FractionalMaxPool().apply({}, jnp.zeros((1, 1, 8, 1)))


@pytest.mark.parametrize("size, window, stride", [(7, 3, 2), (8, 3, 2), (14, 2, 2), (13, 3, 3), (2, 3, 2)])
def test_max_pool_ceil_keeps_the_partial_last_window_like_pytorch_ceil_mode(size, window, stride):
    x = np.random.default_rng(0).normal(size=(2, size, size + 1, 3)).astype(np.float32)
    got = np.asarray(pooling.max_pool_ceil(jnp.asarray(x), window, stride))
    for axis, n in ((1, size), (2, size + 1)):
        assert got.shape[axis] == max(-(-(n - window) // stride), 0) + 1  # ceil((n − window)/stride) + 1
    for i in range(got.shape[1]):
        for j in range(got.shape[2]):
            window_values = x[:, i * stride : i * stride + window, j * stride : j * stride + window]
            np.testing.assert_array_equal(got[:, i, j], window_values.max(axis=(1, 2)))


@pytest.mark.parametrize("shape, window, stride, padding", [
    ((2, 9, 9, 3), 3, 1, 1),  # GoogLeNet's.
    ((2, 10, 11, 3), 3, 2, 1),  # ResNet's stem.
    pytest.param((2, 8, 8, 2), 3, 2, 0, marks=pytest.mark.slow),
    pytest.param((3, 12, 4), 3, 2, 1, marks=pytest.mark.slow),  # A sequence.
])
def test_overlapping_max_pool_equals_xla_s_windowed_reduction_and_its_gradient(shape, window, stride, padding):
    """Values, and gradients with many tied maxima (integers in 0..3): the first maximum of a window, row-major,
    takes the gradient, as XLA's select-and-scatter gives it."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.integers(0, 4, shape).astype(np.float32))
    dims = len(shape) - 2
    xla = functools.partial(nn.max_pool, window_shape=(window,) * dims, strides=(stride,) * dims,
                            padding=((padding, padding),) * dims)
    (expected, expected_vjp), (got, got_vjp) = jax.vjp(xla, x), jax.vjp(lambda x: pooling.max_pool(x, window, stride,
                                                                                                  padding), x)
    np.testing.assert_array_equal(got, expected)
    dy = jnp.asarray(rng.standard_normal(expected.shape).astype(np.float32))
    np.testing.assert_allclose(got_vjp(dy)[0], expected_vjp(dy)[0], atol=1e-6)


def test_max_pool_ceil_s_gradient_goes_to_the_first_maximum_of_each_window():
    x = jnp.asarray(np.random.default_rng(1).integers(0, 3, (2, 7, 8, 2)).astype(np.float32))
    xla = functools.partial(nn.max_pool, window_shape=(3, 3), strides=(2, 2), padding=((0, 0), (0, 1)))
    dy = jnp.asarray(np.random.default_rng(2).standard_normal((2, 3, 4, 2)).astype(np.float32))
    expected = jax.vjp(xla, x)[1](dy)[0]
    np.testing.assert_allclose(jax.vjp(lambda x: pooling.max_pool_ceil(x, 3, 2), x)[1](dy)[0], expected, atol=1e-6)
