"""The classic networks: LeNet-5, AlexNet, ZFNet, VGG-11/13/16/19 (with and without BatchNorm), All-CNN-C."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SAME_BLOCKS, he_variables, normal, unoptimised_jit

from cnn_jax.analysis.arithmetic import count_params
from cnn_jax.errors import UserError
from cnn_jax.layers import pooling
from cnn_jax.models import alexnet, allconv, lenet, vgg

ZOO = {**lenet.MODELS, **alexnet.MODELS, **vgg.MODELS, **allconv.MODELS}

# Trainable parameters at 224×224×3 and 1000 classes. AlexNet and the VGGs equal torchvision 0.28's
# `sum(p.numel() for p in model.parameters())`, counted there. By hand, from torchvision's layers
# ((k·k·c_in + 1)·c_out per convolution, (n_in + 1)·n_out per linear layer, 2·c per BatchNorm):
#   alexnet: convs (11·11·3+1)·64 + (5·5·64+1)·192 + (3·3·192+1)·384 + (3·3·384+1)·256 + (3·3·256+1)·256
#            = 23,296 + 307,392 + 663,936 + 884,992 + 590,080 = 2,469,696;
#            FCs (9216+1)·4096 + (4096+1)·4096 + (4096+1)·1000 = 37,752,832 + 16,781,312 + 4,097,000.
#   vgg16:   convs 64,128,256,512,512 widths ×(2,2,3,3,3) = 14,714,688; the same three FCs with
#            25088 = 7·7·512 inputs: 102,764,544 + 16,781,312 + 4,097,000.
#   vgg*_bn: + 2 × (sum of conv widths): vgg11 2·2752 = 5,504, vgg13 2·2944, vgg16 2·4224, vgg19 2·5504.
# ZFNet has no torchvision model; from the paper's Figure 3 (96 7×7/2, 256 5×5/2, 384, 384, 256 3×3,
# a 6×6×256 map, FCs 4096, 4096, 1000):
#   (7·7·3+1)·96 + (5·5·96+1)·256 + (3·3·256+1)·384 + (3·3·384+1)·384 + (3·3·384+1)·256
#   = 14,208 + 614,656 + 885,120 + 1,327,488 + 884,992 = 3,726,464; + the FCs above = 62,357,608.
# LeNet-5 and All-CNN-C keep their layers at every size (see their docstrings); only the first
# convolution's input channels and the last layer's width change with the input and class count.
PARAMS_224 = {
    "lenet5": 146_156,
    "alexnet": 61_100_840,
    "zfnet": 62_357_608,
    "vgg11": 132_863_336,
    "vgg13": 133_047_848,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840,
    "vgg13_bn": 133_053_736,
    "vgg16_bn": 138_365_992,
    "vgg19_bn": 143_678_248,
    "allconv": 1_560_808,
}

# Trainable parameters at (28×28×1, 32×32×3) and 10 classes. AlexNet, ZFNet and VGG see a 1×1 grid
# there instead of 6×6 / 7×7, so their first FC has 256·4096 or 512·4096 weights.
PARAMS_SMALL = {
    "lenet5": (61_706, 62_006),
    "alexnet": (20_329_162, 20_344_650),
    "zfnet": (21_592_010, 21_601_418),
    "vgg11": (28_142_858, 28_144_010),
    "vgg13": (28_327_370, 28_328_522),
    "vgg16": (33_637_066, 33_638_218),
    "vgg19": (38_946_762, 38_947_914),
    "vgg11_bn": (28_148_362, 28_149_514),
    "vgg13_bn": (28_333_258, 28_334_410),
    "vgg16_bn": (33_645_514, 33_646_666),
    "vgg19_bn": (38_957_770, 38_958_922),
    "allconv": (1_368_010, 1_369_738),
}

# The flattened map each 4096-wide classifier sees at 224×224: the papers' 6×6×256 and 7×7×512.
FIRST_FC_INPUTS_224 = {"alexnet": 6 * 6 * 256, "zfnet": 6 * 6 * 256} | {
    name: 7 * 7 * 512 for name in ZOO if name.startswith("vgg")
}


def test_every_classic_model_is_tested():
    assert set(ZOO) == set(PARAMS_224) == set(PARAMS_SMALL)
    assert all(entry.lesson and "\n" not in entry.lesson for entry in ZOO.values())


@pytest.mark.parametrize("name", sorted(ZOO))
def test_imagenet_size_parameter_count_equals_the_reference(name):
    model = ZOO[name].build(num_classes=1000)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
    assert jax.eval_shape(model.apply, variables, jnp.zeros((2, 224, 224, 3))).shape == (2, 1000)
    assert count_params(variables["params"]) == PARAMS_224[name]
    if name in FIRST_FC_INPUTS_224:
        assert variables["params"]["DenseHead_0"]["Dense_0"]["kernel"].shape == (FIRST_FC_INPUTS_224[name], 4096)


def test_lenet5_has_61706_parameters_at_32x32x1_in_the_classic_layout():
    variables = jax.eval_shape(lenet.LeNet5().init, jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    per_layer = {name: count_params(p) for name, p in variables["params"].items()}
    assert per_layer == {"C1": 156, "C3": 2_416, "C5": 48_120, "F6": 10_164, "output": 850}
    assert sum(per_layer.values()) == 61_706


@pytest.mark.slow
def test_alexnet_runs_at_224x224x3():
    """On `he_variables`: AlexNet's own initialisation is tested at 32×32×3 (below), with the same initialisers."""
    model, images = ZOO["alexnet"].build(num_classes=1000), normal(1, (1, 224, 224, 3))
    logits = unoptimised_jit(model.apply)(he_variables(model, images), images)
    assert logits.shape == (1, 1000)
    assert np.all(np.isfinite(logits))


def assert_finite_logits(logits, batch):
    assert logits.shape == (batch, 10)
    assert np.all(np.isfinite(logits))


@pytest.mark.parametrize("size", [0, 1], ids=["28x28x1", "32x32x3"])
@pytest.mark.parametrize("name", sorted(ZOO))
def test_small_images_give_the_expected_parameter_count(name, size):
    shape = [(28, 28, 1), (32, 32, 3)][size]
    variables = jax.eval_shape(ZOO[name].build(num_classes=10).init, jax.random.key(0), jnp.zeros((1, *shape)))
    assert count_params(variables["params"]) == PARAMS_SMALL[name][size]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ZOO))
def test_32x32x3_images_give_finite_logits(name):
    """(At 28×28×1, and training there, tests/test_zoo.py's training-step test checks every model.)"""
    model, images = ZOO[name].build(num_classes=10), normal(1, (2, 32, 32, 3))
    if name in SAME_BLOCKS:  # Deeper VGGs: VGG-11's blocks and initialisers, tested there; only the forward pass.
        logits = unoptimised_jit(model.apply)(he_variables(model, images), images)
    else:  # The model's own initialisation and its test-mode logits in one unoptimised program.
        logits, _ = unoptimised_jit(model.init_with_output)(jax.random.key(0), images)
    assert_finite_logits(logits, 2)


def numpy_adaptive_avg_pool(x, grid):
    """PyTorch's AdaptiveAvgPool2d, cell by cell: cell (i, j) averages rows floor(i·h/g)..ceil((i+1)·h/g) − 1."""
    h, w = x.shape[1:3]
    out = np.empty((x.shape[0], grid, grid, x.shape[3]), x.dtype)
    for i in range(grid):
        for j in range(grid):
            rows = slice(i * h // grid, -(-(i + 1) * h // grid))
            cols = slice(j * w // grid, -(-(j + 1) * w // grid))
            out[:, i, j] = x[:, rows, cols].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("size, grid", [(13, 6), (6, 6), (53, 5), (1, 7), (2, 1), (7, 7)])
def test_adaptive_avg_pool_averages_pytorch_s_cells(size, grid):
    x = np.random.default_rng(0).normal(size=(2, size, size + 3, 4)).astype(np.float32)
    np.testing.assert_allclose(pooling.adaptive_avg_pool(jnp.asarray(x), grid), numpy_adaptive_avg_pool(x, grid),
                               rtol=1e-5, atol=1e-6)


def test_feature_map_that_vanishes_is_reported():
    with pytest.raises(UserError, match="too small"):
        pooling.adaptive_avg_pool(jnp.zeros((1, 0, 0, 8)), 6)
