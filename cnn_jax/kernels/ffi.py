"""Compiled kernels for XLA's CPU backend, called through XLA's FFI: oneDNN convolutions and max-pooling, a
few-input-channel weight gradient, and training-mode BatchNorm fused with what follows it: ReLU and 2×2
max-pooling, or ReLU alone, or nothing.

Which layer uses which kernel is decided in `cnn_jax.kernels.dispatch`, not here.

XLA:CPU's own convolutions (Eigen) run the seed network's second convolution
and its gradients 2-4× slower than oneDNN (BENCHMARKS.md), and it computes a
training-mode BatchNorm, ReLU and max-pool as several passes over the
activations, mostly on one core. `csrc/onednn_conv.cc` wraps oneDNN's
forward, input-gradient and weight-gradient convolutions, and
`csrc/onednn_max_pool.cc` its max-pooling over overlapping or padded
windows and that pooling's gradient; `csrc/few_channel_weight_gradient.cc` computes the weight gradient of a
first layer (one to a few input channels) with its accumulators in vector
registers; `csrc/batch_norm_relu_max_pool.cc` computes the other three layers
in two passes forward and two backward, on every core, and
`csrc/batch_norm_act.cc` a BatchNorm followed by a ReLU or by nothing. `load()` compiles them
on first use (g++, oneDNN, JAX's FFI headers) into a cache
folder and registers them. Where that cannot be done, `load()` returns False
and cnn_jax uses XLA's operations.

XLA cannot split a kernel over devices (it would gather the whole batch onto
each), so inside a mesh (`jax.set_mesh`, as the training loop sets it) every
kernel runs under `jax.shard_map` on its own device's part of the batch: the
weight gradients are summed over the devices, and BatchNorm's statistics
are combined between the kernel calls of each direction, so the results are
those of the whole batch. Each call uses its device's share of the cores
(`csrc/threads.h`).
"""

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import platform
import re
import subprocess
import sysconfig

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.sharding import PartitionSpec

from cnn_jax.analysis import arithmetic
from cnn_jax.errors import UserError

_SOURCES = [os.path.join(os.path.dirname(__file__), "csrc", name)
            for name in ("onednn_conv.cc", "onednn_max_pool.cc", "few_channel_weight_gradient.cc",
                         "batch_norm_relu_max_pool.cc", "batch_norm_act.cc")]
_HEADERS = [os.path.join(os.path.dirname(__file__), "csrc", name)
            for name in ("channels.h", "few_channel_weight_gradient.h", "lanes.h", "onednn.h", "stack.h", "threads.h")]
_TARGETS = ("OnednnConvForward", "OnednnConvInputGradient", "OnednnConvWeightGradient", "OnednnMaxPoolForward",
            "OnednnMaxPoolBackward",
            "FewChannelConvWeightGradient", "BatchNormMoments", "BatchNormReluMaxPoolForward",
            "BatchNormReluMaxPoolBackwardSums", "BatchNormReluMaxPoolBackward", "BatchNormReluMaxPoolBackwardToConvWeights",
            "BatchNormActForward", "BatchNormActBackwardSums", "BatchNormActBackward")
"""The float32 kernels; each has a bfloat16 twin (`_typed`), whose arithmetic and statistics are float32 too."""


INSTALL = ("g++ and oneDNN: apt-get install g++, and pip install onednn-cpu-gomp onednn-devel-cpu-gomp (x86-64 "
           "Linux) or apt-get install libdnnl-dev (setup.sh does both)")
"""How to install what the kernels are built with, for the messages that say they are unavailable."""


def _cpu_features() -> bytes:
    """This CPU's feature flags: the library is compiled for them (-march=native), so they are part of its name."""
    try:
        with open("/proc/cpuinfo", "rb") as f:
            return next((line for line in f if line.startswith(b"flags")), b"")
    except OSError:
        return platform.processor().encode()


def has_bfloat16_instructions() -> bool:
    """Whether this CPU computes bfloat16 products natively (AVX-512 BF16 or AMX-BF16), as the bfloat16 kernels need:
    oneDNN refuses them, or emulates them slower than float32, elsewhere."""
    return bool({b"avx512_bf16", b"amx_bf16"} & set(_cpu_features().split()))


def _installed_file(distribution: str, path: str) -> str | None:
    """Where the installed `distribution` put its file ending in `path`, or None (not installed, or no such file)."""
    try:
        files = importlib.metadata.files(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    return next((os.path.normpath(f.locate()) for f in files if str(f).endswith(path)), None)


_ONEDNN_CHOICES = ("auto", "system")


@functools.cache
def onednn() -> tuple[str, list[str], bytes]:
    """The oneDNN the kernels build against: its description ("3.2.0, PyPI's onednn-cpu-gomp"), the compiler flags
    that use it, and its version header (part of the library's name).

    PyPI's CPU build where it is installed (`onednn-cpu-gomp` and `onednn-devel-cpu-gomp`, which pyproject.toml
    installs on x86-64 Linux: oneDNN 3.2 on GNU OpenMP, the kernels' own threads), unless `CNN_JAX_ONEDNN=system`;
    else the system's (Debian's `libdnnl-dev`; oneDNN 2.6.3 on bookworm). Against PyTorch, oneDNN 3.2 trains the zoo's
    big models 1.1-1.2× as fast as 2.6.3 does on an AVX2 CPU, and level with it on an AVX-512 one (BENCHMARKS.md,
    "oneDNN")."""
    choice = os.environ.get("CNN_JAX_ONEDNN", "auto")
    if choice not in _ONEDNN_CHOICES:
        raise UserError(f"CNN_JAX_ONEDNN={choice} is not one of {', '.join(_ONEDNN_CHOICES)}: 'auto' (or unset) "
                        "builds the kernels on PyPI's oneDNN where it is installed, 'system' on the system's")
    header = _installed_file("onednn-devel-cpu-gomp", "include/oneapi/dnnl/dnnl_version.h")
    library = _installed_file("onednn-cpu-gomp", "libdnnl.so.3")
    if choice == "auto" and header and library:
        include, lib = os.path.dirname(os.path.dirname(os.path.dirname(header))), os.path.dirname(library)
        source, flags = "PyPI's onednn-cpu-gomp", [f"-I{include}", f"-L{lib}", "-l:libdnnl.so.3", f"-Wl,-rpath,{lib}"]
    else:
        header, source, flags = "/usr/include/oneapi/dnnl/dnnl_version.h", "the system's", ["-ldnnl"]
    try:
        with open(header, "rb") as f:
            text = f.read()
    except OSError:
        return "none found", flags, b""  # The build fails, and `load` says how to install it.
    version = ".".join(re.search(rb"#define DNNL_VERSION_%s (\d+)" % part, text).group(1).decode()
                       for part in (b"MAJOR", b"MINOR", b"PATCH"))
    return f"{version}, {source}", flags, text


def _library_path(onednn_version: bytes) -> str:
    digest = hashlib.sha256(jax.__version__.encode() + _cpu_features() + onednn_version)
    for source in _SOURCES + _HEADERS:
        with open(source, "rb") as f:
            digest.update(f.read())
    cache = os.environ.get("CNN_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "cnn_jax"))
    return os.path.join(cache, f"cpu_kernels-{digest.hexdigest()[:16]}{sysconfig.get_config_var('SHLIB_SUFFIX') or '.so'}")


def build() -> str:
    """Compiles the FFI library if it is not cached yet; returns its path. Raises on failure."""
    _, onednn_flags, onednn_version = onednn()
    path = _library_path(onednn_version)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        command = ["g++", "-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC", "-w",
                   f"-I{jax.ffi.include_dir()}", *_SOURCES, *onednn_flags, "-o", tmp]
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
                        "Install them with: %s", detail.strip().splitlines()[-1:], INSTALL)
        return False
    for name in _TARGETS + tuple(_typed(name, jnp.bfloat16) for name in _TARGETS):
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, name)), platform="cpu")
    return True


def _call(target: str, result_shapes):
    """The FFI target `target`; under `jax.vmap` (a sweep's seeds) one call for the whole stack, every operand with a
    leading axis per vmap (of size 1 where it is not batched), which `csrc/stack.h` splits into the calls of its
    elements and runs side by side, one core each, where there are at least as many as cores. One call per element,
    in an XLA loop (vmap_method="sequential") or unrolled, made four vmapped seeds of the seed network 0.57× and
    0.93-1.1× as fast as the same runs one by one (BENCHMARKS.md)."""
    return jax.ffi.ffi_call(target, result_shapes, vmap_method="expand_dims")


def _typed(target: str, dtype) -> str:
    """The FFI target `target` for tensors of `dtype`: float32's, or its bfloat16 twin."""
    return f"{target}BF16" if dtype == jnp.bfloat16 else target


def _devices() -> dict:
    """The `devices` attribute of every kernel: this process's devices, whose kernels may run at once."""
    return {"devices": np.int64(jax.local_device_count())}


def _batch_axes() -> tuple[str, ...]:
    """The axes of the mesh in context that a batch is split over (all of them), or () for none or one device."""
    mesh = jax.sharding.get_abstract_mesh()
    return () if mesh.empty or mesh.size == 1 else tuple(mesh.axis_names)


def _per_device(local, batched_args: tuple[bool, ...], batched_results):
    """`local(axes, *args)` run on each device's part of the batch (the leading axis) of the mesh in context.

    Arguments and results flagged batched are split over the mesh, the
    others replicated; `local` receives the mesh axes to sum over, or () when
    there is no mesh of several devices, and then runs as it is.
    """
    axes = _batch_axes()
    function = functools.partial(local, axes)
    if not axes:
        return function
    spec = lambda batched: PartitionSpec(axes) if batched else PartitionSpec()  # noqa: E731
    return jax.shard_map(function, in_specs=tuple(map(spec, batched_args)), out_specs=jax.tree.map(spec, batched_results))


def _sum(values, axes):
    """The sum over the devices of `axes` (none: the value itself)."""
    return jax.lax.psum(values, axes) if axes else values


def _mean(values, axes):
    """The mean over the devices of `axes`, which hold equal parts of the batch (none: the value itself)."""
    return jax.lax.pmean(values, axes) if axes else values


def _attributes(strides, padding) -> dict:
    (stride_h, stride_w), ((top, bottom), (left, right)) = strides, padding
    values = dict(stride_h=stride_h, stride_w=stride_w, pad_top=top, pad_bottom=bottom, pad_left=left, pad_right=right)
    return {**{name: np.int64(value) for name, value in values.items()}, **_devices()}


def _few_channel_attributes(strides, padding) -> dict:
    attributes = _attributes(strides, padding)
    return {k: attributes[k] for k in ("stride_h", "stride_w", "pad_top", "pad_left", "devices")}


def _output_shape(x_shape, kernel_shape, strides, padding) -> tuple:
    (n, h, w, _), (kh, kw, _, out) = x_shape, kernel_shape
    height, width = (arithmetic.conv_output_size(size, k, stride, pads)
                     for size, k, stride, pads in zip((h, w), (kh, kw), strides, padding))
    return n, height, width, out


# Convolution. The local functions run on one device's part of the batch.

def _conv_forward(x, kernel, strides, padding):
    shape = jax.ShapeDtypeStruct(_output_shape(x.shape, kernel.shape, strides, padding), x.dtype)
    return _call(_typed("OnednnConvForward", x.dtype), shape)(x, kernel, **_attributes(strides, padding))


def _conv_input_gradient(dy, kernel, x_shape, strides, padding):
    """The gradient of a convolution's input x (of shape `x_shape`) given its output's gradient `dy`."""
    return _call(_typed("OnednnConvInputGradient", dy.dtype), jax.ShapeDtypeStruct(x_shape, dy.dtype))(
        dy, kernel, **_attributes(strides, padding))


def _conv_weight_gradient(axes, x, dy, kernel_shape, strides, padding, few_channel_weight_gradient):
    shape = jax.ShapeDtypeStruct(kernel_shape, x.dtype)
    if few_channel_weight_gradient:
        dkernel = _call(_typed("FewChannelConvWeightGradient", x.dtype), shape)(x, dy, **_few_channel_attributes(strides, padding))
    else:
        dkernel = _call(_typed("OnednnConvWeightGradient", x.dtype), shape)(x, dy, **_attributes(strides, padding))
    return _sum(dkernel, axes)


def conv(x, kernel, strides, padding, few_channel_weight_gradient: bool):
    """NHWC × HWIO float32 (or bfloat16) convolution on oneDNN; `strides` (sh, sw), `padding` ((top, bottom), (left, right)) ≥ 0.

    Its gradients are oneDNN's too, except the weight gradient with
    `few_channel_weight_gradient`, which is `csrc/few_channel_weight_gradient.cc`'s
    (for a few input channels and a multiple of 8 output channels, where
    oneDNN's kernels, made for many channels, are slow).

    A strided 1×1 convolution (a ResNet shortcut) reads only every stride-th pixel: it runs on those pixels, cut
    out by XLA, at stride 1. oneDNN 3.2's AVX2 weight gradient of a strided 1×1 convolution is wrong with fewer
    than 8 input channels (tests/test_kernels.py has the case).

    Call `load()` first (and only use it where it returned True).
    """
    if kernel.shape[:2] == (1, 1) and tuple(strides) != (1, 1):
        x = jnp.pad(x, ((0, 0), *padding, (0, 0)))
        _, height, width, _ = _output_shape(x.shape, kernel.shape, strides, ((0, 0), (0, 0)))
        (sh, sw), strides, padding = strides, (1, 1), ((0, 0), (0, 0))
        x = x[:, :(height - 1) * sh + 1:sh, :(width - 1) * sw + 1:sw]
    return _conv(x, kernel, strides, padding, few_channel_weight_gradient)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x, kernel, strides, padding, few_channel_weight_gradient: bool):
    forward = lambda axes, x, kernel: _conv_forward(x, kernel, strides, padding)  # noqa: E731
    return _per_device(forward, (True, False), True)(x, kernel)


def _conv_fwd(x, kernel, strides, padding, few_channel_weight_gradient):
    return _conv(x, kernel, strides, padding, few_channel_weight_gradient), (x, kernel)


def _conv_bwd(strides, padding, few_channel_weight_gradient, residuals, cotangent):
    def local(axes, x, kernel, dy):
        dkernel = _conv_weight_gradient(axes, x, dy, kernel.shape, strides, padding, few_channel_weight_gradient)
        return _conv_input_gradient(dy, kernel, x.shape, strides, padding), dkernel

    return _per_device(local, (True, False, True), (True, False))(*residuals, cotangent)


_conv.defvjp(_conv_fwd, _conv_bwd)


# Max-pooling over overlapping or padded windows.

def _max_pool_attributes(window, stride, pads) -> dict:
    ((top, bottom), (left, right)) = pads
    values = dict(window=window, stride=stride, pad_top=top, pad_bottom=bottom, pad_left=left, pad_right=right)
    return {**{name: np.int64(value) for name, value in values.items()}, **_devices()}


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool(x, window: int, stride: int, pads):
    """Max over `window`×`window` windows at `stride` of float32 (or bfloat16) NHWC `x` padded by `pads`
    ((top, bottom), (left, right)), every window starting inside the map or its top and left padding (as
    `cnn_jax.analysis.arithmetic` checks a pooling's settings); padding never wins.

    Among tied maxima the first of a window (row-major) takes the gradient, as XLA's select-and-scatter gives it.
    Call `load()` first (and only use it where it returned True).
    """
    return _max_pool_fwd(x, window, stride, pads)[0]


def _max_pool_fwd(x, window, stride, pads):
    def local(axes, x):
        height, width = ((size + low + high - window) // stride + 1 for size, (low, high) in zip(x.shape[1:3], pads))
        shape = (x.shape[0], height, width, x.shape[3])
        return _call(_typed("OnednnMaxPoolForward", x.dtype),
                     (jax.ShapeDtypeStruct(shape, x.dtype), jax.ShapeDtypeStruct(shape, jnp.uint8)))(
            x, **_max_pool_attributes(window, stride, pads))

    y, winners = _per_device(local, (True,), (True, True))(x)
    return y, (winners, x.shape[1:])


def _max_pool_bwd(window, stride, pads, residuals, dy):
    winners, map_shape = residuals

    def local(axes, dy, winners):
        shape = jax.ShapeDtypeStruct((dy.shape[0], *map_shape), dy.dtype)
        return _call(_typed("OnednnMaxPoolBackward", dy.dtype), shape)(
            dy, winners, **_max_pool_attributes(window, stride, pads))

    return (_per_device(local, (True, True), True)(dy, winners),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


# BatchNorm -> ReLU -> 2×2 max-pool, in training mode.

def _vectors(count: int, like) -> tuple:
    return tuple(jax.ShapeDtypeStruct(like.shape, like.dtype) for _ in range(count))


def _moments(axes, x):
    """The whole batch's per-channel mean and (biased) variance of `x`; equal parts on the devices of `axes`."""
    vector = jax.ShapeDtypeStruct(x.shape[-1:], jnp.float32)
    mean, var = _call(_typed("BatchNormMoments", x.dtype), (vector, vector))(x, **_devices())
    if not axes:
        return mean, var
    whole = jax.lax.pmean(mean, axes)  # The parts' variances, plus the spread of their means around the whole's.
    return whole, jax.lax.pmean(var + jnp.square(mean - whole), axes)


def _backward_sums(axes, mean, var, winner, at_winner, dy, epsilon):
    """(dscale, dbias, mean of du, mean of du·x̂) of the whole batch: see `BackwardSums` in the kernel's source."""
    dscale, dbias, mean_du, mean_du_xhat = _call(_typed("BatchNormReluMaxPoolBackwardSums", dy.dtype),
                                                 _vectors(4, mean))(
        mean, var, winner, at_winner, dy, epsilon=np.float32(epsilon), **_devices())
    return _sum(dscale, axes), _sum(dbias, axes), _mean(mean_du, axes), _mean(mean_du_xhat, axes)


def _batch_norm_input_gradient(x, scale, mean, var, winner, dy, mean_du, mean_du_xhat, epsilon):
    """(dx, Σ dx over this part of the batch per channel)."""
    return _call(_typed("BatchNormReluMaxPoolBackward", x.dtype),
                 (jax.ShapeDtypeStruct(x.shape, x.dtype), _vectors(1, mean)[0]))(
        x, scale, mean, var, winner, dy, mean_du, mean_du_xhat, epsilon=np.float32(epsilon), **_devices())


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def batch_norm_relu_max_pool(x, offset, scale, bias, epsilon):
    """max_pool_2x2(relu(BatchNorm(x + offset))) in training mode, and the batch's per-channel mean and variance.

    `x` is float32 or bfloat16 NHWC with even height and width (y is of its
    dtype); `offset` (a convolution's bias, which BatchNorm cancels but its
    running mean keeps), `scale` and `bias` are float32 [C], as are the
    statistics; the variance is the biased one, as Flax's BatchNorm uses.
    Returns (y, mean, var), y `[n, h/2, w/2, c]`. Among tied maxima of a window
    the first (row-major) takes the gradient. Call `load()` first (and only
    use it where it returned True).
    """
    return _batch_norm_relu_max_pool_fwd(x, offset, scale, bias, epsilon)[0]


def _batch_norm_relu_max_pool_fwd(x, offset, scale, bias, epsilon):
    def local(axes, x, offset, scale, bias):
        mean, var = _moments(axes, x)
        pooled = (x.shape[0], x.shape[1] // 2, x.shape[2] // 2, x.shape[3])
        shapes = (jax.ShapeDtypeStruct(pooled, x.dtype), jax.ShapeDtypeStruct(pooled, np.int8),
                  jax.ShapeDtypeStruct(pooled, x.dtype))
        y, winner, at_winner = _call(_typed("BatchNormReluMaxPoolForward", x.dtype), shapes)(
            x, mean, var, scale, bias, epsilon=np.float32(epsilon), **_devices())
        # The offset moves the mean and nothing else: normalised, x + offset is x.
        return (y, mean + offset, var), (x, scale, mean, var, winner, at_winner)

    batched = ((True, False, False), (True, False, False, False, True, True))
    return _per_device(local, (True, False, False, False), batched)(x, offset, scale, bias)


def _batch_norm_relu_max_pool_bwd(epsilon, residuals, cotangents):
    def local(axes, x, scale, mean, var, winner, at_winner, dy):
        dscale, dbias, *means = _backward_sums(axes, mean, var, winner, at_winner, dy, epsilon)
        dx, doffset = _batch_norm_input_gradient(x, scale, mean, var, winner, dy, *means, epsilon)
        return dx, _sum(doffset, axes), dscale, dbias

    dy = cotangents[0]  # The statistics' cotangents are zero: they only feed BatchNorm's running averages.
    batched = (True, False, False, False, True, True, True)
    return _per_device(local, batched, (True, False, False, False))(*residuals, dy)


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
    def local(axes, z, scale, mean, var, winner, at_winner, dy, x, kernel):
        dscale, dbias, *means = _backward_sums(axes, mean, var, winner, at_winner, dy, epsilon)
        shapes = (jax.ShapeDtypeStruct(kernel.shape, kernel.dtype), _vectors(1, mean)[0])
        dkernel, doffset = _call(_typed("BatchNormReluMaxPoolBackwardToConvWeights", z.dtype), shapes)(
            z, scale, mean, var, winner, dy, *means, x, epsilon=np.float32(epsilon),
            **_few_channel_attributes(strides, padding))
        # XLA drops these two kernels where nothing uses x's gradient, as for a network's input images.
        dz = _batch_norm_input_gradient(z, scale, mean, var, winner, dy, *means, epsilon)[0]
        dx = _conv_input_gradient(dz, kernel, x.shape, strides, padding)
        return dx, _sum(dkernel, axes), _sum(doffset, axes), dscale, dbias

    bn_residuals, x, kernel = residuals
    batched = (True, False, False, False, True, True, True, True, False)
    dx, dkernel, doffset, dscale, dbias = _per_device(local, batched, (True, False, False, False, False))(
        *bn_residuals, cotangents[0], x, kernel)
    return None, dx, dkernel, doffset, dscale, dbias  # None: a zero gradient for z.


batch_norm_relu_max_pool_after_conv.defvjp(_after_conv_fwd, _after_conv_bwd)


# BatchNorm -> ReLU (or nothing), in training mode.

def _act_attributes(epsilon, relu) -> dict:
    return {"epsilon": np.float32(epsilon), "relu": bool(relu), **_devices()}


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def batch_norm_act(x, offset, scale, bias, epsilon, relu: bool):
    """relu(BatchNorm(x + offset)) (without the ReLU where `relu` is False) in training mode, and the batch's
    per-channel mean and (biased) variance.

    `x` is float32 or bfloat16 NHWC (y is of its dtype); `offset` (a
    convolution's bias, or zeros), `scale` and `bias` are float32 [C], as are
    the statistics. Returns (y, mean, var). Call `load()` first (and
    only use it where it returned True).
    """
    return _batch_norm_act_fwd(x, offset, scale, bias, epsilon, relu)[0]


def _batch_norm_act_fwd(x, offset, scale, bias, epsilon, relu):
    def local(axes, x, offset, scale, bias):
        mean, var = _moments(axes, x)
        y = _call(_typed("BatchNormActForward", x.dtype), jax.ShapeDtypeStruct(x.shape, x.dtype))(
            x, mean, var, scale, bias, **_act_attributes(epsilon, relu))
        return (y, mean + offset, var), (x, mean, var, scale, bias)

    batched = ((True, False, False), (True, False, False, False, False))
    return _per_device(local, (True, False, False, False), batched)(x, offset, scale, bias)


def _batch_norm_act_bwd(epsilon, relu, residuals, cotangents):
    def local(axes, x, mean, var, scale, bias, dy):
        attributes = _act_attributes(epsilon, relu)
        dscale, dbias, mean_du, mean_du_xhat = _call(_typed("BatchNormActBackwardSums", x.dtype), _vectors(4, mean))(
            x, mean, var, scale, bias, dy, **attributes)
        dscale, dbias = _sum(dscale, axes), _sum(dbias, axes)
        mean_du, mean_du_xhat = _mean(mean_du, axes), _mean(mean_du_xhat, axes)
        dx, doffset = _call(_typed("BatchNormActBackward", x.dtype),
                            (jax.ShapeDtypeStruct(x.shape, x.dtype), _vectors(1, mean)[0]))(
            x, mean, var, scale, bias, dy, mean_du, mean_du_xhat, **attributes)
        return dx, _sum(doffset, axes), dscale, dbias

    dy = cotangents[0]  # The statistics' cotangents are zero: they only feed BatchNorm's running averages.
    batched = (True, False, False, False, False, True)
    return _per_device(local, batched, (True, False, False, False))(*residuals, dy)


batch_norm_act.defvjp(_batch_norm_act_fwd, _batch_norm_act_bwd)
