
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax import layers, models
from cnn_jax.layers import blocks
from cnn_jax.analysis import arithmetic
from cnn_jax.errors import UserError
from cnn_jax.kernels import ffi
from cnn_jax.layers import pooling


def test_seed_network_maps_28x28x1_images_to_10_logits():
    model = models.ConvNet()
    variables = model.init(jax.random.key(0), jnp.zeros((2, 28, 28, 1)))
    logits = model.apply(variables, jnp.ones((5, 28, 28, 1)))
    assert logits.shape == (5, 10)
    assert set(variables) == {"params", "batch_stats"}


def test_seed_network_has_29034_trainable_parameters():
    model = models.ConvNet()
    params = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    assert arithmetic.count_params(params) == 29_034
    # (5·5·1 + 1)·16 + BN 2·16 + (5·5·16 + 1)·32 + BN 2·32 + (32·7·7 + 1)·10
    per_layer = {name: arithmetic.count_params(p) for name, p in params.items()}
    assert per_layer == {"ConvBlock_0": 416 + 32, "ConvBlock_1": 12_832 + 64, "DenseHead_0": 15_690}


def test_batch_norm_statistics_change_only_in_training():
    model = models.ConvNet()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    x = jax.random.normal(jax.random.key(1), (4, 28, 28, 1))
    _, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], updates["batch_stats"])
    assert all(jax.tree.leaves(changed))


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown model 'nope': choose one of convnet"):
        models.lookup("nope")


@pytest.mark.parametrize("shape", [(3, 8, 12, 5), (2, 28, 28, 16)])
def test_fast_max_pool_equals_windowed_max_pool_in_value_and_gradient(shape):
    x = jax.random.normal(jax.random.key(0), shape)
    cotangent = jax.random.normal(jax.random.key(1), (shape[0], shape[1] // 2, shape[2] // 2, shape[3]))

    def reference(x):
        return nn.max_pool(x, (2, 2), strides=(2, 2))

    def loss(pool, x):
        return jnp.sum(pool(x) * cotangent)

    np.testing.assert_array_equal(pooling.max_pool(x, 2), reference(x))
    np.testing.assert_array_equal(
        jax.grad(loss, 1)(lambda v: pooling.max_pool(v, 2), x), jax.grad(loss, 1)(reference, x)
    )


def numpy_max_pool(x, window, stride, padding):
    x = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=-np.inf)
    b, h, w, c = x.shape
    out_h, out_w = (h - window) // stride + 1, (w - window) // stride + 1
    out = np.empty((b, out_h, out_w, c), x.dtype)
    for i in range(out_h):
        for j in range(out_w):
            out[:, i, j] = x[:, i * stride : i * stride + window, j * stride : j * stride + window].max(axis=(1, 2))
    return out


@pytest.mark.parametrize("window, stride, padding", [(2, 2, 0), (3, 2, 0), (3, 2, 1), (2, 1, 0), (2, 2, 1)])
def test_max_pool_matches_numpy(window, stride, padding):
    x = np.random.default_rng(0).normal(size=(2, 7, 9, 3)).astype(np.float32)
    np.testing.assert_array_equal(pooling.max_pool(jnp.asarray(x), window, stride, padding), numpy_max_pool(x, window, stride, padding))


def test_conv_block_padding_is_per_side():
    block = layers.ConvBlock(4, kernel_size=5, padding=2, batch_norm=False)
    variables = block.init(jax.random.key(0), jnp.zeros((1, 9, 9, 2)))
    assert block.apply(variables, jnp.zeros((1, 9, 9, 2))).shape == (1, 9, 9, 4)
    block = layers.ConvBlock(4, kernel_size=5, padding=0, batch_norm=False)
    assert block.apply(block.init(jax.random.key(0), jnp.zeros((1, 9, 9, 2))), jnp.zeros((1, 9, 9, 2))).shape == (1, 5, 5, 4)


def test_dense_head_flattens_and_stacks_hidden_layers():
    head = layers.DenseHead(3, hidden=(7,))
    params = head.init(jax.random.key(0), jnp.zeros((2, 2, 2, 5)))["params"]
    assert arithmetic.count_params(params) == (20 * 7 + 7) + (7 * 3 + 3)


@pytest.mark.parametrize("implementation", ["tap sum", "ffi"])
@pytest.mark.parametrize(
    "shape, kernel, strides, padding",
    [
        ((3, 28, 28, 1), (5, 5, 1, 16), (1, 1), ((2, 2), (2, 2))),  # The seed network's first layer.
        ((2, 9, 11, 3), (3, 3, 3, 8), (2, 2), ((1, 1), (1, 1))),
        ((2, 10, 10, 2), (4, 2, 2, 5), (3, 1), ((0, 2), (1, 0))),  # Output channels not a multiple of 8: oneDNN.
        ((2, 10, 13, 4), (4, 7, 4, 24), (3, 2), ((0, 2), (3, 0))),  # Kernel columns in blocks 5 + 2; last column unused.
    ],
)
def test_few_channel_convolutions_equal_xla_convolution_in_value_and_gradient(implementation, shape, kernel, strides,
                                                                            padding):
    """The tap sum (without oneDNN) and `ffi.conv`, whose weight gradient is its own for few channels."""
    assert ffi.load()
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), kernel)

    def fast(x, w):
        return (blocks._tap_sum_conv if implementation == "tap sum" else ffi.conv)(x, w, strides, padding)

    def plain(x, w):
        return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    out = plain(x, w)
    np.testing.assert_allclose(jax.jit(fast)(x, w), out, rtol=1e-5, atol=1e-5)
    cotangent = jax.random.normal(jax.random.key(2), out.shape)
    grads_fast = jax.jit(jax.grad(lambda x, w: jnp.sum(fast(x, w) * cotangent), (0, 1)))(x, w)
    grads_plain = jax.grad(lambda x, w: jnp.sum(plain(x, w) * cotangent), (0, 1))(x, w)
    for got, want in zip(grads_fast, grads_plain):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "onednn_available, expected",
    [(True, ["cpu kernels", "cpu kernels", "xla", "xla"]), (False, ["tap sum", "xla", "xla", "xla"])],
)
def test_convolution_dispatch_by_channels_padding_and_onednn(monkeypatch, onednn_available, expected):
    calls = []
    monkeypatch.setattr(ffi, "load", lambda: onednn_available)
    monkeypatch.setattr(blocks, "_tap_sum_conv", lambda *args: calls.append("tap sum"))
    monkeypatch.setattr(ffi, "conv", lambda *args: calls.append("cpu kernels"))
    monkeypatch.setattr(jax.lax, "conv_general_dilated", lambda *args, **kwargs: calls.append("xla"))
    pads = ((1, 1), (1, 1))
    for cin, padding in ((1, pads), (16, pads), (16, "SAME"), (16, ((-1, 1), (1, 1)))):
        dn = jax.lax.ConvDimensionNumbers((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
        blocks.conv_general_dilated(jnp.zeros((1, 8, 8, cin)), jnp.zeros((3, 3, cin, 4)), (1, 1), padding, dimension_numbers=dn)
    assert calls == expected


def test_onednn_is_available_here():
    assert ffi.load(), "apt-get install libdnnl-dev g++ (setup.sh does)"


@pytest.mark.parametrize(
    "shape, kernel, strides, padding",
    [
        ((4, 14, 14, 16), (5, 5, 16, 32), (1, 1), ((2, 2), (2, 2))),
        ((3, 11, 9, 8), (3, 3, 8, 5), (2, 1), ((1, 0), (2, 1))),
        ((2, 7, 7, 5), (1, 1, 5, 6), (1, 1), ((0, 0), (0, 0))),
    ],
)
def test_onednn_convolution_equals_xla_convolution_in_value_and_gradient(shape, kernel, strides, padding):
    assert ffi.load()
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), kernel)

    def plain(x, w):
        return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def fast(x, w):
        return ffi.conv(x, w, strides, padding)

    out = plain(x, w)
    np.testing.assert_allclose(jax.jit(fast)(x, w), out, rtol=1e-5, atol=1e-4)
    cotangent = jax.random.normal(jax.random.key(2), out.shape)
    got = jax.jit(jax.grad(lambda x, w: jnp.sum(fast(x, w) * cotangent), (0, 1)))(x, w)
    want = jax.grad(lambda x, w: jnp.sum(plain(x, w) * cotangent), (0, 1))(x, w)
    for g, r in zip(got, want):
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize(
    "shape, features, kernel, strides, padding",
    [
        ((8, 12, 10, 6), 5, 3, 1, 1),
        ((3, 28, 28, 16), 5, 3, 1, 1),
        ((2, 2, 4, 1), 5, 3, 1, 1),
        # Few input channels: the kernel's gradient from BatchNormReluMaxPoolBackwardToConvWeights.
        ((4, 28, 28, 1), 16, 5, 1, 2),  # The seed network's first layer.
        ((3, 13, 17, 3), 8, 3, 2, 2),
        ((2, 12, 8, 2), 24, 3, 1, 1),
    ],
)
def test_fused_batch_norm_relu_max_pool_equals_flax_layers(monkeypatch, shape, features, kernel, strides, padding):
    """The fused kernels against nn.BatchNorm -> relu -> max_pool_2x2: outputs, running statistics, gradients."""
    assert ffi.load()
    x = 3 * jax.random.normal(jax.random.key(0), shape) + 1
    block = layers.ConvBlock(features, kernel, strides=strides, padding=padding, pool=pooling.max_pool_2x2)
    variables = block.init(jax.random.key(1), x)
    variables = jax.tree.map(lambda v: v + 0.3 * jax.random.normal(jax.random.key(2), v.shape), variables)
    weights = jax.random.normal(jax.random.key(3), block.apply(variables, x).shape)

    def step(fused):
        monkeypatch.setattr(layers.ConvBlock, "_fusable", lambda self, x: fused)

        def loss(params, x):
            y, updates = block.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                                     mutable=["batch_stats"])
            return jnp.sum(y * weights), (y, updates)

        grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
        return grad(variables["params"], x), grad.lower(variables["params"], x).as_text()

    (fused, fused_program), (plain, _) = step(True), step(False)
    few_channels = ffi.few_channels((kernel, kernel, shape[-1], features))
    assert ("BatchNormReluMaxPoolBackwardToConvWeights" in fused_program) == few_channels
    for got, want in zip(jax.tree.leaves(fused), jax.tree.leaves(plain)):  # Including the input's gradient.
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_fused_kernels_under_vmap_equal_them_one_by_one():
    """As `cnn_jax.vectorized` runs them (several models' parameters, one batch of images): bit for bit."""
    block = layers.ConvBlock(16, 5, padding=2, pool=pooling.max_pool_2x2)
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
    variables = jax.vmap(lambda key: block.init(key, x))(jax.random.split(jax.random.key(1), 2))

    def grads(params, stats, x):
        def loss(params):
            y, _ = block.apply({"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"])
            return jnp.sum(y * jnp.sin(jnp.arange(y.size).reshape(y.shape)))

        return jax.grad(loss)(params)

    together = jax.jit(jax.vmap(grads, in_axes=(0, 0, None)))(variables["params"], variables["batch_stats"], x)
    for k in range(2):
        alone = jax.jit(grads)(*(jax.tree.map(lambda v: v[k], variables[c]) for c in ("params", "batch_stats")), x)
        for got, want in zip(jax.tree.leaves(together), jax.tree.leaves(alone), strict=True):
            np.testing.assert_array_equal(got[k], want)


def test_seed_network_trains_through_the_fused_kernel_on_cpu():
    x = jnp.zeros((2, 28, 28, 1))
    assert layers.ConvBlock(16, 5, padding=2, pool=pooling.max_pool_2x2)._fusable(x)
    assert not layers.ConvBlock(16, 5, padding=2, pool=None)._fusable(x)
    assert not layers.ConvBlock(16, 5, padding=2, pool=pooling.max_pool_2x2, activation=jnp.tanh)._fusable(x)
    assert not layers.ConvBlock(16, 5, padding=2, pool=pooling.max_pool_2x2)._fusable(jnp.zeros((2, 7, 7, 1)))


def test_fused_kernel_takes_the_conv_bias_as_an_offset_that_moves_only_the_mean():
    assert ffi.load()
    x = 2 * jax.random.normal(jax.random.key(0), (4, 6, 8, 8)) + 1
    offset, scale, bias = (jax.random.normal(jax.random.key(i), (8,)) for i in (1, 2, 3))

    def fused(x, offset):
        return ffi.batch_norm_relu_max_pool(x, offset, scale, bias, 1e-5)

    (y, mean, var), vjp = jax.vjp(fused, x, offset)
    y0, mean0, var0 = fused(x, jnp.zeros(8))
    np.testing.assert_array_equal(y, y0)
    np.testing.assert_allclose(mean, mean0 + offset, rtol=1e-6)
    np.testing.assert_array_equal(var, var0)
    dy = jax.random.normal(jax.random.key(4), y.shape)
    dx, doffset = vjp((dy, jnp.zeros(8), jnp.zeros(8)))
    np.testing.assert_allclose(doffset, dx.sum(axis=(0, 1, 2)), atol=1e-5)  # The gradient of x + offset.
