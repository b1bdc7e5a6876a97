"""Every number of the seed documents, recomputed from cnn_jax's modules, with its verdict (experiments.seed_numbers)."""

import json

import pytest

from experiments import seed_numbers

AGREES = "agrees"
DIFFERS = "differs"

# Row function -> (the value cnn_jax computes, the verdict's first word).
EXPECTED = {
    "conv_32x32x3_5x5": ((28, 28, 1), AGREES),
    "filter_5x5x3_weights": ({"weights": 75, "bias": 1}, AGREES),
    "params_760": (760, AGREES),
    "memory_10240": ({"values": 10_240, "bytes": 40_960}, DIFFERS),  # Seed 001 calls 10,240 values bytes.
    "padding_4x4": ((2, 2), AGREES),
    "padding_5x5_valid": ((3, 3), AGREES),
    "padding_5x5_same": ((5, 5), AGREES),
    "padding_7x7": ((5, 5), AGREES),
    "pool_4x4": ((2, 2), AGREES),
    "fc_1000x1000": (10**12, AGREES),
    "local_10x10": (10**8, AGREES),
    "conv_10x10": (100, DIFFERS),  # A shared 10×10 filter; 10⁸ is unshared local windows.
    "two_3x3_see_5x5": (5, AGREES),
    "three_3x3_see_7x7": (7, AGREES),
    "weights_conv3x3x3": (27, AGREES),
    "weights_conv7x7": (49, AGREES),
    "weights_plain3x3": (9, AGREES),
    "weights_bottleneck": (3.25, AGREES),
    "weights_factorised": (6, AGREES),
    "receptive_field_14x14": ({"receptive field": 10, "jump": 2, "output": (3, 3)}, AGREES),
    "alexnet_7x7x512": ((6, 6, 256), DIFFERS),  # 7×7×512 is VGG's map, not AlexNet's.
    "vgg16_7x7x512": ((7, 7, 512), AGREES),
    "fc_as_conv_7x7": ({"params": 102_764_544, "output": (1, 1, 4096)}, AGREES),
    "first_layer_strides": ({"zfnet": {"kernel": 7, "stride": 2}, "alexnet": {"kernel": 11, "stride": 4}}, AGREES),
    "im2col_227x227x3": ({"patch_matrix": [363, 3025], "kernel_matrix": [96, 363]}, AGREES),
    "first_layer_memory": (4.0, AGREES),
    "pooling_discards_75": (0.75, AGREES),
    "volume_224x224x64": (224 * 224 * 64, DIFFERS),  # 3.2 M, not 10 M: cs231n counts three layers.
    "three_layers_224x224x64": (3 * 224 * 224 * 64, AGREES),
    "three_layers_72mb": (3 * 224 * 224 * 64 * 4 * 2, DIFFERS),  # 77.1 MB, not 72.
    "mlp_600x377x3": (600 * 377 * 3 * 2, DIFFERS),  # 1.36 M, not 1.5 M.
    "fashion_fc_32x7x7": ((7, 7, 32), AGREES),
}


@pytest.fixture(scope="module")
def rows():
    return {row.__name__: row() for row in seed_numbers.ROWS}


def test_every_row_has_an_expectation():
    assert [row.__name__ for row in seed_numbers.ROWS] == list(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_row_computes_the_stated_value_and_verdict(rows, name):
    computed, verdict = EXPECTED[name]
    row = rows[name]
    assert row.computed == computed
    if verdict == AGREES:
        assert row.verdict == AGREES
    else:
        assert row.verdict.startswith(f"{DIFFERS}: ")
    assert row.source in {"000", "001", "002", "003", "004"}


def test_table_has_one_aligned_line_per_row(rows):
    header, *lines = seed_numbers.format_table(list(rows.values())).splitlines()
    column = header.index("source")
    assert [line[column : column + 3] for line in lines] == [row.source for row in rows.values()]


def test_rows_serialise_to_json(rows):
    listed = json.loads(json.dumps([r._asdict() for r in rows.values()], default=int))
    assert listed[0] == {"claim": rows["conv_32x32x3_5x5"].claim, "source": "001", "computed": [28, 28, 1],
                         "verdict": "agrees"}
