"""A convolution as one matrix product (im2col): every receptive field a column, every filter a row.

cs231n's notes (seed document 004) describe the usual implementation of a
convolution's forward pass: stretch each input patch a filter sees into a
column (the patch matrix, [k·k·C_in × positions]), each filter into a row
(the kernel matrix, [C_out × k·k·C_in]), and take their product, [C_out ×
positions], which is the output map. Here the patch matrix is built from
the k·k shifted (strided, dilated) copies of the padded input, one per tap
of the kernel, side by side along the channels, so that a position's row
holds its patch in the kernel's own HWIO order; the kernel is only
reshaped, and the product is one `jnp.matmul` (written with the positions
first: [positions × k·k·C_in] @ [k·k·C_in × C_out], the same product
transposed). Built from slices, the patch matrix's gradient is the sum of
the shifted copies' gradients, several times faster to train through on a
CPU than `lax.conv_general_dilated_patches` (a convolution with a one-hot
kernel, whose gradient is another convolution; BENCHMARKS.md).

The patch matrix holds every input value once per filter position covering
it: k²/stride² times the input for a k×k convolution, the memory price of
turning the convolution into the one operation a BLAS library runs fastest.
`cnn_jax.analysis.arithmetic.im2col_shapes` gives both matrices' shapes, which
`cnn_jax.analysis.summary` reports per convolution; BENCHMARKS.md times this
against XLA's convolution and oneDNN's.
"""

import itertools
from collections.abc import Sequence

import jax.numpy as jnp
from jax import lax


def patch_matrix(x: jnp.ndarray, window: Sequence[int], strides: Sequence[int],
                 padding: str | Sequence[tuple[int, int]], dilation: Sequence[int] | None = None) -> jnp.ndarray:
    """`[b, *out, Πwindow·C_in]`: for each output position of a convolution of `x` `[b, *spatial, C_in]` with a
    kernel of `window` (its sizes per spatial axis), the input values its window covers, tap by tap in row-major
    order and the channels within each tap (a row of the patch matrix, transposed). `padding` is "SAME", "VALID"
    or (before, after) per spatial axis, as `lax.conv_general_dilated` takes it."""
    dilation = tuple(dilation or (1,) * len(window))
    spans = [d * (k - 1) + 1 for k, d in zip(window, dilation)]  # The dilated window's extent.
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(x.shape[1:-1], spans, strides, padding)
    x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    out = [(n - span) // s + 1 for n, span, s in zip(x.shape[1:-1], spans, strides)]

    def shifted(tap):
        return x[(slice(None), *(slice(t * d, t * d + s * (o - 1) + 1, s)
                                 for t, d, s, o in zip(tap, dilation, strides, out)), slice(None))]

    return jnp.concatenate([shifted(tap) for tap in itertools.product(*map(range, window))], axis=-1)


def conv(x: jnp.ndarray, kernel: jnp.ndarray, strides: Sequence[int], padding: str | Sequence[tuple[int, int]],
         dilation: Sequence[int] | None = None) -> jnp.ndarray:
    """The convolution of `x` `[b, *spatial, C_in]` with `kernel` `[*k, C_in, C_out]` (Flax's NHWC × HWIO, or
    NLC × LIO along a sequence) as the patch matrix times the reshaped kernel: `lax.conv_general_dilated(x,
    kernel, strides, padding, rhs_dilation=dilation)` with the same dimension numbers, values and gradients (as
    exact as the two products' summation orders allow)."""
    *window, _, filters = kernel.shape
    return patch_matrix(x, window, strides, padding, dilation) @ kernel.reshape(-1, filters)
