r"""The seed documents' numbers, recomputed from cnn_jax's own modules: which agree and which do not.

    python -m experiments.seed_numbers           # an aligned text table
    python -m experiments.seed_numbers --json    # the same rows as a JSON list

Each row is a function returning a `Row`: the claim as the seed states it,
the seed file (`001` is `seeds/001_*.txt`), the value cnn_jax computes and a
verdict, "agrees" or "differs: <why>". Values come from real Flax modules
traced with `jax.eval_shape` (directly or through `summary.summarize`), so
nothing is allocated, not even the 10¹² weights of row `fc_1000x1000`; where
the seed gives a formula, `cnn_jax.analysis.arithmetic` is the cross-check.
"""

import json
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from cnn_jax import models
from cnn_jax.analysis import arithmetic
from cnn_jax.analysis.summary import summarize
from cnn_jax.layers import Conv, ConvBlock
from cnn_jax.layers.pooling import max_pool_2x2
from experiments import cli

flags.DEFINE_bool("json", False, "Print the rows as one JSON list instead of a table.")
FLAGS = flags.FLAGS


class Row(NamedTuple):
    """One claim of a seed document, the value cnn_jax computes for it, and whether they agree."""

    claim: str
    source: str
    computed: Any
    verdict: str


def verdict(stated, computed, why: str) -> str:
    """"agrees" when the seed's value equals cnn_jax's, else "differs: why"."""
    return "agrees" if stated == computed else f"differs: {why}"


def variables_of(module: nn.Module, input_shape: Sequence[int]) -> dict:
    """The shapes of `module`'s variables on one input of `input_shape` (no batch axis), via `jax.eval_shape`."""
    x = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    return jax.eval_shape(module.init, jax.random.key(0), x)


def conv_block(features: int, kernel: int, padding: int, stride: int = 1, pool=None) -> ConvBlock:
    """A `ConvBlock` with only the convolution's arithmetic: no BatchNorm, so its parameters are the conv's."""
    return ConvBlock(features, kernel, strides=stride, padding=padding, batch_norm=False, pool=pool)


def output_shape(module: nn.Module, input_shape: Sequence[int]) -> tuple[int, ...]:
    """`module`'s output shape `(height, width, channels)` on one input of `input_shape`."""
    return tuple(summarize(module, input_shape)["output_shape"][1:])


def last_feature_map(name: str, input_shape: Sequence[int]) -> tuple[int, ...]:
    """(height, width, channels) of zoo model `name`'s last 4-D activation before its classifier."""
    rows = summarize(models.lookup(name)(num_classes=1000), input_shape)["layers"]
    return tuple([r for r in rows if len(r["output_shape"]) == 4][-1]["output_shape"][1:])


def block_weights_per_c2(name: str, width: int = 64) -> float:
    """Convolution weights of zoo variant `name`'s block (C -> C, width C) divided by C²."""
    params = variables_of(models.lookup(name)(num_classes=10, width=width), (8, 8, 3))["params"]["block"]
    kernels = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(params) if path[-1].key == "kernel"]
    return sum(k.size for k in kernels) / width**2


# Rows, in the order of the seed documents' arguments.

def conv_32x32x3_5x5() -> Row:
    computed = output_shape(conv_block(1, 5, padding=0), (32, 32, 3))
    assert computed[:2] == (arithmetic.conv_output_size(32, 5),) * 2
    return Row("32×32×3 with one 5×5×3 filter, S=1, P=0 -> 28×28×1", "001", computed,
               verdict((28, 28, 1), computed, "output size differs"))


def filter_5x5x3_weights() -> Row:
    params = variables_of(Conv(1, (5, 5)), (32, 32, 3))["params"]
    computed = {"weights": params["kernel"].size, "bias": params["bias"].size}
    return Row("a 5×5 receptive field on 32×32×3: 5·5·3 = 75 weights + 1 bias per neuron", "004", computed,
               verdict({"weights": 75, "bias": 1}, computed, "weight count differs"))


def params_760() -> Row:
    computed = summarize(conv_block(10, 5, padding=2), (32, 32, 3))["total_params"]
    assert computed == arithmetic.conv_params(5, 5, 3, 10)
    return Row("32×32×3, 10 filters 5×5, S=1, P=2: (5·5·3 + 1)·10 = 760 parameters", "001", computed,
               verdict(760, computed, "parameter count differs"))


def memory_10240() -> Row:
    row = summarize(conv_block(10, 5, padding=2), (32, 32, 3))["layers"][0]
    computed = {"values": arithmetic.activation_values(row["output_shape"]), "bytes": row["memory"]}
    return Row("a 32×32×10 output takes 32·32·10 = 10,240 bytes", "001", computed,
               verdict({"values": 10240, "bytes": 10240}, computed, "10,240 is the number of values; in float32 that is 40,960 bytes"))


def _conv3x3_output(claim: str, source: str, size: int, padding: int, expected: tuple[int, int]) -> Row:
    """A claimed output size of a 3×3 convolution, stride 1, on a size×size×1 input."""
    computed = output_shape(conv_block(1, 3, padding=padding), (size, size, 1))[:2]
    return Row(claim, source, computed, verdict(expected, computed, "output size differs"))


def padding_4x4() -> Row:
    return _conv3x3_output("4×4 with 3×3, P=0, S=1 -> 2×2", "001", 4, 0, (2, 2))


def padding_5x5_valid() -> Row:
    return _conv3x3_output("5×5 with 3×3, no padding -> 3×3", "003", 5, 0, (3, 3))


def padding_5x5_same() -> Row:
    return _conv3x3_output("5×5 with 3×3, P=1 -> 5×5 (same size)", "003", 5, 1, (5, 5))


def padding_7x7() -> Row:
    return _conv3x3_output("7×7×1 with 3×3 -> 5×5", "003", 7, 0, (5, 5))


def pool_4x4() -> Row:
    computed = jax.eval_shape(max_pool_2x2, jax.ShapeDtypeStruct((1, 4, 4, 1), jnp.float32)).shape[1:3]
    assert computed == (arithmetic.pool_output_size(4, 2),) * 2
    return Row("4×4 max-pooled with 2×2 -> 2×2", "003", computed, verdict((2, 2), computed, "output size differs"))


def fc_1000x1000() -> Row:
    computed = variables_of(nn.Dense(10**6), (10**6,))["params"]["kernel"].size
    assert computed + 10**6 == arithmetic.dense_params(10**6, 10**6)
    return Row("1000×1000 image fully connected to 10⁶ hidden units: 10¹² weights", "001", computed,
               verdict(10**12, computed, "weight count differs"))


def local_10x10() -> Row:
    computed = variables_of(nn.ConvLocal(1, (10, 10), padding="SAME"), (1000, 1000, 1))["params"]["kernel"].size
    return Row("the same 10⁶ units, each on its own 10×10 window (locally connected, nn.ConvLocal): 10⁸ weights",
               "001", computed, verdict(10**8, computed, "weight count differs"))


def conv_10x10() -> Row:
    computed = variables_of(Conv(1, (10, 10), padding="SAME"), (1000, 1000, 1))["params"]["kernel"].size
    return Row("the seed calls it a 10×10 convolution with 10⁸ parameters", "001", computed,
               verdict(10**8, computed, "a convolution shares one 10×10 filter over all positions: 100 weights; "
                                        "10⁸ is the unshared, locally connected layer"))


def two_3x3_see_5x5() -> Row:
    computed = summarize(nn.Sequential([conv_block(1, 3, 0) for _ in range(2)]), (9, 9, 1))["layers"][-1]["receptive_field"]
    return Row("two stacked 3×3 convolutions see what one 5×5 sees", "001", computed,
               verdict(5, computed, "receptive field differs"))


def three_3x3_see_7x7() -> Row:
    computed = summarize(nn.Sequential([conv_block(1, 3, 0) for _ in range(3)]), (9, 9, 1))["layers"][-1]["receptive_field"]
    assert computed == summarize(conv_block(1, 7, 0), (9, 9, 1))["layers"][-1]["receptive_field"]
    return Row("three stacked 3×3 convolutions see what one 7×7 sees", "001", computed,
               verdict(7, computed, "receptive field differs"))


def _weights_row(name: str, stated: float, description: str, source: str = "001") -> Callable[[], Row]:
    def row() -> Row:
        computed = block_weights_per_c2(name)
        return Row(f"{description}: {stated:g}·C² weights (`{name}` block, C=64)", source, computed,
                   verdict(stated, computed, "weights per C² differ"))

    row.__name__ = f"weights_{name}"
    return row


weights_conv3x3x3 = _weights_row("conv3x3x3", 27, "three 3×3, C -> C")
weights_conv7x7 = _weights_row("conv7x7", 49, "one 7×7, C -> C")
weights_plain3x3 = _weights_row("plain3x3", 9, "one 3×3, C -> C")
weights_bottleneck = _weights_row("bottleneck", 3.25, "bottleneck 1×1 C->C/2, 3×3, 1×1 C/2->C")
weights_factorised = _weights_row("factorised", 6, "1×3 then 3×1, C -> C")


def receptive_field_14x14() -> Row:
    chain = nn.Sequential([conv_block(3, 3, 0), conv_block(3, 3, 0, pool=max_pool_2x2), conv_block(3, 3, 0)])
    summary = summarize(chain, (14, 14, 3))
    last = summary["layers"][-1]
    computed = {"receptive field": last["receptive_field"], "jump": last["jump"],
                "output": tuple(summary["output_shape"][1:3])}
    size, jump = arithmetic.receptive_field([(3, 1, 1), (3, 1, 1), (2, 2, 1), (3, 1, 1)])
    stated = {"receptive field": size, "jump": jump, "output": (3, 3)}  # The seed gives the rule; the rule gives this.
    return Row("14×14×3 -> conv K3 -> conv K3 -> maxpool K2 S2 -> conv K3, by R_k = R_{k−1} + (K_k − 1)·∏S_i "
               "", "001", computed,
               verdict(stated, computed, "the traced modules disagree with the seed's rule"))


def alexnet_7x7x512() -> Row:
    computed = last_feature_map("alexnet", (224, 224, 3))
    return Row("AlexNet: five poolings take 224×224×3 to 7×7×512 (224/2/2/2/2/2 = 7)", "004", computed,
               verdict((7, 7, 512), computed, "AlexNet ends at 6×6×256: an 11×11/4 stem and three 3×3/2 poolings "
                                              "(224 -> 55 -> 27 -> 13 -> 6); 7×7×512 after five halvings is VGG's"))


def vgg16_7x7x512() -> Row:
    computed = last_feature_map("vgg16", (224, 224, 3))
    return Row("five 2×2 poolings take 224×224×3 to 7×7×512 (VGG16)", "004", computed,
               verdict((7, 7, 512), computed, "feature map differs"))


def fc_as_conv_7x7() -> Row:
    rows = summarize(models.lookup("vgg16")(num_classes=1000), (224, 224, 3))["layers"]
    fc = next(r for r in rows if r["type"] == "dense")
    conv = summarize(Conv(4096, (7, 7), padding="VALID"), (7, 7, 512))
    computed = {"params": conv["total_params"], "output": tuple(conv["output_shape"][1:])}
    return Row("an FC layer over 7×7×512 with K=4096 (VGG16's first) is a 7×7 conv, pad 0, stride 1, 4096 filters",
               "001", computed,
               verdict({"params": fc["params"], "output": (1, 1, 4096)}, computed, "the conv's parameters differ from VGG16's FC"))


def first_layer_strides() -> Row:
    firsts = {name: summarize(models.lookup(name)(num_classes=1000), (224, 224, 3))["layers"][0]
              for name in ("zfnet", "alexnet")}
    computed = {name: {"kernel": r["kernel"][0], "stride": r["stride"][0]} for name, r in firsts.items()}
    return Row("first layers: ZFNet 7×7 stride 2, AlexNet 11×11 stride 4", "004", computed,
               verdict({"zfnet": {"kernel": 7, "stride": 2}, "alexnet": {"kernel": 11, "stride": 4}}, computed, "first layer differs"))


def im2col_227x227x3() -> Row:
    row = summarize(Conv(96, (11, 11), strides=4, padding="VALID"), (227, 227, 3))["layers"][0]
    computed = {"patch_matrix": row["patch_matrix"], "kernel_matrix": row["kernel_matrix"]}
    assert computed == arithmetic.im2col_shapes((11, 11), 3, 96, row["output_shape"][1:3])
    return Row("im2col: 227×227×3 with 96 filters 11×11×3 at stride 4 -> X_col [363 × 3025], W_row [96 × 363]",
               "004", computed, verdict({"patch_matrix": [363, 3025], "kernel_matrix": [96, 363]}, computed,
                                        "matrix shapes differ"))


def first_layer_memory() -> Row:
    small = summarize(conv_block(64, 3, padding=1), (256, 256, 3))["activation_bytes"]
    large = summarize(conv_block(64, 7, padding=3, stride=2), (256, 256, 3))["activation_bytes"]
    computed = small / large
    return Row("256×256×3: a 3×3/1 first layer (64 filters) makes a much larger map than 7×7/2 "
               "(ratio of activation memory)", "001", computed,
               verdict(True, computed > 1, "the 3×3/1 map is not larger"))


def pooling_discards_75() -> Row:
    x = jax.ShapeDtypeStruct((1, 224, 224, 64), jnp.float32)
    kept = arithmetic.activation_values(jax.eval_shape(max_pool_2x2, x).shape) / arithmetic.activation_values(x.shape)
    computed = 1 - kept
    return Row("2×2 max-pooling with stride 2 discards 75% of the activations (fraction discarded)", "004", computed,
               verdict(0.75, computed, "fraction differs"))


def volume_224x224x64() -> Row:
    computed = arithmetic.activation_values(summarize(conv_block(64, 3, padding=1), (224, 224, 3))["output_shape"])
    return Row("224×224×3 through 64 3×3 filters, P=1 -> [224×224×64]: about 10 M activations", "004", computed,
               verdict(10, round(computed / 1e6), "one [224×224×64] volume is 3.2 M values; cs231n's 10 M is for "
                                                 "three such layers (the translation drops 'three')"))


def three_layers_224x224x64() -> Row:
    chain = nn.Sequential([conv_block(64, 3, padding=1) for _ in range(3)])
    computed = sum(arithmetic.activation_values(r["output_shape"]) for r in summarize(chain, (224, 224, 3))["layers"])
    return Row("three such 3×3 layers (cs231n's reading): about 10 M activations", "004", computed,
               verdict(10, round(computed / 1e6), "value count differs"))


def three_layers_72mb() -> Row:
    chain = nn.Sequential([conv_block(64, 3, padding=1) for _ in range(3)])
    computed = summarize(chain, (224, 224, 3))["training_activation_bytes"]
    return Row("... or 72 MB per image, activations and gradients (float32)", "004", computed,
               verdict(72, round(computed / 1e6), "77,070,336 bytes (77.1 MB, 73.5 MiB): float32 values and "
                                                 "their gradients; 72 MB is cs231n's rounded figure"))


def mlp_600x377x3() -> Row:
    # One perceptron per input value (a weight and a bias each): a 1×1 locally connected layer over the values.
    params = variables_of(nn.ConvLocal(1, (1, 1)), (600, 377 * 3, 1))["params"]
    computed = arithmetic.count_params(params)
    return Row("an MLP's input layer on a 600×377×3 image: 600·377·3·2 ≈ 1.5 M parameters", "003", computed,
               verdict(1.5, round(computed / 1e6, 1), "600·377·3·2 = 1,357,200 ≈ 1.4 M, not 1.5 M"))


def fashion_fc_32x7x7() -> Row:
    computed = last_feature_map("convnet", (28, 28, 1))
    return Row("the Fashion-MNIST network's FC layer reads a 32·7·7 map (28 -> 14 -> 7)", "000", computed,
               verdict((7, 7, 32), computed, "feature map differs"))


ROWS: tuple[Callable[[], Row], ...] = (
    conv_32x32x3_5x5, filter_5x5x3_weights, params_760, memory_10240, padding_4x4, padding_5x5_valid,
    padding_5x5_same, padding_7x7, pool_4x4, fc_1000x1000, local_10x10, conv_10x10, two_3x3_see_5x5,
    three_3x3_see_7x7, weights_conv3x3x3, weights_conv7x7, weights_plain3x3, weights_bottleneck, weights_factorised,
    receptive_field_14x14, alexnet_7x7x512, vgg16_7x7x512, fc_as_conv_7x7, first_layer_strides, im2col_227x227x3,
    first_layer_memory,
    pooling_discards_75, volume_224x224x64, three_layers_224x224x64, three_layers_72mb, mlp_600x377x3,
    fashion_fc_32x7x7,
)


def cell(value) -> str:
    """A computed value as text: counts with thousands separators, shapes joined with ×, dicts as "key value"."""
    if isinstance(value, dict):
        return ", ".join(f"{k} ({cell(v)})" if isinstance(v, dict) else f"{k} {cell(v)}" for k, v in value.items())
    if isinstance(value, tuple):
        return "×".join(map(str, value))
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:g}" if isinstance(value, float) else str(value)


def format_table(rows: Sequence[Row]) -> str:
    """Rows as aligned text columns: claim, source, computed, verdict."""
    lines = [("claim", "source", "computed", "verdict")] + [(r.claim, r.source, cell(r.computed), r.verdict)
                                                            for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(3)]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)) + "  " + line[3] for line in lines)


def main(argv):
    del argv
    rows = [row() for row in ROWS]
    if FLAGS.json:
        print(json.dumps([r._asdict() for r in rows], ensure_ascii=False, indent=1, default=int))
    else:
        print(format_table(rows))


if __name__ == "__main__":
    cli.run(main, usage="python -m experiments.seed_numbers [--json]")
