"""Compiled kernels for XLA's CPU backend, called through XLA's FFI: oneDNN convolutions, a
few-input-channel weight gradient, and BatchNorm -> ReLU -> 2×2 max-pooling fused.

Which layer uses which kernel is decided in `cnn_jax.kernels.dispatch`, not here.

XLA:CPU's own convolutions (Eigen) run the seed network's second convolution
and its gradients 2-4× slower than oneDNN (BENCHMARKS.md), and it computes a
training-mode BatchNorm, ReLU and max-pool as several passes over the
activations, mostly on one core. `csrc/onednn_conv.cc` wraps oneDNN's
forward, input-gradient and weight-gradient convolutions;
`csrc/few_channel_weight_gradient.cc` computes the weight gradient of a
first layer (one to a few input channels) with its accumulators in vector
registers; `csrc/batch_norm_relu_max_pool.cc` computes the other three layers
in two passes forward and two backward, on every core. `load()` compiles them on first use
(g++, Debian's libdnnl-dev, JAX's FFI headers) into a cache folder and
registers them. Where that cannot be done, `load()` returns False and cnn_jax
uses XLA's operations.
"""

import ctypes
import functools
import hashlib
import os
import platform
import subprocess
import sysconfig

import jax
import numpy as np
from absl import logging

from cnn_jax.analysis import arithmetic

_SOURCES = [os.path.join(os.path.dirname(__file__), "csrc", name)
            for name in ("onednn_conv.cc", "few_channel_weight_gradient.cc", "batch_norm_relu_max_pool.cc")]
_HEADERS = [os.path.join(os.path.dirname(__file__), "csrc", "few_channel_weight_gradient.h")]
_TARGETS = ("OnednnConvForward", "OnednnConvInputGradient", "OnednnConvWeightGradient",
            "FewChannelConvWeightGradient", "BatchNormReluMaxPoolForward", "BatchNormReluMaxPoolBackward",
            "BatchNormReluMaxPoolBackwardToConvWeights")


def _cpu_features() -> bytes:
    """This CPU's feature flags: the library is compiled for them (-march=native), so they are part of its name."""
    try:
        with open("/proc/cpuinfo", "rb") as f:
            return next((line for line in f if line.startswith(b"flags")), b"")
    except OSError:
        return platform.processor().encode()


def _library_path() -> str:
    digest = hashlib.sha256(jax.__version__.encode() + _cpu_features())
    for source in _SOURCES + _HEADERS:
        with open(source, "rb") as f:
            digest.update(f.read())
    cache = os.environ.get("CNN_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "cnn_jax"))
    return os.path.join(cache, f"cpu_kernels-{digest.hexdigest()[:16]}{sysconfig.get_config_var('SHLIB_SUFFIX') or '.so'}")


def build() -> str:
    """Compiles the FFI library if it is not cached yet; returns its path. Raises on failure."""
    path = _library_path()
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        command = ["g++", "-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC", "-w",
                   f"-I{jax.ffi.include_dir()}", *_SOURCES, "-ldnnl", "-o", tmp]
        subprocess.run(command, check=True, capture_output=True, text=True)
        os.replace(tmp, path)  # Atomic: concurrent builders never see half a library.
    return path


@functools.cache
def load() -> bool:
    """Builds and registers the FFI targets once; False (with a warning) where that fails."""
    try:
        library = ctypes.cdll.LoadLibrary(build())
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        logging.warning("cnn_jax's CPU kernels are unavailable, using XLA's (slower) operations: %s. "
                        "Install them with: apt-get install libdnnl-dev g++", detail.strip().splitlines()[-1:])
        return False
    for name in _TARGETS:
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, name)), platform="cpu")
    return True


def _call(target: str, result_shapes):
    """The FFI target `target`; under `jax.vmap` (a sweep's seeds) it runs once per vectorised element."""
    return jax.ffi.ffi_call(target, result_shapes, vmap_method="sequential")


def _attributes(strides, padding) -> dict:
    (stride_h, stride_w), ((top, bottom), (left, right)) = strides, padding
    values = dict(stride_h=stride_h, stride_w=stride_w, pad_top=top, pad_bottom=bottom, pad_left=left, pad_right=right)
    return {name: np.int64(value) for name, value in values.items()}


def _output_shape(x_shape, kernel_shape, strides, padding) -> tuple:
    (n, h, w, _), (kh, kw, _, out) = x_shape, kernel_shape
    height, width = (arithmetic.conv_output_size(size, k, stride, pads)
                     for size, k, stride, pads in zip((h, w), (kh, kw), strides, padding))
    return n, height, width, out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv(x, kernel, strides, padding, few_channel_weight_gradient: bool):
    """NHWC × HWIO float32 convolution on oneDNN; `strides` (sh, sw), `padding` ((top, bottom), (left, right)) ≥ 0.

    Its gradients are oneDNN's too, except the weight gradient with
    `few_channel_weight_gradient`, which is `csrc/few_channel_weight_gradient.cc`'s
    (for a few input channels and a multiple of 8 output channels, where
    oneDNN's kernels, made for many channels, are slow).

    Call `load()` first (and only use it where it returned True).
    """
    shape = jax.ShapeDtypeStruct(_output_shape(x.shape, kernel.shape, strides, padding), x.dtype)
    return _call("OnednnConvForward", shape)(x, kernel, **_attributes(strides, padding))


def _conv_fwd(x, kernel, strides, padding, few_channel_weight_gradient):
    return conv(x, kernel, strides, padding, few_channel_weight_gradient), (x, kernel)


def _few_channel_attributes(attributes: dict) -> dict:
    return {k: attributes[k] for k in ("stride_h", "stride_w", "pad_top", "pad_left")}


def _input_gradient(dy, kernel, x_shape, strides, padding):
    """The gradient of `conv`'s input x (of shape `x_shape`) given its output's gradient `dy`."""
    return _call("OnednnConvInputGradient", jax.ShapeDtypeStruct(x_shape, dy.dtype))(
        dy, kernel, **_attributes(strides, padding))


def _conv_bwd(strides, padding, few_channel_weight_gradient, residuals, cotangent):
    x, kernel = residuals
    attributes = _attributes(strides, padding)
    dkernel_shape = jax.ShapeDtypeStruct(kernel.shape, kernel.dtype)
    if few_channel_weight_gradient:
        dkernel = _call("FewChannelConvWeightGradient", dkernel_shape)(x, cotangent, **_few_channel_attributes(attributes))
    else:
        dkernel = _call("OnednnConvWeightGradient", dkernel_shape)(x, cotangent, **attributes)
    return _input_gradient(cotangent, kernel, x.shape, strides, padding), dkernel


conv.defvjp(_conv_fwd, _conv_bwd)


def _epsilon(epsilon) -> dict:
    return {"epsilon": np.float32(epsilon)}


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def batch_norm_relu_max_pool(x, offset, scale, bias, epsilon):
    """max_pool_2x2(relu(BatchNorm(x + offset))) in training mode, and the batch's per-channel mean and variance.

    `x` is float32 NHWC with even height and width; `offset` (a convolution's
    bias, which BatchNorm cancels but its running mean keeps), `scale` and
    `bias` are [C]; the variance is the biased one, as Flax's BatchNorm uses.
    Returns (y, mean, var), y `[n, h/2, w/2, c]`. Among tied maxima of a window
    the first (row-major) takes the gradient. Call `load()` first (and only
    use it where it returned True).
    """
    return _batch_norm_relu_max_pool_fwd(x, offset, scale, bias, epsilon)[0]


def _batch_norm_relu_max_pool_fwd(x, offset, scale, bias, epsilon):
    n, h, w, c = x.shape
    shapes = (jax.ShapeDtypeStruct((n, h // 2, w // 2, c), x.dtype), jax.ShapeDtypeStruct((c,), x.dtype),
              jax.ShapeDtypeStruct((c,), x.dtype), jax.ShapeDtypeStruct((n, h // 2, w // 2, c), np.int8),
              jax.ShapeDtypeStruct((n, h // 2, w // 2, c), x.dtype))
    # The offset moves the mean and nothing else: normalised, x + offset is x.
    y, mean, var, winner, at_winner = _call("BatchNormReluMaxPoolForward", shapes)(x, scale, bias, **_epsilon(epsilon))
    return (y, mean + offset, var), (x, scale, mean, var, winner, at_winner)


def _batch_norm_relu_max_pool_bwd(epsilon, residuals, cotangents):
    x, scale, *_ = residuals
    dy = cotangents[0]  # The statistics' cotangents are zero: they only feed BatchNorm's running averages.
    vector = jax.ShapeDtypeStruct(scale.shape, x.dtype)
    dx, doffset, dscale, dbias = _call(
        "BatchNormReluMaxPoolBackward", (jax.ShapeDtypeStruct(x.shape, x.dtype), vector, vector, vector))(
        *residuals, dy, **_epsilon(epsilon))
    return dx, doffset, dscale, dbias


batch_norm_relu_max_pool.defvjp(_batch_norm_relu_max_pool_fwd, _batch_norm_relu_max_pool_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def batch_norm_relu_max_pool_after_conv(z, x, kernel, offset, scale, bias, strides, padding, epsilon):
    """`batch_norm_relu_max_pool(z, ...)` where z = `conv(x, kernel, strides, padding)` has few input channels.

    The same values; the gradients of `x` and `kernel` are computed here, the
    kernel's from each image's gradient of z while it is in cache (it is
    never stored whole), and z's is zero: pass z under `lax.stop_gradient` so
    that the convolution's own gradients are not computed as well. Needs the
    few-channel weight gradient's shapes (`conv`): a few input channels, a
    multiple of 8 output channels. The gradient of `x`, if anything uses it,
    goes through BatchNorm's and the convolution's gradients as usual.
    """
    return _batch_norm_relu_max_pool_fwd(z, offset, scale, bias, epsilon)[0]


def _after_conv_fwd(z, x, kernel, offset, scale, bias, strides, padding, epsilon):
    out, residuals = _batch_norm_relu_max_pool_fwd(z, offset, scale, bias, epsilon)
    return out, (residuals, x, kernel)


def _after_conv_bwd(strides, padding, epsilon, residuals, cotangents):
    bn_residuals, x, kernel = residuals
    vector = jax.ShapeDtypeStruct(bn_residuals[1].shape, x.dtype)
    dkernel, doffset, dscale, dbias = _call(
        "BatchNormReluMaxPoolBackwardToConvWeights", (jax.ShapeDtypeStruct(kernel.shape, kernel.dtype), vector, vector, vector))(
        *bn_residuals, cotangents[0], x, **_epsilon(epsilon), **_few_channel_attributes(_attributes(strides, padding)))
    # XLA drops these two kernels where nothing uses x's gradient, as for a network's input images.
    dz = _batch_norm_relu_max_pool_bwd(epsilon, bn_residuals, cotangents)[0]
    dx = _input_gradient(dz, kernel, x.shape, strides, padding)
    return None, dx, dkernel, doffset, dscale, dbias  # None: a zero gradient for z.


batch_norm_relu_max_pool_after_conv.defvjp(_after_conv_fwd, _after_conv_bwd)
