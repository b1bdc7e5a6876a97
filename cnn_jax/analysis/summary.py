"""Per-layer summary of a model: shapes, parameters, FLOPs, activation memory and receptive fields.

    summarize(models.lookup("convnet")(num_classes=10), (28, 28, 1))   # rows and totals, JSON-ready
    print(format_table(summary))                                       # the table `experiments.summary` prints

The model is traced once with `jax.eval_shape` inside `nn.intercept_methods`
and `pooling.watch`, so nothing is allocated. Rows are the `nn.Conv`,
`nn.Dense`, `nn.BatchNorm` and `nn.Embed` calls and the `cnn_jax.layers.pooling` poolings (named
after the module that applies them, e.g. `stem/max_pool_0`), in call order.
A pooling written outside `cnn_jax.layers.pooling` (say `nn.avg_pool`) is invisible
to both, so a "pool (inferred)" row stands wherever the map shrinks without a
visible layer: stride s = round(in/out), window max(s, in − (out − 1)·s),
exact for unpadded windows, blind to padding and to poolings that keep the
size.

Models of sequences (signals `[length, channels]`, or token ids `[length]`)
are summarised alike: kernels, strides and fields are along the length, in
positions (time steps, or tokens).

Receptive fields (along the height) follow the traced arrays by identity:
each layer extends the field of the array it consumes; a module's output
(a ResNet block after its addition, an Inception block after its
concatenation) takes the largest field of the layers inside it, i.e. the
largest over branches. An array made outside any layer (an activation, an
addition, a reshape) takes the field of the latest known array with the same
channel count (else the latest known array); a dense layer on a flattened map
and a global pooling see the whole map. Adaptive and fractional poolings,
whose windows vary, count their widest window and largest step.

A convolution's row also gives the two matrices of its im2col form
(`arithmetic.im2col_shapes`: the patch matrix [k·k·C_in × positions] and the
kernel matrix [C_out × k·k·C_in], one image) and their bytes; `format_table`
shows them with `im2col=True` (`experiments.summary --im2col`).

Memory is the forward activation of each row's output in bytes (in the
dtype the model computes in: float32, or bfloat16 with mixed precision,
`cnn_jax.models.precision`; one image); training keeps it and its gradient, twice that
(`arithmetic.activation_bytes`). FLOPs are 2 × the multiply-adds of
convolutions and dense layers only (BatchNorm, activations, pooling and bias
additions are not counted), padding taps included, the usual convention.
XLA's cost analysis of the compiled forward pass (on XLA's convolutions)
counts only taps on real pixels and adds the elementwise work; on the zoo it
comes out 2-14% lower (the most on small inputs, where padding is a larger
share), and tests hold it within 15%.
"""

import collections
import functools

import flax.linen as nn
import jax
import numpy as np

from cnn_jax import models
from cnn_jax.analysis import arithmetic
from cnn_jax.layers import pooling
from cnn_jax.models import precision


def _per_axis(value, dims: int) -> tuple[int, ...]:
    return (value,) * dims if isinstance(value, int) else tuple(value)


def _is_map(array) -> bool:
    """Whether `array` is a map `[b, h, w, c]` or a sequence `[b, l, c]` (not vectors `[b, features]`)."""
    return array.ndim >= 3


def _explicit_padding(padding, dims: int) -> tuple[int, ...] | None:
    """Per-side zeros of a Flax conv's `padding` along each spatial axis, or None for "SAME"-like or asymmetric
    padding."""
    if padding == "VALID":
        return (0,) * dims
    if isinstance(padding, int):
        return (padding,) * dims
    if isinstance(padding, str) or not all(isinstance(p, (tuple, list)) and p[0] == p[1] for p in padding):
        return None
    return tuple(p[0] for p in padding)


class _Tracer:
    """The interceptor's state: the rows so far, and the (receptive field, jump) of every array seen."""

    def __init__(self):
        self.rows = []
        self.known = []  # (array, (size, jump)), in the order seen; holding the arrays keeps their ids unique.
        self.fields = {}  # id(array) -> (size, jump)
        self.scope = []  # The paths of the module calls under way, innermost last.
        self.pools = collections.Counter()  # (scope, kind) -> poolings named so far.

    def remember(self, array, field):
        self.known.append((array, field))
        self.fields[id(array)] = field
        return field

    def row(self, name, kind, output, field, kernel=None, stride=None, padding=None, flops=0):
        self.rows.append(dict(name=name, type=kind, kernel=kernel, stride=stride, padding=padding,
                              output_shape=list(output.shape), params=0,
                              memory=arithmetic.activation_bytes(output.shape, output.dtype), flops=flops,
                              receptive_field=field[0], jump=field[1], patch_matrix=None, kernel_matrix=None,
                              im2col_bytes=None))

    def extend(self, name, source, field, array):
        """The field of `array` made from `source` outside any module: a pooling inferred from the height change."""
        if _is_map(array) and array.ndim == source.ndim and array.shape[1] < source.shape[1]:
            size, out, dims = source.shape[1], array.shape[1], array.ndim - 2
            stride = max(1, round(size / out))
            window = max(stride, size - (out - 1) * stride)
            field = arithmetic.receptive_field([(window, stride, 1)], field)
            self.row(name, "pool (inferred)", array, field, kernel=[window] * dims, stride=[stride] * dims)
        elif array.ndim == 2 and _is_map(source):  # Flattened or globally pooled: all of the map.
            field = arithmetic.receptive_field([(source.shape[1], 1, 1)], field)
        return field

    def field_of(self, name, array):
        """The field of `array`, found by identity, or derived from the latest related known array."""
        if id(array) in self.fields:
            return self.fields[id(array)]
        if not self.known:  # The model's input.
            return self.remember(array, (1, 1))
        same = [k for k in self.known if k[0].shape[-1] == array.shape[-1]
                and (array.ndim == 2 or k[0].ndim == array.ndim and k[0].shape[1] >= array.shape[1])]
        source, field = (same or self.known)[-1]
        return self.remember(array, self.extend(f"{name}/input_pool", source, field, array))

    def pooled(self, kind, x, out, window, stride, padding):
        """A `pooling.watch` report: a row named after the module applying the pooling, and its output's field."""
        scope = self.scope[-1] if self.scope else ""
        name = f"{scope}/{kind}_{self.pools[scope, kind]}".lstrip("/")
        self.pools[scope, kind] += 1
        field = self.field_of(name, x)
        dims = x.ndim - 2
        if isinstance(padding, int):
            padding = [[padding, padding]] * dims
        if window is None:  # The whole map.
            field = arithmetic.receptive_field([(x.shape[1], 1, 1)], field)
            self.row(name, kind, out, field)
        else:
            field = arithmetic.receptive_field([(window, stride, 1)], field)
            self.row(name, kind, out, field, kernel=[window] * dims, stride=[stride] * dims, padding=padding)
        self.remember(out, field)

    def __call__(self, next_fun, args, kwargs, context):
        path = "/".join(context.module.path)
        if self.scope and self.scope[-1] == path:  # A subclass's super().__call__: part of the call under way.
            return next_fun(*args, **kwargs)
        self.scope.append(path)
        try:
            return self.layer(next_fun, args, kwargs, context)
        finally:
            self.scope.pop()

    def layer(self, next_fun, args, kwargs, context):
        """Runs one intercepted module call, adding its row (convolution, dense, BatchNorm) or its output's field."""
        module, name = context.module, self.scope[-1] or "model"
        x = args[0] if args and isinstance(args[0], jax.Array) else None
        field = self.field_of(name, x) if x is not None else None
        if isinstance(module, nn.Conv) and x is not None:
            dims = x.ndim - 2
            padding = _explicit_padding(module.padding, dims)
            if padding is not None:
                for size, k, s, p, d in zip(x.shape[1:-1], module.kernel_size, _per_axis(module.strides, dims),
                                            padding, _per_axis(module.kernel_dilation or 1, dims)):
                    arithmetic.conv_output_size(size, k, s, p, d, layer=name)
        start = len(self.known)
        result = out = next_fun(*args, **kwargs)
        if isinstance(module, nn.Conv) and isinstance(out, tuple):
            out = out[0]  # layers.ConvWithoutBias's (convolution, bias): the convolution's output.
        if not isinstance(out, jax.Array) or context.method_name != "__call__":
            return result
        if isinstance(module, nn.Conv):
            dims, kernel = out.ndim - 2, list(module.kernel_size)
            strides = list(_per_axis(module.strides, dims))
            field = arithmetic.receptive_field([(kernel[0], strides[0], _per_axis(module.kernel_dilation or 1, dims)[0])],
                                               field)
            spatial = out.shape[1:-1]  # A 1-D convolution counts as one of width 1 (`arithmetic.conv_flops`).
            flops = arithmetic.conv_flops(kernel[0], kernel[1] if dims == 2 else 1,
                                          x.shape[-1] // module.feature_group_count, module.features, spatial[0],
                                          spatial[1] if dims == 2 else 1) * out.shape[0]
            padding = module.padding if isinstance(module.padding, (str, int)) else [list(p) for p in module.padding]
            self.row(name, "conv", out, field, kernel=kernel, stride=strides, padding=padding, flops=flops)
            matrices = arithmetic.im2col_shapes(kernel, x.shape[-1] // module.feature_group_count, module.features,
                                                spatial)
            itemsize = out.dtype.itemsize
            self.rows[-1].update(matrices, im2col_bytes=itemsize * sum(int(np.prod(m)) for m in matrices.values()))
        elif isinstance(module, nn.Dense):
            self.row(name, "dense", out, field, flops=arithmetic.dense_flops(x.shape[-1], module.features) * out.shape[0])
        elif isinstance(module, nn.BatchNorm):
            self.row(name, "batch_norm", out, field)
        elif isinstance(module, nn.Embed):
            self.row(name, "embedding", out, field)
        elif id(out) in self.fields:  # A block ending in a known layer (a ConvBlock's pooling).
            return out
        else:  # A block: the largest field inside it (over branches), then any unseen pooling after its last layer.
            inside = self.known[start:]
            if inside:
                source, field = max(inside, key=lambda known: known[1][0])
                field = self.extend(f"{name}/pool", source, field, out)
            elif x is not None:
                field = self.extend(f"{name}/pool", x, field, out)
            else:
                return out
        self.remember(out, field)
        return result


def summarize(model: nn.Module, input_shape, dtype: str = "float32") -> dict:
    """Per-layer rows and totals of `model` on one input of `input_shape` (height, width, channels; or a
    sequence's length and channels, or a text's length for a model of token ids), computing in `dtype`
    ("float32", or "bfloat16": mixed precision, whose activations take half the memory).

    Returns a JSON-ready dict: `layers`, a list of rows with name (module
    path), type ("conv", "dense", "batch_norm", a pooling's name such as
    "max_pool", "embedding", or "pool (inferred)"), kernel,
    stride, padding, output_shape `[1, ...]`, params, memory (forward bytes),
    flops, receptive_field and jump (input pixels, along the height),
    patch_matrix, kernel_matrix and im2col_bytes (convolutions; None for other
    rows); and
    `total_params` (every trainable scalar), `total_flops`, `activation_bytes`
    (forward, the rows' outputs summed), `training_activation_bytes` (× 2) and
    `output_shape`. Raises `UserError` when a convolution or pooling cannot
    fit its input.
    """
    tracer = _Tracer()
    image = models.input_spec(model, tuple(input_shape))
    variables = jax.eval_shape(functools.partial(model.init, jax.random.key(0)), image)
    with nn.intercept_methods(tracer), pooling.watch(tracer.pooled):
        out = jax.eval_shape(lambda v, x: precision.apply(model.apply, v, x, dtype), variables, image)
    params = variables.get("params", {})
    for row in tracer.rows:
        subtree = params if row["type"] in ("conv", "dense", "batch_norm", "embedding") else {}
        for part in row["name"].split("/"):
            subtree = subtree.get(part, {})
        row["params"] = arithmetic.count_params(subtree)
    forward = sum(row["memory"] for row in tracer.rows)
    return dict(layers=tracer.rows, total_params=arithmetic.count_params(params),
                total_flops=sum(row["flops"] for row in tracer.rows), activation_bytes=forward,
                training_activation_bytes=2 * forward, output_shape=list(out.shape))


def format_table(summary: dict, im2col: bool = False) -> str:
    """The summary as an aligned text table with a totals line; `im2col` adds each convolution's im2col matrices
    and their bytes."""
    columns = ("name", "type", "kernel", "stride", "padding", "output_shape", "params", "memory", "flops",
               "receptive_field", "jump") + (("patch_matrix", "kernel_matrix", "im2col_bytes") if im2col else ())

    def cell(value):
        if isinstance(value, list):  # A shape, or per-dimension settings; (before, after) padding pairs as "b/a".
            return "×".join("/".join(map(str, v)) if isinstance(v, list) else str(v) for v in value)
        return f"{value:,}" if isinstance(value, int) else "" if value is None else str(value)

    rows = [columns] + [tuple(cell(row[c]) for c in columns) for row in summary["layers"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))).rstrip()
             for r in rows]
    lines.append(f"total: {summary['total_params']:,} params, {summary['total_flops']:,} FLOPs per image, "
                 f"{summary['activation_bytes']:,} activation bytes forward "
                 f"({summary['training_activation_bytes']:,} training), output {cell(summary['output_shape'])}")
    return "\n".join(lines)
