"""The CNN formulas in cnn_jax.analysis.arithmetic, checked against what JAX and Flax actually compute."""

import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.analysis import arithmetic
from cnn_jax.errors import UserError


def _conv_chain(x, layers):
    """`x` `[1, h, w, 1]` through (kernel, stride, dilation) convolutions with all-ones kernels, no padding."""
    for kernel, stride, dilation in layers:
        x = jax.lax.conv_general_dilated(x, jnp.ones((kernel, kernel, 1, 1)), (stride, stride), "VALID",
                                         rhs_dilation=(dilation, dilation),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return x


def _brute_force_field(layers, size=40):
    """(receptive field, jump) along the height from the input gradient support of two neighbouring output units."""
    x = jnp.zeros((1, size, size, 1))
    rows = []
    for unit in (0, 1):
        grad = jax.grad(lambda x: _conv_chain(x, layers)[0, unit, 0, 0])(x)
        rows.append(np.flatnonzero(np.asarray(grad[0, :, 0, 0]) > 0))
    return int(rows[0][-1] - rows[0][0] + 1), int(rows[1][0] - rows[0][0])


def test_conv_output_size_matches_lax_convolution():
    for size, kernel, stride, padding, dilation in itertools.product((5, 8), (1, 2, 3), (1, 2, 3), (0, 1, 2), (1, 2)):
        if dilation * (kernel - 1) + 1 > size + 2 * padding:
            continue
        out = jax.eval_shape(  # JAX's own shape rule, without compiling each of the 70 convolutions.
            lambda x, w: jax.lax.conv_general_dilated(x, w, (stride, stride), [(padding, padding)] * 2,
                                                      rhs_dilation=(dilation, dilation),
                                                      dimension_numbers=("NHWC", "HWIO", "NHWC")),
            jnp.zeros((1, size, size, 1)), jnp.zeros((kernel, kernel, 1, 1)))
        assert out.shape[1] == arithmetic.conv_output_size(size, kernel, stride, padding, dilation)


def test_pool_output_size_matches_flax_max_pool():
    for size, window, stride, padding in itertools.product((4, 7), (1, 2, 3), (1, 2, 3), (0, 1)):
        if padding < window:  # A window of padding alone would pool nothing: refused (test below).
            out = jax.eval_shape(lambda x: nn.max_pool(x, (window, window), (stride, stride), [(padding, padding)] * 2),
                                 jnp.zeros((1, size, size, 1)))
            assert out.shape[1] == arithmetic.pool_output_size(size, window, stride, padding)


def test_pool_padding_must_be_less_than_the_window():
    with pytest.raises(UserError, match=r"pool: padding 1 is outside \[0, window\)"):
        arithmetic.pool_output_size(4, 1, 1, 1)


@pytest.mark.parametrize("size, window, stride, padding, expected", [
    (7, 2, 2, 0, 4), (28, 3, 2, 0, 14), (4, 3, 2, 0, 2), (2, 3, 2, 0, 1), (6, 3, 3, 0, 2),
    (5, 2, 2, 1, 3),  # Rounding up gives 4, but the 4th window would start in the right padding.
])
def test_ceil_mode_pool_output_size_follows_pytorch(size, window, stride, padding, expected):
    """PyTorch's MaxPool2d(ceil_mode=True) output-size rule (ATen's pooling_output_shape), worked by hand."""
    assert arithmetic.pool_output_size(size, window, stride, padding, ceil_mode=True) == expected


def test_convolutions_take_padding_per_side():
    assert arithmetic.conv_output_size(10, 4, 3, (0, 2)) == 3 == (10 + 0 + 2 - 4) // 3 + 1
    assert arithmetic.same_output_size(7, 2) == 4


def test_pool_stride_defaults_to_window():
    assert arithmetic.pool_output_size(28, 2) == 14


def test_kernel_larger_than_padded_input_names_layer_size_and_formula():
    with pytest.raises(UserError, match=r"conv3: .*padded input 3 \+ 2·0 = 3.*in=3, kernel=5"):
        arithmetic.conv_output_size(3, 5, layer="conv3")
    with pytest.raises(UserError, match="dilation"):
        arithmetic.conv_output_size(5, 3, dilation=3)  # Spans 7 pixels.


def test_param_counts_match_flax_modules():
    x = jnp.zeros((1, 8, 8, 3))
    for bias in (True, False):
        conv = jax.eval_shape(nn.Conv(16, (5, 3), use_bias=bias).init, jax.random.key(0), x)  # Shapes only.
        assert sum(p.size for p in jax.tree.leaves(conv)) == arithmetic.conv_params(5, 3, 3, 16, bias)
        dense = jax.eval_shape(nn.Dense(10, use_bias=bias).init, jax.random.key(0), jnp.zeros((1, 1568)))
        assert sum(p.size for p in jax.tree.leaves(dense)) == arithmetic.dense_params(1568, 10, bias)
    assert arithmetic.conv_params(5, 5, 1, 16) == 416


def test_flops_are_two_per_multiply_add():
    assert arithmetic.conv_flops(5, 5, 1, 16, 28, 28) == 2 * 25 * 16 * 784
    assert arithmetic.dense_flops(1568, 10) == 31_360


def test_seed_001_receptive_field_is_10_with_jump_2():
    layers = [(3, 1, 1), (3, 1, 1), (2, 2, 1), (3, 1, 1)]  # conv3 -> conv3 -> maxpool 2/2 -> conv3, on 14×14×3.
    assert arithmetic.receptive_field(layers) == (10, 2) == _brute_force_field(layers, size=14)


def test_receptive_field_matches_gradient_support_with_pooling_and_dilation():
    layers = [(3, 1, 1), (2, 2, 1), (3, 1, 2), (3, 2, 1), (2, 1, 3)]
    assert arithmetic.receptive_field(layers) == _brute_force_field(layers)


def test_receptive_field_continues_from_a_given_field():
    assert arithmetic.receptive_field([(3, 1, 1)], (6, 2)) == (10, 2)


def test_activation_memory_in_values_and_bytes():
    assert arithmetic.activation_values((1, 28, 28, 16)) == 12_544
    assert arithmetic.activation_bytes((1, 28, 28, 16)) == 50_176
    assert arithmetic.activation_bytes((1, 28, 28, 16), "bfloat16", training=True) == 50_176
