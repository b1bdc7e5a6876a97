"""cnn_jax.analysis.summary: per-layer shapes, parameters, FLOPs and receptive fields of traced models, and its command."""

import functools
import json
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SAME_BLOCKS, example_model

from cnn_jax import models
from cnn_jax.analysis import arithmetic, summary
from cnn_jax.kernels import dispatch


class PlainChain(nn.Module):
    """VALID convolutions on plain `lax.conv_general_dilated` (so XLA can count them), a 2×2 pool and a dense layer."""

    ones: bool = False

    @nn.compact
    def __call__(self, x, train=False):
        init = nn.initializers.ones if self.ones else nn.initializers.lecun_normal()
        x = nn.Conv(4, (3, 3), padding="VALID", kernel_init=init)(x)
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.Conv(4, (3, 3), padding="VALID", kernel_dilation=2, kernel_init=init)(x)
        x = nn.Conv(1, (3, 3), strides=2, padding="VALID", kernel_init=init)(x)
        return x if self.ones else nn.Dense(10)(x.reshape(x.shape[0], -1))


def test_convnet_has_29034_params_and_the_seed_shapes():
    result = summary.summarize(models.lookup("convnet")(num_classes=10), (28, 28, 1))
    assert result["total_params"] == 29_034
    assert result["output_shape"] == [1, 10]
    shapes = [(row["type"], row["output_shape"]) for row in result["layers"]]
    assert shapes == [("conv", [1, 28, 28, 16]), ("batch_norm", [1, 28, 28, 16]), ("max_pool", [1, 14, 14, 16]),
                      ("conv", [1, 14, 14, 32]), ("batch_norm", [1, 14, 14, 32]), ("max_pool", [1, 7, 7, 32]),
                      ("dense", [1, 10])]
    assert [row["params"] for row in result["layers"]] == [416, 32, 0, 12_832, 64, 0, 15_690]


def test_convnet_flops_are_twice_its_multiply_adds():
    result = summary.summarize(models.lookup("convnet")(num_classes=10), (28, 28, 1))
    macs = 5 * 5 * 1 * 16 * 28 * 28 + 5 * 5 * 16 * 32 * 14 * 14 + 7 * 7 * 32 * 10
    assert result["total_flops"] == 2 * macs == 5_676_160


def test_convnet_receptive_fields_grow_through_the_pools():
    layers = summary.summarize(models.lookup("convnet")(num_classes=10), (28, 28, 1))["layers"]
    # conv5 -> pool 2/2 -> conv5 -> pool 2/2 -> dense over the 7×7 map.
    assert [(row["receptive_field"], row["jump"]) for row in layers] == [
        (5, 1), (5, 1), (6, 2), (14, 2), (14, 2), (16, 4), (16 + 6 * 4, 4)]


@pytest.mark.slow  # compiles a model for XLA's cost analysis
def test_flops_are_xla_cost_analysis_less_bias_and_pooling_arithmetic():
    model, image = PlainChain(), jnp.zeros((1, 32, 32, 3))
    variables = model.init(jax.random.key(0), image)
    cost = jax.jit(model.apply).lower(variables, image).compile().cost_analysis()  # On CPU: a dict with "flops".
    result = summary.summarize(model, (32, 32, 3))
    biased = sum(arithmetic.activation_values(row["output_shape"])
                 for row in result["layers"] if row["type"] != "pool (inferred)")
    pooled = 15 * 15 * 4  # Each 2×2 average is 3 adds and a divide.
    # VALID padding: no padding taps, which XLA skips and the summary counts.
    assert cost["flops"] == result["total_flops"] + biased + 4 * pooled
    assert result["total_flops"] == pytest.approx(cost["flops"], rel=0.04)


def test_xla_counts_only_the_taps_that_fall_on_the_input():
    # 3×3, padding 1 over 8 rows: output rows see 2, 3, ..., 3, 2 real rows (22 taps), not 8·3 (24).
    for stride, taps in ((1, 2 + 6 * 3 + 2), (2, 2 + 3 * 3)):
        conv, image = nn.Conv(4, (3, 3), strides=stride, padding=1, use_bias=False), jnp.zeros((1, 8, 8, 2))
        variables = conv.init(jax.random.key(0), image)
        cost = jax.jit(conv.apply).lower(variables, image).compile().cost_analysis()
        assert cost["flops"] == 2 * 2 * 4 * taps**2
        assert summary.summarize(conv, (8, 8, 2))["total_flops"] == 2 * 2 * 4 * 9 * (8 // stride) ** 2


@pytest.mark.parametrize("name, shape", [("convnet", (28, 28, 1)), ("lenet5", (32, 32, 1)), ("resnet18", (32, 32, 3)),
                                         ("vgg11", (64, 64, 3)), ("convnet1d", (40, 1)), ("textcnn", (64,)),
                                         pytest.param("googlenet", (64, 64, 3), marks=pytest.mark.slow)])
def test_zoo_flops_are_xla_cost_analysis_plus_padding_taps_within_15_percent(name, shape):
    """XLA's count of the compiled forward pass, on XLA's own convolutions (it cannot see into cnn_jax's kernels).

    The summary counts every tap, padding included (the usual convention);
    XLA counts only taps on real pixels (test above) and adds BatchNorm,
    activations, poolings and biases. At these sizes the first outweighs the
    second: XLA's count is up to 14% lower (2-7% at 224×224).
    """
    model = example_model(name)[0]
    example = models.input_spec(model, shape)
    image = jnp.zeros(example.shape, example.dtype)
    variables = jax.eval_shape(model.init, jax.random.key(0), image)
    with dispatch.xla_only():
        xla = jax.jit(model.apply).lower(variables, image).compile().cost_analysis()["flops"]
    assert xla == pytest.approx(summary.summarize(model, shape)["total_flops"], rel=0.15)


def test_receptive_field_matches_gradient_support_of_an_all_ones_chain():
    model, image = PlainChain(ones=True), jnp.zeros((1, 48, 48, 1))
    variables = model.init(jax.random.key(0), image)
    rows = []
    for unit in (0, 1):
        grad = jax.grad(lambda x: model.apply(variables, x)[0, unit, 0, 0])(image)
        rows.append(np.flatnonzero(np.asarray(grad[0, :, 0, 0]) > 0))
    last = summary.summarize(model, (48, 48, 1))["layers"][-1]
    assert (last["receptive_field"], last["jump"]) == (rows[0][-1] - rows[0][0] + 1, rows[1][0] - rows[0][0])
    assert (last["receptive_field"], last["jump"]) == arithmetic.receptive_field([(3, 1, 1), (2, 2, 1), (3, 1, 2),
                                                                                   (3, 2, 1)])


def test_branching_models_take_the_largest_field_over_branches():
    layers = summary.summarize(models.lookup("resnet18")(num_classes=10), (32, 32, 3))["layers"]
    by_name = {row["name"]: row for row in layers}
    # A block's second conv sees the first's field + 2 (3×3, jump 1); the next block starts from that, not the shortcut.
    assert by_name["stage1_block1/ConvBN_1/Conv_0"]["receptive_field"] == 7
    assert by_name["stage1_block2/ConvBN_0/Conv_0"]["receptive_field"] == 9


def _positive_averaging(variables):
    """Variables (from their shapes) making every layer a positive average: kernels 1/fan-in, biases 0, BatchNorm the identity."""

    def leaf(path, value):
        name = path[-1].key
        if name == "kernel":
            return jnp.full(value.shape, 1 / np.prod(value.shape[:-1]), value.dtype)
        return jnp.ones_like(value) if name in ("scale", "var") else jnp.zeros_like(value)

    return jax.tree_util.tree_map_with_path(leaf, variables)


def _measured_fields(model, height, width=None):
    """{conv path: (field, jump)} along the height (along a sequence without `width`), measured by raising one
    input row (position) at a time.

    With positive averaging layers (ReLU, max and average pooling keep signs)
    and an all-zero image, an output unit is positive exactly when the raised
    row lies in its receptive field, padding and branches included. Fields
    cut by the image's edges are left out.
    """
    spatial = (height,) if width is None else (height, width)
    images = jnp.eye(height).reshape(height, height, *[1] * len(spatial)) * jnp.ones((height, *spatial, 3))
    variables = _positive_averaging(jax.eval_shape(model.init, jax.random.key(0), images[:1]))
    capture = functools.partial(model.apply, capture_intermediates=lambda module, _: isinstance(module, nn.Conv))
    _, state = jax.jit(capture)(variables, images)
    fields = {}
    for path, outputs in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]:
        keys = [getattr(part, "key", None) for part in path]
        outputs = np.asarray(outputs)
        if outputs.ndim != len(spatial) + 2 or outputs.shape[1] < 2:  # ConvWithoutBias's bias; no second row.
            continue
        middle, column = outputs.shape[1] // 2, [outputs.shape[2] // 2] * (len(spatial) - 1)
        rows = [np.flatnonzero(outputs[(slice(None), i, *column, 0)] > 0) for i in (middle, middle + 1)]
        if rows[0][0] > 0 and rows[1][-1] < height - 1:
            name = "/".join(keys[: keys.index("__call__")])
            fields[name] = (rows[0][-1] - rows[0][0] + 1, rows[1][0] - rows[0][0])
    return fields


@pytest.mark.parametrize("name", ["alexnet", "bottleneck", "factorised", "lenet5", "resnet18",
                                  "c8k3-maxk3s2p1-c8k3s2p1-avgk3s1p1-c8k3-l2k3s2-c8k3",
                                  *(pytest.param(name, marks=pytest.mark.slow)
                                    for name in ("allconv", "googlenet", "resnet50", "vgg11_bn"))])
def test_receptive_fields_match_the_measured_ones_through_padded_pools_and_branches(name):
    # A model of each zoo family (every one passes; these keep the suite short): overlapping pools, strided
    # convolutions, ResNet's 3×3/2 pad-1 stem pool and shortcuts, GoogLeNet's ceil-mode pools and Inception's
    # size-keeping 3×3/1 branch.
    model = models.lookup(name)(num_classes=10)
    measured = _measured_fields(model, 96, 64)
    rows = {row["name"]: (row["receptive_field"], row["jump"])
            for row in summary.summarize(model, (96, 64, 3))["layers"] if row["type"] == "conv"}
    assert len(measured) >= 2 and {path: rows[path] for path in measured} == measured


@pytest.mark.parametrize("name", ["convnet1d", "c8k5-maxk3s2p1-c8k3s2p1-avgk3s1p1-c8k3-l2k3s2-c8k3:1d"])
def test_receptive_fields_along_a_sequence_match_the_measured_ones(name):
    model = models.lookup(name)(num_classes=10)
    measured = _measured_fields(model, 96)
    rows = {row["name"]: (row["receptive_field"], row["jump"])
            for row in summary.summarize(model, (96, 3))["layers"] if row["type"] == "conv"}
    assert len(measured) >= 3 and {path: rows[path] for path in measured} == measured


def test_every_pooling_of_the_pooling_module_is_a_row():
    spec = "c4-maxk3s2p1-c4-avgk3s1p1-c4-l2-c4-gaussiank3s1p1-c4-mixed-c4-stochastic-c4-fractional-c4-spp"
    layers = summary.summarize(models.lookup(spec)(num_classes=10), (64, 64, 1))["layers"]
    pools = [(row["type"].removeprefix(row["name"].split("/")[0] + "/"), row["kernel"], row["stride"])
             for row in layers if row["type"] not in ("conv", "batch_norm", "dense")]
    assert pools == [
        ("max_pool", [3, 3], [2, 2]), ("avg_pool", [3, 3], [1, 1]), ("lp_pool", [2, 2], [2, 2]),
        ("gaussian_pool", [3, 3], [1, 1]), ("max_pool", [2, 2], [2, 2]), ("avg_pool", [2, 2], [2, 2]),
        ("stochastic_pool", [2, 2], [2, 2]), ("fractional_max_pool", [2, 2], [2, 2]), ("spatial_pyramid_pool", None, None)]
    # The pyramid, and the dense layer after it, see the whole map.
    assert layers[-1]["receptive_field"] == layers[-2]["receptive_field"] > layers[-3]["receptive_field"]


@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow) if name in SAME_BLOCKS else name
                                  for name in sorted(models.MODELS)])  # The deeper ones repeat their blocks.
def test_every_zoo_model_sums_to_count_params(name):
    model, shape = example_model(name)
    variables = jax.eval_shape(model.init, jax.random.key(0), models.input_spec(model, shape))
    result = summary.summarize(model, shape)
    assert result["total_params"] == arithmetic.count_params(variables["params"])
    assert sum(row["params"] for row in result["layers"]) == result["total_params"]
    assert result["output_shape"] == [1, 10]


def test_a_layers_conv_is_one_row_with_its_output_in_the_run_dtype():
    layers = summary.summarize(models.lookup("lenet5")(num_classes=10), (32, 32, 1), "bfloat16")["layers"]
    rows = [row for row in layers if row["name"] == "C1"]  # layers.Conv's super().__call__ (flax's) is no row.
    assert len(rows) == 1 and rows[0]["type"] == "conv" and rows[0]["output_shape"] == [1, 28, 28, 6]
    assert rows[0]["memory"] == 28 * 28 * 6 * 2  # bfloat16, not the float32 sum flax's call returns inside.

def _run(*args):
    return subprocess.run([sys.executable, "-m", "experiments.summary", *args], capture_output=True, text=True)


def test_json_output_parses_with_every_field():
    process = _run("convnet", "--json")
    assert process.returncode == 0
    result = json.loads(process.stdout)
    assert result["total_params"] == 29_034 and result["output_shape"] == [1, 10]
    fields = {"name", "type", "kernel", "stride", "padding", "output_shape", "params", "memory", "flops",
              "receptive_field", "jump", "patch_matrix", "kernel_matrix", "im2col_bytes"}
    assert all(set(row) == fields for row in result["layers"])
    second = result["layers"][3]  # 5×5 over 16 channels at 14×14, 32 filters; float32.
    assert (second["patch_matrix"], second["kernel_matrix"]) == ([400, 196], [32, 400])
    assert second["im2col_bytes"] == 4 * (400 * 196 + 32 * 400) and result["layers"][1]["patch_matrix"] is None


def test_the_im2col_table_adds_each_convolutions_matrices():
    lines = summary.format_table(summary.summarize(models.lookup("convnet")(num_classes=10), (28, 28, 1)),
                                 im2col=True).splitlines()
    assert lines[0].split()[-3:] == ["patch_matrix", "kernel_matrix", "im2col_bytes"]
    assert lines[1].split()[-3:] == ["25×784", "16×25", "80,000"] and lines[2].split()[-1] == "1"


@pytest.mark.parametrize("args", [("nope",), ("convnet", "--num_classes=x"),
                                  *(pytest.param(args, marks=pytest.mark.slow)  # The same path as those above.
                                    for args in (("convnet", "--input_shape=28,28"), ("convnet", "--input_shape=1,1,1"),
                                                 ()))])
def test_bad_input_exits_2_with_one_line(args):
    process = _run(*args)
    assert process.returncode == 2
    assert process.stderr.startswith("error: ") and process.stderr.count("\n") == 1
