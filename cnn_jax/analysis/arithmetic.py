"""CNN arithmetic: output sizes, parameter and FLOP counts, receptive fields and activation memory.

Sizes are in pixels along one spatial axis; apply a function to height and
width separately (or to a sequence's length: positions are its pixels). FLOPs count a multiply-add as 2.
"""

import math
from collections.abc import Iterable, Sequence

import jax
import numpy as np

from cnn_jax.errors import UserError


def _per_side(padding: int | tuple[int, int]) -> tuple[int, int]:
    return (padding, padding) if isinstance(padding, int) else tuple(padding)


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int | tuple[int, int] = 0, dilation: int = 1,
                     layer: str = "conv") -> int:
    """Output size of a convolution: floor((size + 2·padding − dilation·(kernel − 1) − 1)/stride) + 1.

    `padding` is zeros added on each side, or (before, after) when the sides
    differ (then 2·padding is before + after). Raises `UserError` naming
    `layer`, the input size and the formula when the (dilated) kernel is
    larger than the padded input, or a setting is out of range.
    """
    before, after = _per_side(padding)
    span = dilation * (kernel - 1) + 1  # Pixels the dilated kernel covers.
    padded = size + before + after
    added = f"2·{before}" if before == after else f"{before} + {after}"
    if min(kernel, stride, dilation) < 1 or min(before, after) < 0:
        problem = f"kernel {kernel}, stride {stride} and dilation {dilation} must be ≥ 1 and padding {padding} ≥ 0"
        fix = "use positive settings"
    elif span > padded:
        problem = f"kernel spans {span} pixels, more than the padded input {size} + {added} = {padded}"
        fix = "use a smaller kernel, more padding, a larger input, or downsample less before this layer"
    else:
        return (padded - span) // stride + 1
    settings = f"in={size}, kernel={kernel}, stride={stride}, padding={padding}, dilation={dilation}"
    raise UserError(f"{layer}: {problem} (out = floor((in + 2·padding − dilation·(kernel − 1) − 1)/stride) + 1 "
                    f"with {settings}); {fix}")


def same_output_size(size: int, stride: int = 1) -> int:
    """Output size of a convolution with "SAME" padding: ceil(size/stride), whatever the kernel."""
    return -(-size // stride)


def pool_output_size(size: int, window: int, stride: int | None = None, padding: int = 0, ceil_mode: bool = False,
                     layer: str = "pool") -> int:
    """Output size of a pooling: floor((size + 2·padding − window)/stride) + 1, stride defaulting to the window.

    The seed documents' (W1 − F)/S + 1 is this with padding 0. `ceil_mode` is
    PyTorch's `ceil_mode=True`: it rounds up, so the last window may hang over
    the bottom or right edge (even be larger than the input), but it must
    start inside the input or its left padding. Raises `UserError` naming
    `layer`, the setting that makes it impossible, the formula and the fix.
    """
    stride = window if stride is None else stride
    padded = size + 2 * padding
    out = None
    if window < 1:
        problem, fix = f"window {window} is below 1", "use a window of at least 1"
    elif stride < 1:
        problem, fix = f"stride {stride} is below 1", "use a stride of at least 1"
    elif not 0 <= padding < window:
        problem, fix = f"padding {padding} is outside [0, window)", f"use a padding from 0 to {window - 1}"
    elif ceil_mode:
        out = -(-(padded - window) // stride) + 1
        out -= (out - 1) * stride >= size + padding  # The last window would start in the right padding.
        problem = f"no window starts inside the input {size} + 2·{padding} = {padded}"
        fix = "use a smaller window or stride, or pool earlier in the network"
    elif window > padded:
        problem = f"window {window} is larger than the padded input {size} + 2·{padding} = {padded}"
        fix = f"use a window of at most {padded}, more padding, or pool earlier in the network"
    else:
        out = (padded - window) // stride + 1
    if out is not None and out >= 1:
        return out
    settings = f"in={size}, window={window}, stride={stride}, padding={padding}"
    formula = f"out = {'ceil' if ceil_mode else 'floor'}((in + 2·padding − window)/stride) + 1 with {settings}"
    raise UserError(f"{layer}: {problem} ({formula}); {fix}")


def fractional_pool_output_size(size: int, ratio: float) -> int:
    """Output size of fractional max-pooling (Graham 2014) by `ratio` in (1, 2): floor(size/ratio)."""
    return math.floor(size / ratio)


def conv_params(kernel_h: int, kernel_w: int, in_ch: int, out_ch: int, bias: bool = True) -> int:
    """Trainable scalars of a convolution: kernel_h·kernel_w·in_ch·out_ch weights, plus out_ch biases."""
    return kernel_h * kernel_w * in_ch * out_ch + (out_ch if bias else 0)


def count_params(params) -> int:
    """The number of scalars in a parameter pytree (trainable parameters, not batch statistics)."""
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))


def dense_params(in_features: int, out_features: int, bias: bool = True) -> int:
    """Trainable scalars of a fully connected layer: in·out weights, plus out biases."""
    return conv_params(1, 1, in_features, out_features, bias)


def conv_flops(kernel_h: int, kernel_w: int, in_ch: int, out_ch: int, out_h: int, out_w: int) -> int:
    """FLOPs of one image through a convolution: 2 · (kernel_h·kernel_w·in_ch multiply-adds) per output value.

    Counts padding taps as multiplies (XLA's cost analysis skips them) and no bias additions. A 1-D convolution
    (along a sequence) is one with kernel_w = out_w = 1.
    """
    return 2 * kernel_h * kernel_w * in_ch * out_ch * out_h * out_w


def im2col_shapes(kernel: Sequence[int], in_ch: int, out_ch: int, out_positions: Sequence[int]) -> dict:
    """The two matrices of one image's convolution computed as one product (im2col, cs231n; `cnn_jax.kernels.im2col`).

    `kernel` is the window's sizes (k_h, k_w; or k along a sequence),
    `out_positions` the output's (out_h, out_w; or out). The patch matrix
    holds a column per output position, each the k_h·k_w·in_ch values its
    filter sees: [k_h·k_w·in_ch × out_h·out_w]; the kernel matrix a row per
    filter: [out_ch × k_h·k_w·in_ch]. Their product is the output,
    [out_ch × out_h·out_w]. Returns {"patch_matrix": [rows, columns],
    "kernel_matrix": [rows, columns]}.
    """
    patch = int(np.prod(kernel)) * in_ch
    return {"patch_matrix": [patch, int(np.prod(out_positions))], "kernel_matrix": [out_ch, patch]}


def dense_flops(in_features: int, out_features: int) -> int:
    """FLOPs of one example through a fully connected layer: 2·in·out (no bias additions)."""
    return conv_flops(1, 1, in_features, out_features, 1, 1)


def receptive_field(layers: Iterable[Sequence[int]], field: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """(size, jump) in input pixels after a chain of (kernel, stride, dilation) layers, from `field`.

    R_k = R_{k−1} + (K_k − 1)·d_k·J_{k−1} and J_k = J_{k−1}·S_k, starting from
    `field` = (R_0, J_0) = (1, 1) at the input. A pooling is (window, stride,
    1). Size is how many input pixels one output unit sees along the axis;
    jump is the input distance between neighbouring output units.
    """
    size, jump = field
    for kernel, stride, dilation in layers:
        size, jump = size + (kernel - 1) * dilation * jump, jump * stride
    return size, jump


def activation_values(shape: Sequence[int]) -> int:
    """Number of values in an activation of `shape` (e.g. `[batch, height, width, channels]`)."""
    return int(np.prod(shape, dtype=np.int64))


def activation_bytes(shape: Sequence[int], dtype="float32", training: bool = False) -> int:
    """Bytes of an activation of `shape` in `dtype`; `training` doubles it to hold its gradient too.

    The convention: a forward pass keeps each value once; training keeps it
    for the backward pass and also holds a gradient of the same size.
    """
    return activation_values(shape) * np.dtype(dtype).itemsize * (2 if training else 1)
