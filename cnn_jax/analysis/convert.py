"""FC -> conv conversion: a trained classifier's dense head as convolutions, to slide it over larger images.

A model whose output is a `layers.DenseHead` over an H×W×C feature map (the
seed `ConvNet`: 7×7×32 at 28×28 input) computes the same logits when the
head's first Dense layer is an H×W convolution (VALID padding) with its kernel
reshaped from [H·W·C, out] to [H, W, C, out], and every later Dense layer is a
1×1 convolution: Flax's flatten is a row-major reshape of NHWC, so row
(h·W + w)·C + c of the kernel multiplies feature (h, w, c). On an image larger
than the training size, entry (i, j) of the resulting score map is the head
applied to the feature window at (i, j): the classifier at input offset
(i·s, j·s), where s is the body's effective stride (`effective_stride`; 4 for
ConvNet). It equals the original model on that 28×28 crop exactly when no
layer of the body pads (see tests/test_convert.py): padding sees zeros at the
crop's border where the large image has real pixels or features.

    conv_variables, stride = to_fully_convolutional(model, variables, (28, 28, 1))
    scores = apply_fully_convolutional(model, conv_variables, images)  # [b, h', w', classes]

The body's variables are used unchanged; only the head's Dense kernels change shape.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cnn_jax.errors import UserError
from cnn_jax.layers import DenseHead

# Input growth for measuring the stride: any effective stride 2^a·3^b·5^c with a ≤ 12, b ≤ 4, c ≤ 2 divides it.
_PROBE = 2**12 * 3**4 * 5**2


def _is_head_call(context) -> bool:
    return isinstance(context.module, DenseHead) and context.method_name == "__call__"


def _head_probe(model: nn.Module, variables, image_shape: tuple[int, int, int]) -> dict:
    """Where the model's DenseHead is and what it sees at `image_shape` (H, W, C), from shapes alone.

    Returns {'path': the head's variable path, 'features': (H', W', C') of its
    input, 'dense': its Dense layers' names in order}, or raises UserError if
    the model's output is not one DenseHead over a feature map.
    """
    heads = []

    def record(next_fun, args, kwargs, context):
        if not _is_head_call(context):
            return next_fun(*args, **kwargs)
        module = context.module
        # A stand-in for the logits: the head's kernel fits only the training size, and the body is what is probed.
        out = jnp.zeros((args[0].shape[0], module.num_classes))
        dense = [f"Dense_{i}" for i in range(len(module.hidden) + 1)]
        heads.append({"path": module.scope.path, "features": args[0].shape[1:], "dense": dense, "out": out})
        return out

    def logits(images):
        with nn.intercept_methods(record):
            out = model.apply(variables, images, train=False)
        if len(heads) != 1 or heads[0].pop("out") is not out:
            raise UserError(f"{type(model).__name__} does not end in one layers.DenseHead (found {len(heads)}); "
                            "FC -> conv conversion needs a convolutional body followed by a DenseHead")
        return out

    jax.eval_shape(logits, jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
    head = heads[0]
    if len(head["features"]) != 3:
        raise UserError(f"{type(model).__name__}'s DenseHead sees features of shape {head['features']}, not a "
                        "[height, width, channels] map; it has no spatial extent to slide over")
    return head


def effective_stride(model: nn.Module, variables, image_shape: tuple[int, int, int]) -> tuple[int, int]:
    """(s_h, s_w): input pixels between neighbouring positions of the head's feature map (product of strides).

    Found from shapes: growing the input by D rows grows the feature map by D / s_h rows when s_h divides D.
    """
    height, width, channels = image_shape
    base = _head_probe(model, variables, image_shape)["features"]
    taller = _head_probe(model, variables, (height + _PROBE, width, channels))["features"]
    wider = _head_probe(model, variables, (height, width + _PROBE, channels))["features"]
    if taller[0] == base[0] or wider[1] == base[1]:
        raise UserError(f"{type(model).__name__}'s DenseHead sees {base[0]}×{base[1]} features whatever the image "
                        "size (an adaptive or global pooling before it?), so there is nothing to slide over; "
                        "build the model without that pooling (AlexNet and VGG: grid=None)")
    return _PROBE // (taller[0] - base[0]), _PROBE // (wider[1] - base[1])


def _set_path(tree: dict, path: tuple[str, ...], value) -> dict:
    """A copy of the nested dict `tree` with `tree[path[0]]...[path[-1]] = value`."""
    if not path:
        return value
    return {**tree, path[0]: _set_path(tree[path[0]], path[1:], value)}


def _get_path(tree: dict, path: tuple[str, ...]):
    for name in path:
        tree = tree[name]
    return tree


def to_fully_convolutional(model: nn.Module, variables, image_shape: tuple[int, int, int]) -> tuple[Any, tuple[int, int]]:
    """The variables of `model` with its DenseHead's kernels as convolution kernels, and the body's stride.

    `image_shape` (H, W, C) is the training input size. The head's first
    kernel [H'·W'·C', out] becomes [H', W', C', out] (H'×W'×C' is the feature
    map it sees); later kernels [in, out] become [1, 1, in, out]; biases and
    every other variable are the same arrays. Returns (conv_variables,
    (s_h, s_w)) for `apply_fully_convolutional`.
    """
    head = _head_probe(model, variables, image_shape)
    params = _get_path(variables["params"], head["path"])
    converted = {}
    for index, name in enumerate(head["dense"]):
        kernel = params[name]["kernel"]
        shape = head["features"] if index == 0 else (1, 1, kernel.shape[0])
        converted[name] = {"kernel": kernel.reshape(*shape, kernel.shape[1]), "bias": params[name]["bias"]}
    conv_variables = {**variables, "params": _set_path(variables["params"], head["path"], converted)}
    return conv_variables, effective_stride(model, variables, image_shape)


def _conv_head(head: DenseHead, features: jnp.ndarray) -> jnp.ndarray:
    """`head` (bound to converted variables) as convolutions: [b, h, w, c] -> [b, h - H' + 1, w - W' + 1, classes]."""
    params = head.variables["params"]
    x = features
    for index in range(len(head.hidden) + 1):
        if index:
            x = head.activation(x)  # Dropout is the identity in evaluation.
        layer = params[f"Dense_{index}"]
        x = lax.conv_general_dilated(x, layer["kernel"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        x = x + layer["bias"]
    return x


def apply_fully_convolutional(model: nn.Module, conv_variables, images: jnp.ndarray) -> jnp.ndarray:
    """Class logits at every position: `[b, h, w, c]` -> `[b, h', w', num_classes]` (evaluation mode).

    At the training size h' = w' = 1 and the logits are `model.apply`'s; on a
    larger image, entry (i, j) is the classifier at input offset (i·s_h, j·s_w).
    """

    def conv_head(next_fun, args, kwargs, context):
        return _conv_head(context.module, args[0]) if _is_head_call(context) else next_fun(*args, **kwargs)

    with nn.intercept_methods(conv_head):
        return model.apply(conv_variables, images, train=False)

