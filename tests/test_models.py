import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import normal

from cnn_jax import layers, models
from cnn_jax.analysis import arithmetic
from cnn_jax.errors import UserError
from cnn_jax.layers import pooling


def test_seed_network_maps_28x28x1_images_to_10_logits():
    model = models.ConvNet()
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((2, 28, 28, 1)))  # Eagerly: 2 s more.
    logits = jax.jit(model.apply)(variables, jnp.ones((5, 28, 28, 1)))
    assert logits.shape == (5, 10)
    assert set(variables) == {"params", "batch_stats"}


def test_seed_network_has_29034_trainable_parameters():
    model = models.ConvNet()
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    assert arithmetic.count_params(params) == 29_034
    # (5·5·1 + 1)·16 + BN 2·16 + (5·5·16 + 1)·32 + BN 2·32 + (32·7·7 + 1)·10
    per_layer = {name: arithmetic.count_params(p) for name, p in params.items()}
    assert per_layer == {"ConvBlock_0": 416 + 32, "ConvBlock_1": 12_832 + 64, "DenseHead_0": 15_690}


def test_batch_norm_statistics_change_only_in_training():
    model = models.ConvNet()
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    x = normal(1, (4, 28, 28, 1))
    _, updates = jax.jit(functools.partial(model.apply, train=True, mutable=["batch_stats"]))(variables, x)
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), variables["batch_stats"], updates["batch_stats"])
    assert all(jax.tree.leaves(changed))


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(UserError, match="unknown model 'nope': choose one of convnet"):
        models.lookup("nope")


@pytest.mark.parametrize("shape", [(3, 8, 12, 5), (2, 28, 28, 16)])
def test_fast_max_pool_equals_windowed_max_pool_in_value_and_gradient(shape):
    x = normal(0, shape)
    cotangent = normal(1, (shape[0], shape[1] // 2, shape[2] // 2, shape[3]))

    def reference(x):
        return nn.max_pool(x, (2, 2), strides=(2, 2))

    def loss(pool, x):
        return jnp.sum(pool(x) * cotangent)

    @jax.jit  # One program: eagerly, each operation of the two gradients would compile on its own.
    def values_and_gradients(x):
        fast = functools.partial(pooling.max_pool, window=2)
        return (fast(x), reference(x)), (jax.grad(loss, 1)(fast, x), jax.grad(loss, 1)(reference, x))

    for ours, theirs in values_and_gradients(x):
        np.testing.assert_array_equal(ours, theirs)


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
