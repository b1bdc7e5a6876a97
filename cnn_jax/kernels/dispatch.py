"""The one place that decides how a layer runs: XLA's own operations, or one of cnn_jax's compiled CPU kernels.

Layers say what they compute; the functions here match on that when a layer
is traced and pick the implementation. Every fast path is here:

- A convolution (`conv_general_dilated`, which every `cnn_jax.layers.Conv`
  and `ConvBlock` calls) that is plain, float32 or bfloat16 NHWC × HWIO with padding ≥ 0
  ("SAME" and "VALID" become the zeros they add), no dilation and no groups, runs on oneDNN (`ffi.conv`); its
  weight gradient is cnn_jax's own kernel when it has at most `FEW_CHANNELS`
  input channels and a multiple of 8 output channels (a first layer:
  `few_channel_weight_gradient`). Without the compiled kernels, a plain float32
  convolution with at most `FEW_CHANNELS` input channels is a tap sum
  (`tap_sum.conv`, XLA's operations in a faster form).
- A `ConvBlock` training with BatchNorm, ReLU and 2×2 stride-2 max-pooling
  (`fuses_batch_norm_relu_max_pool`) runs the three as one kernel
  (`fused.BatchNormReluMaxPool`), which also adds the convolution's bias;
  after a first layer with explicit padding it computes that convolution's
  weight gradient too (`fuses_conv_weight_gradient`). The activation and the
  pooling are matched by what they are (`activations.name_of`,
  `pooling.describe`), however they were built.
- Any other training BatchNorm of an image map followed by a ReLU (a
  `ConvBlock` without that pooling, where a pooling after the ReLU is then
  applied as usual) or by nothing (a `ConvBN` with `relu=False`, as before
  a ResNet block's addition) runs as one kernel each way
  (`fuses_batch_norm_act`, `fused.BatchNormAct`).
- A max-pooling over overlapping or padded windows of an image map (GoogLeNet's, ResNet's stem) runs on
  oneDNN (`max_pools_on_onednn`, `ffi.max_pool`); windows that tile the map are a reshape and a max, which XLA
  fuses (`pooling.max_pool`).
- The kernels take float32 activations, and bfloat16 ones (`cnn_jax.models.precision`) on a CPU with bfloat16
  instructions (`bfloat16_fast_path_missing` says why not, elsewhere).
- Everything else, and everything on a GPU or TPU, is XLA's.

The compiled kernels run on the CPU backend where they could be built
(`ffi.load()`); with several devices, inside a mesh (`compiled_kernels`). The environment variable `CNN_JAX_KERNELS=xla`, or a
`with xla_only():` block, makes every layer traced meanwhile use XLA's own
operations, for comparisons and tests. The choice is made when a function is
traced: a function jitted before keeps what it was compiled with.
"""

import contextlib
import contextvars
import os

import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax.errors import UserError
from cnn_jax.kernels import ffi, tap_sum

FEW_CHANNELS = 4
"""Input channels up to which a convolution counts as a first layer: its weight gradient is cnn_jax's own kernel
(oneDNN's are made for many channels), and without the compiled kernels its forward pass is a tap sum."""

_XLA_ONLY = contextvars.ContextVar("xla_only", default=False)
_MODES = ("auto", "xla")


@contextlib.contextmanager
def xla_only():
    """Within the block, layers traced use XLA's own operations only: no compiled kernels, no tap sums."""
    token = _XLA_ONLY.set(True)
    try:
        yield
    finally:
        _XLA_ONLY.reset(token)


def _cpu_fast_paths() -> bool:
    """Whether the CPU's fast paths apply to layers traced now: the CPU backend, and XLA's operations not forced."""
    mode = os.environ.get("CNN_JAX_KERNELS", "auto")
    if mode not in _MODES:
        raise UserError(f"CNN_JAX_KERNELS={mode} is not one of {', '.join(_MODES)}: 'xla' forces XLA's own "
                        "operations, 'auto' (or unset) uses cnn_jax's compiled CPU kernels where they apply")
    return mode == "auto" and not _XLA_ONLY.get() and jax.default_backend() == "cpu"


def compiled_kernels() -> bool:
    """Whether layers traced now may use the compiled CPU kernels.

    In a process with several devices, only inside a mesh (`jax.set_mesh`),
    where they run on each device's part of the batch: elsewhere XLA would
    gather their inputs onto every device.
    """
    if not (_cpu_fast_paths() and ffi.load()):
        return False
    return jax.local_device_count() == 1 or not jax.sharding.get_abstract_mesh().empty


def _kernel_dtype(dtype) -> bool:
    """Whether the compiled kernels compute on `dtype`: float32, or bfloat16 where this CPU has instructions for it
    (their arithmetic and statistics float32 either way)."""
    return dtype == jnp.float32 or (dtype == jnp.bfloat16 and ffi.has_bfloat16_instructions())


def bfloat16_fast_path_missing() -> str:
    """Why layers computing in bfloat16 use XLA's operations here (on a CPU, slower than float32 with the
    compiled kernels), or "" where the compiled kernels compute them or the backend is not a CPU (whose XLA
    computes bfloat16 natively)."""
    if jax.default_backend() != "cpu":
        return ""
    if not _cpu_fast_paths():
        return "CNN_JAX_KERNELS=xla forces XLA's operations"
    if not ffi.load():
        return f"cnn_jax's CPU kernels could not be built (they need {ffi.INSTALL})"
    if not ffi.has_bfloat16_instructions():
        return "this CPU has neither AVX-512 BF16 nor AMX-BF16, which the bfloat16 kernels need"
    return ""


def _plain(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count) -> bool:
    """Whether a convolution is what the CPU's fast paths compute: float32 or bfloat16 NHWC × HWIO, explicit
    padding ≥ 0, no dilation, no groups."""
    return (
        rhs.ndim == 4
        and lhs.dtype == rhs.dtype
        and _kernel_dtype(lhs.dtype)
        and feature_group_count == 1
        and not isinstance(padding, str)
        and all(p >= 0 for pair in padding for p in pair)
        and all(d == 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
        and dimension_numbers is not None  # Flax always passes them.
        and tuple(dimension_numbers.lhs_spec) == tuple(dimension_numbers.out_spec) == (0, 3, 1, 2)
        and tuple(dimension_numbers.rhs_spec) == (3, 2, 0, 1)
    )


def few_channel_weight_gradient(kernel_shape) -> bool:
    """Whether a convolution of HWIO `kernel_shape` gets cnn_jax's own weight gradient rather than oneDNN's."""
    return kernel_shape[2] <= FEW_CHANNELS and kernel_shape[3] % 8 == 0


def explicit_padding(lhs, rhs, window_strides, padding: str, dimension_numbers) -> tuple:
    """"SAME" or "VALID" as the zeros it adds, ((low, high), ...) per spatial axis: the same convolution, in the form
    the fast paths take."""
    in_shape = [lhs.shape[d] for d in dimension_numbers.lhs_spec[2:]]
    window = [rhs.shape[d] for d in dimension_numbers.rhs_spec[2:]]
    return tuple(lax.padtype_to_pads(in_shape, window, window_strides, padding))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, **kwargs):
    """`jax.lax.conv_general_dilated`, computed the fastest way cnn_jax knows (see the module docstring).

    A drop-in for `flax.linen.Conv(conv_general_dilated=...)`.
    """
    undilated = all(d == 1 for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
    if isinstance(padding, str) and dimension_numbers is not None and undilated:
        padding = explicit_padding(lhs, rhs, window_strides, padding, dimension_numbers)
    if _cpu_fast_paths() and _plain(lhs, rhs, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                                    feature_group_count):
        strides, pads = tuple(window_strides), tuple(tuple(p) for p in padding)
        if compiled_kernels():
            return ffi.conv(lhs, rhs, strides, pads, few_channel_weight_gradient(rhs.shape))
        if rhs.shape[2] <= FEW_CHANNELS and lhs.dtype == jnp.float32:
            return tap_sum.conv(lhs, rhs, strides, pads)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, **kwargs)


def fuses_batch_norm_relu_max_pool(batch_norm: bool, activation: str | None, pool, z: jnp.ndarray) -> bool:
    """Whether a training block's BatchNorm -> `activation` -> `pool` on the convolution's output `z` is one kernel.

    `activation` is a registered name (`activations.name_of`), `pool` a
    `pooling.Description` (`pooling.describe`) or None. The kernel computes
    max-pooling over 2×2 windows at stride 2 without padding, on float32 or
    bfloat16 NHWC with even height and width (images: never on sequences).
    """
    max_2x2 = pool is not None and (pool.kind, pool.window, pool.stride, pool.padding) == ("max", 2, 2, 0)
    return (batch_norm and activation == "relu" and max_2x2 and _kernel_dtype(z.dtype) and z.ndim == 4
            and z.shape[1] % 2 == 0 and z.shape[2] % 2 == 0 and compiled_kernels())


def fuses_batch_norm_act(z: jnp.ndarray) -> bool:
    """Whether a training BatchNorm on the convolution's output `z`, with a ReLU after it or nothing, is one kernel
    (`fused.BatchNormAct`): float32 or bfloat16 NHWC images (never sequences)."""
    return _kernel_dtype(z.dtype) and z.ndim == 4 and compiled_kernels()


def fuses_conv_weight_gradient(x: jnp.ndarray, kernel_shape, padding) -> bool:
    """Whether the fused kernel after a convolution of `x` also computes the convolution's weight gradient.

    For a first layer (`few_channel_weight_gradient`) on float32 or bfloat16 input with
    explicit padding ((top, bottom), (left, right)) ≥ 0; never for "SAME" or "VALID".
    """
    explicit = not isinstance(padding, str) and all(p >= 0 for pair in padding for p in pair)
    return explicit and _kernel_dtype(x.dtype) and few_channel_weight_gradient(kernel_shape)


def max_pools_on_onednn(x: jnp.ndarray, window: int) -> bool:
    """Whether a max-pooling of `x` over `window`×`window` windows runs on oneDNN (`ffi.max_pool`): float32 or
    bfloat16 NHWC images (never sequences), windows of under 256 values (oneDNN then keeps each winner in a byte)."""
    return x.ndim == 4 and _kernel_dtype(x.dtype) and window * window < 256 and compiled_kernels()
