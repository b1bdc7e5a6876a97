"""oneDNN convolutions for XLA's CPU backend, through XLA's FFI.

XLA:CPU's own convolutions (Eigen) run the seed network's second convolution
and its gradients 2-4× slower than oneDNN (BENCHMARKS.md). `csrc/onednn_conv.cc`
wraps oneDNN's forward, input-gradient and weight-gradient convolutions as FFI
handlers; `load()` compiles it on first use (g++, Debian's libdnnl-dev, JAX's
FFI headers) into a cache folder and registers it. Where that cannot be done,
`load()` returns False and cnn_jax uses XLA's convolutions.
"""

import ctypes
import functools
import hashlib
import os
import subprocess
import sysconfig

import jax
import numpy as np
from absl import logging

_SOURCE = os.path.join(os.path.dirname(__file__), "csrc", "onednn_conv.cc")
_TARGETS = ("OnednnConvForward", "OnednnConvInputGradient", "OnednnConvWeightGradient")


def _library_path() -> str:
    with open(_SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read() + jax.__version__.encode()).hexdigest()[:16]
    cache = os.environ.get("CNN_JAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "cnn_jax"))
    return os.path.join(cache, f"onednn_conv-{digest}{sysconfig.get_config_var('SHLIB_SUFFIX') or '.so'}")


def build() -> str:
    """Compiles the FFI library if it is not cached yet; returns its path. Raises on failure."""
    path = _library_path()
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.tmp-{os.getpid()}"
        command = ["g++", "-O2", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{jax.ffi.include_dir()}", _SOURCE,
                   "-ldnnl", "-o", tmp]
        subprocess.run(command, check=True, capture_output=True, text=True)
        os.replace(tmp, path)  # Atomic: concurrent builders never see half a library.
    return path


@functools.cache
def load() -> bool:
    """Builds and registers the oneDNN FFI targets once; False (with a warning) where that fails."""
    try:
        library = ctypes.cdll.LoadLibrary(build())
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or str(e)
        logging.warning("oneDNN convolutions unavailable, using XLA's (slower on CPU): %s. "
                        "Install them with: apt-get install libdnnl-dev g++", detail.strip().splitlines()[-1:])
        return False
    for name in _TARGETS:
        jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(getattr(library, name)), platform="cpu")
    return True


def _attributes(strides, padding) -> dict:
    (stride_h, stride_w), ((top, bottom), (left, right)) = strides, padding
    values = dict(stride_h=stride_h, stride_w=stride_w, pad_top=top, pad_bottom=bottom, pad_left=left, pad_right=right)
    return {name: np.int64(value) for name, value in values.items()}


def _output_shape(x_shape, kernel_shape, strides, padding) -> tuple:
    (n, h, w, _), (kh, kw, _, out) = x_shape, kernel_shape
    return (n, (h + sum(padding[0]) - kh) // strides[0] + 1, (w + sum(padding[1]) - kw) // strides[1] + 1, out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x, kernel, strides, padding):
    """NHWC × HWIO float32 convolution on oneDNN; `strides` (sh, sw), `padding` ((top, bottom), (left, right)).

    Call `load()` first (and only use it where it returned True).
    """
    shape = jax.ShapeDtypeStruct(_output_shape(x.shape, kernel.shape, strides, padding), x.dtype)
    return jax.ffi.ffi_call("OnednnConvForward", shape)(x, kernel, **_attributes(strides, padding))


def _conv_fwd(x, kernel, strides, padding):
    return conv(x, kernel, strides, padding), (x, kernel)


def _conv_bwd(strides, padding, residuals, cotangent):
    x, kernel = residuals
    attributes = _attributes(strides, padding)
    dx = jax.ffi.ffi_call("OnednnConvInputGradient", jax.ShapeDtypeStruct(x.shape, x.dtype))(
        cotangent, kernel, **attributes)
    dkernel = jax.ffi.ffi_call("OnednnConvWeightGradient", jax.ShapeDtypeStruct(kernel.shape, kernel.dtype))(
        x, cotangent, **attributes)
    return dx, dkernel


conv.defvjp(_conv_fwd, _conv_bwd)
