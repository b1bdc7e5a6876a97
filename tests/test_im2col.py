"""A convolution as one matrix product (im2col) against XLA's convolution: values and gradients, any geometry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import normal
from jax import lax

from cnn_jax.analysis import arithmetic
from cnn_jax.kernels import im2col

GEOMETRIES = [  # (strides, padding, dilation, input channels, filters, kernel)
    ((1, 1), "SAME", (1, 1), 3, 4, (3, 3)),
    pytest.param((2, 2), ((1, 2), (0, 1)), (1, 1), 1, 8, (3, 2), marks=pytest.mark.slow),
    pytest.param((1, 2), "VALID", (2, 1), 5, 3, (3, 2), marks=pytest.mark.slow),
    ((3, 3), ((2, 2), (2, 2)), (2, 2), 2, 6, (3, 3)),
    pytest.param((4, 4), "VALID", (1, 1), 3, 16, (11, 11), marks=pytest.mark.slow),  # AlexNet's: 121 slices, 8 s.
    ((1, 1), ((2, 2), (2, 2)), (1, 1), 16, 32, (5, 5)),  # The seed network's second layer.
]


def xla_conv(x, kernel, strides, padding, dilation):
    layout = ("NHWC", "HWIO", "NHWC") if x.ndim == 4 else ("NWC", "WIO", "NWC")
    return lax.conv_general_dilated(x, kernel, strides, padding, rhs_dilation=dilation, dimension_numbers=layout)


@pytest.mark.parametrize("strides, padding, dilation, channels, filters, window", GEOMETRIES)
def test_im2col_equals_xlas_convolution_in_values_and_gradients(strides, padding, dilation, channels, filters,
                                                                window):
    x, kernel = normal(0, (2, 23, 19, channels)), normal(1, (*window, channels, filters)) / np.prod(window)
    cotangent = normal(2, xla_conv(x, kernel, strides, padding, dilation).shape)

    def loss(conv, x, kernel):
        return (conv(x, kernel, strides, padding, dilation) * cotangent).sum()

    ours, theirs = (jax.jit(jax.value_and_grad(loss, argnums=(1, 2)), static_argnums=0)(conv, x, kernel)
                    for conv in (im2col.conv, xla_conv))
    np.testing.assert_allclose(im2col.conv(x, kernel, strides, padding, dilation),
                               xla_conv(x, kernel, strides, padding, dilation), rtol=1e-4, atol=1e-4)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def test_im2col_along_a_sequence_equals_xlas_1d_convolution():
    x, kernel = normal(3, (2, 40, 3)), normal(4, (5, 3, 8))
    np.testing.assert_allclose(im2col.conv(x, kernel, (2,), ((1, 2),)), xla_conv(x, kernel, (2,), ((1, 2),), None),
                               rtol=1e-5, atol=1e-5)


def test_the_matrices_are_cs231ns_for_alexnets_first_layer():
    # 227×227×3, 96 filters of 11×11×3 at stride 4: 55×55 = 3025 positions, 11·11·3 = 363 values a patch.
    assert arithmetic.im2col_shapes((11, 11), 3, 96, (55, 55)) == {"patch_matrix": [363, 3025],
                                                                   "kernel_matrix": [96, 363]}
    x = jax.ShapeDtypeStruct((1, 227, 227, 3), np.float32)
    patches = jax.eval_shape(lambda x: im2col.patch_matrix(x, (11, 11), (4, 4), "VALID"), x)
    assert patches.shape == (1, 55, 55, 363)  # The patch matrix, transposed: a row per output position.


def test_a_patch_holds_the_window_tap_by_tap_with_the_channels_within():
    x = jnp.arange(2 * 5 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 5, 3)
    patches = im2col.patch_matrix(x, (2, 2), (1, 1), "VALID")
    np.testing.assert_array_equal(patches[1, 2, 3], x[1, 2:4, 3:5].reshape(-1))  # Rows, columns, then channels.
