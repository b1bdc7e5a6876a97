"""Looking inside a network: layer outputs, activation statistics, filters, hand-made filters, and the command."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import he_variables
from jax import lax

from cnn_jax import data, models
from cnn_jax.analysis.inspect import activations, attribution, filters, report, taps
from cnn_jax.errors import UserError
from cnn_jax.training import trained
from cnn_jax.training.config import Config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_inspect(*flags):
    return subprocess.run([sys.executable, "-m", "experiments.inspect", *flags], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def seed(tiny_run):
    """The seed network after 2 steps on synthetic images: what these tests check does not need it trained."""
    return trained.load(tiny_run)


def _conv(x, kernel, bias, padding):
    numbers = lax.conv_dimension_numbers(x.shape, kernel.shape, ("NHWC", "HWIO", "NHWC"))
    return lax.conv_general_dilated(x, kernel, (1, 1), ((padding, padding),) * 2, dimension_numbers=numbers) + bias


def _batch_norm(x, params, stats):
    return (x - stats["mean"]) / jnp.sqrt(stats["var"] + 1e-5) * params["scale"] + params["bias"]


def _max_pool(x):
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def test_activation_maps_are_the_layer_outputs_computed_directly(seed):
    images = seed.dataset.test_images[:3]
    maps = activations.activation_maps(seed.model, seed.variables, images, list(
        taps.layers(seed.model, seed.variables, seed.dataset.image_shape)))
    params, stats = seed.variables["params"], seed.variables["batch_stats"]
    x = data.normalize(images)
    for block in ("ConvBlock_0", "ConvBlock_1"):
        conv = _conv(x, params[block]["Conv_0"]["kernel"], params[block]["Conv_0"]["bias"], 2)
        norm = _batch_norm(conv, params[block]["BatchNorm_0"], stats[block]["BatchNorm_0"])
        x = _max_pool(jax.nn.relu(norm))
        for name, expected in ((f"{block}/Conv_0", conv), (f"{block}/BatchNorm_0", norm), (block, x)):
            np.testing.assert_allclose(maps[name], expected, rtol=1e-4, atol=1e-4, err_msg=name)
    assert list(maps) == ["ConvBlock_0/Conv_0", "ConvBlock_0/BatchNorm_0", "ConvBlock_0",
                          "ConvBlock_1/Conv_0", "ConvBlock_1/BatchNorm_0", "ConvBlock_1"]
    held = jax.tree.map(np.asarray, seed.variables)  # NumPy arrays, as the training loop's --log_images gives them.
    assert list(taps.layers(seed.model, held, seed.dataset.image_shape)) == list(maps)


@pytest.mark.slow  # Compiles two zoo models.
def test_zoo_models_list_their_layers_and_their_forward_pass_is_unchanged():
    for name, shape, last, last_spatial in (("lenet5", (28, 28, 1), "C5", "C3"),
                                            ("alexnet", (32, 32, 1), "adaptive_avg_pool_0", "Conv_4")):
        model = models.lookup(name)(num_classes=10)
        x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, *shape)), jnp.float32)
        variables = he_variables(model, x)
        layers = taps.layers(model, variables, shape)
        logits, outputs = jax.jit(lambda x: taps.forward(model, variables, x))(x)
        np.testing.assert_allclose(logits, jax.jit(model.apply)(variables, x), rtol=1e-4, atol=1e-5)
        assert set(outputs) == set(layers) and all(outputs[n].shape[1:] == layers[n].shape for n in layers)
        assert list(layers)[-1] == last and taps.last_spatial_layer(layers) == last_spatial, name
        assert any(layer.kind.endswith("pool") and not layer.editable for layer in layers.values()), name
    resnet = models.lookup("resnet18")(num_classes=10)  # Traced only: a residual block is recorded after its sum.
    layers = taps.layers(resnet, he_variables(resnet, jnp.zeros((1, 32, 32, 3))), (32, 32, 3))
    assert list(layers)[-3:] == ["stage4_block2/ConvBN_1/Conv_0", "stage4_block2/ConvBN_1", "stage4_block2"]  # (Its
    # BatchNorm, the end of a ConvBN without ReLU, is listed as the ConvBN.)
    assert report.featvis_layers_of(layers) == ["stem", "stage2_block1", "stage3_block1", "stage4_block2"]


def test_an_edit_changes_what_follows_and_a_pooling_is_edited_through_its_module(seed):
    x = data.normalize(seed.dataset.test_images[:2])
    zeroed, outputs = taps.forward(seed.model, seed.variables, x, edit=("ConvBlock_1", jnp.zeros_like))
    np.testing.assert_allclose(outputs["ConvBlock_1"], 0)
    head = seed.variables["params"]["DenseHead_0"]["Dense_0"]["bias"]
    np.testing.assert_allclose(zeroed, np.broadcast_to(head, zeroed.shape), atol=1e-6)
    with pytest.raises(UserError, match="no module layer 'nope' to edit: choose one of ConvBlock_0/BatchNorm_0"):
        taps.forward(seed.model, seed.variables, x, edit=("nope", jnp.zeros_like))


def test_a_layers_conv_is_one_layer_edited_once():
    model = models.lookup("lenet5")(num_classes=10)  # Its C1 is a layers.Conv, which calls flax's Conv inside.
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    forward = jax.jit(lambda v, x, edit: taps.forward(model, v, x, edit)[1], static_argnums=2)
    edited = forward(variables, jnp.ones((2, 32, 32, 1)), ("C1", lambda a: a + 1))
    plain = forward(variables, jnp.ones((2, 32, 32, 1)), None)
    assert list(taps.layers(model, variables, (32, 32, 1))).count("C1") == 1
    np.testing.assert_allclose(edited["C1"], plain["C1"] + 1, rtol=1e-6)  # Once, not twice.

def test_layer_statistics_count_zeros_and_means_over_all_images(seed):
    images = seed.dataset.test_images  # 200: two batches of 128, the second padded.
    stats = activations.layer_statistics(seed.model, seed.variables, images, batch_size=128)
    direct = activations.activation_maps(seed.model, seed.variables, images, ["ConvBlock_1", "ConvBlock_1/BatchNorm_0"])
    block, norm = stats["ConvBlock_1"], stats["ConvBlock_1/BatchNorm_0"]
    assert block["rectified"] and not norm["rectified"]
    np.testing.assert_allclose(block["zero_fraction"], np.mean(direct["ConvBlock_1"] == 0), rtol=1e-6)
    np.testing.assert_allclose(norm["off_fraction"], np.mean(direct["ConvBlock_1/BatchNorm_0"] <= 0), rtol=1e-6)
    np.testing.assert_allclose(block["mean"], direct["ConvBlock_1"].mean(), rtol=1e-4)
    assert 0.1 < block["zero_fraction"] < 0.9


def test_the_vertical_edge_filter_responds_at_a_vertical_bars_edges_and_not_on_a_flat_image():
    image = np.zeros((12, 12), np.float32)
    image[:, 4:8] = 1.0  # A vertical bar, columns 4 to 7: edges between columns 3|4 and 7|8.
    response = filters.apply_filters(image, filters.HAND_MADE)["vertical edge"]
    strength = np.abs(response[1:-1]).max(axis=0)
    assert set(np.flatnonzero(strength == strength.max())) == {3, 4, 7, 8}  # Each edge's two sides, and nothing else:
    assert set(np.flatnonzero(strength)) == {3, 4, 7, 8}  # zero inside the bar and on the background.
    assert np.all(response[1:-1, 3:5] < 0) and np.all(response[1:-1, 7:9] > 0)  # Dark-to-light, then light-to-dark.
    for name, flat in filters.apply_filters(np.full((8, 8), 0.3, np.float32), filters.HAND_MADE).items():
        np.testing.assert_allclose(flat[1:-1, 1:-1], 0, atol=1e-6, err_msg=name)  # The border sees the zero padding.
    horizontal = filters.apply_filters(image, filters.HAND_MADE)["horizontal edge"]
    np.testing.assert_allclose(horizontal[1:-1], 0, atol=1e-6)  # A vertical bar has no horizontal edge.


def test_edge_scores_find_oriented_edges_and_not_noise():
    bank = filters.derivative_of_gaussian_bank(5)
    assert bank.shape == (48, 5, 5)
    np.testing.assert_allclose(np.linalg.norm(bank.reshape(48, -1), axis=1), 1, rtol=1e-6)
    edge = -bank[2][:, :, None, None] * 3 + 0.7  # A bank filter, negated, scaled and offset: still that edge.
    assert filters.edge_scores(edge, bank)[0] == pytest.approx(1.0)
    noise = np.random.default_rng(0).normal(size=(5, 5, 1, 500))
    assert np.median(filters.edge_scores(noise, bank)) < 0.5
    rgb = np.concatenate([noise[:, :, :, :1], edge, noise[:, :, :, 1:2]], axis=2)  # An edge in one colour.
    assert filters.edge_scores(rgb, bank)[0] == pytest.approx(1.0)


def test_kernel_pictures_put_zero_at_mid_grey_and_norms_follow_each_channel_pair():
    kernel = np.zeros((3, 3, 2, 4), np.float32)
    kernel[0, 0, 0, 1], kernel[1, 1, 1, 1] = 2.0, -1.0
    pictures = filters.kernel_images(kernel)
    assert pictures.shape == (4, 3, 3, 2)
    assert pictures[1, 0, 0, 0] == 1.0 and pictures[1, 1, 1, 1] == 0.25 and pictures[1, 2, 2, 0] == 0.5
    np.testing.assert_allclose(pictures[0], 0.5)
    norms = filters.kernel_norms(kernel)
    assert norms.shape == (4, 2) and norms[1, 0] == 2.0 and norms[1, 1] == 1.0 and norms[0].sum() == 0


def test_image_files_become_the_runs_shape(tmp_path):
    from PIL import Image

    rgb = np.zeros((60, 90, 3), np.uint8)
    rgb[:, 45:] = (255, 255, 255)  # Right half white.
    Image.fromarray(rgb).save(tmp_path / "half.png")
    grey = data.read_image(str(tmp_path / "half.png"), (28, 28, 1))
    assert grey.shape == (28, 28, 1) and grey.dtype == np.uint8
    assert grey[:, :12].max() < 10 and grey[:, 16:].min() > 245  # The centred square crop keeps the edge central.
    assert data.read_image(str(tmp_path / "half.png"), (32, 32, 3)).shape == (32, 32, 3)
    (tmp_path / "not.png").write_text("not an image")
    with pytest.raises(data.DataError, match="cannot read image file .*not.png"):
        data.read_image(str(tmp_path / "not.png"), (28, 28, 1))
    with pytest.raises(data.DataError, match="does not exist"):
        data.read_image(str(tmp_path / "missing.png"), (28, 28, 1))


@pytest.mark.slow
def test_the_command_writes_every_file_and_the_page_shows_each_picture(seed_run, tmp_path):
    out = tmp_path / "inspect"
    result = run_inspect(f"--workdir={seed_run}", f"--out={out}", "--images=3,5", "--featvis_steps=16")
    assert result.returncode == 0, result.stderr
    written = set(os.listdir(out))
    results = json.loads((out / "inspect.json").read_text())
    assert results["images"] == [3, 5] and list(results["methods"]) == list(report.METHODS)
    for method in results["methods"]:
        assert f"{method}.npz" in written
    for method in attribution.METHODS:  # Maps at the input's resolution, and which test images they are of.
        with np.load(out / f"{method}.npz") as arrays:
            assert arrays["maps"].shape == (2, 28, 28) and list(arrays["images"]) == [3, 5], method
            assert np.all(np.isfinite(arrays["maps"])) and np.all(np.isfinite(arrays["chosen_maps"]))
    sanity = results["methods"]["sanity"]
    assert sanity["groups"] == ["DenseHead_0", "ConvBlock_1", "ConvBlock_0"]
    assert set(sanity["methods"]) == set(attribution.METHODS)
    assert ("Flagged: " in (out / "index.html").read_text()) == bool(sanity["flagged"])
    grids = results["methods"]["features"]["grids"]
    assert set(grids) == {"channel_ConvBlock_0", "channel_ConvBlock_1", "neuron_ConvBlock_0_Conv_0", "logit_logits"}
    assert len(grids["channel_ConvBlock_1"]["targets"]) == 32 and len(grids["logit_logits"]["targets"]) == 10
    pictures = {name for name in written if name.endswith(".png")}
    page = (out / "index.html").read_text()
    assert pictures and all(f"src='{name}'" in page for name in pictures)
    stats = results["methods"]["activations"]["layers"]
    assert set(stats) == {"ConvBlock_0/Conv_0", "ConvBlock_0/BatchNorm_0", "ConvBlock_0", "ConvBlock_1/Conv_0",
                          "ConvBlock_1/BatchNorm_0", "ConvBlock_1"}
    edges = results["methods"]["edges"]
    assert edges["trained"]["count"] == 16 and 0 < edges["trained"]["median"] <= 1
    with np.load(out / "activations.npz") as arrays:
        assert arrays["ConvBlock_1"].shape == (2, 7, 7, 32)


@pytest.mark.slow
def test_the_command_on_your_own_image_files(seed_run, tmp_path):
    from PIL import Image

    photo = np.zeros((80, 60, 3), np.uint8)
    photo[20:60, 15:45] = (200, 180, 160)  # A pale block on black: a garment-like blob, in colour.
    Image.fromarray(photo).save(tmp_path / "mine.jpg")
    out = tmp_path / "inspect"
    result = run_inspect(f"--workdir={seed_run}", f"--out={out}", f"--image_files={tmp_path / 'mine.jpg'}",
                         "--methods=activations,filters,saliency", "--target_class=2")
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "inspect.json").read_text())
    assert results["images"] is None and results["labels"] == ["mine.jpg"]
    assert results["methods"]["saliency"]["chosen_classes"] == [2]
    with np.load(out / "saliency.npz") as arrays:
        assert arrays["maps"].shape == (1, 28, 28) and "images" not in arrays


@pytest.mark.parametrize("flags, message", [
    (("--methods=activations,nope",), "error: unknown method 'nope': choose from activations, "),
    (("--images=0", "--image_files=a.png"), "error: give --images (test indices) or --image_files"),
])
def test_bad_input_gives_one_line_and_writes_nothing(tiny_run, tmp_path, flags, message):
    out = tmp_path / "inspect"
    result = run_inspect(f"--workdir={tiny_run}", f"--out={out}", *flags)
    assert result.returncode == 2 and result.stderr.startswith(message), result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert not out.exists() and not [n for n in os.listdir(tmp_path) if n.startswith(".inspect")]


@pytest.mark.parametrize("settings, message", [
    ({"layers": ["ConvBlock_9"]}, "unknown layer 'ConvBlock_9': choose from ConvBlock_0/Conv_0, "),
    ({"featvis_layers": ["Conv"]}, "unknown layer 'Conv': choose from ConvBlock_0/Conv_0, "),
    ({"channels": [40]}, "`channels`: channel 40 is beyond the layers' widths (ConvBlock_0: 16, ConvBlock_1: 32)"),
    ({"target_class": 10}, "`target_class`=10 is not a class: choose from 0 to 9 (T-shirt/top, "),
    ({"featvis_steps": 0}, "`featvis_steps` must be at least 1, got 0"),
])
def test_bad_settings_are_refused_before_anything_is_written(seed, tmp_path, settings, message):
    chosen = report.choose(seed.dataset, ["0"], [])
    with pytest.raises(UserError) as error:
        report.write(seed, chosen, ["activations"], str(tmp_path / "inspect"), **settings)
    assert str(error.value).startswith(message)
    assert os.listdir(tmp_path) == []


def test_chosen_images_are_test_images_by_index_or_files_and_nothing_else(seed, tmp_path):
    chosen = report.choose(seed.dataset, ["7", "2"], [])
    assert chosen.indices == [7, 2] and chosen.labels[0].startswith("#7: ")
    np.testing.assert_array_equal(chosen.images, seed.dataset.test_images[[7, 2]])
    for indices, message in ((["200"], "`images`=200: the test split has 200 images"),
                             (["a"], "`images`=a must be test-image indices"), ([], "`images`=: the test split")):
        with pytest.raises(UserError, match=message):
            report.choose(seed.dataset, indices, [])
    with pytest.raises(data.DataError, match="image file .*missing.png does not exist"):
        report.choose(seed.dataset, [], [str(tmp_path / "missing.png")])


def test_a_workdir_without_a_run_or_checkpoint_is_refused_and_left_alone(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=f"^`workdir`={empty} holds no run \\(config.json is missing\\)"):
        trained.load(str(empty))
    (empty / "config.json").write_text("{}")
    with pytest.raises(UserError, match=f"^`workdir`={empty} has no checkpoint yet"):
        trained.load(str(empty))
    assert sorted(os.listdir(empty)) == ["config.json"]


@pytest.mark.slow  # Compiles a colour model's methods.
def test_a_colour_model_is_inspected_too(tmp_path):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8), rng.integers(0, 4, 40).astype(np.int32)
    dataset = data.Dataset("rgb", "synthetic", images, labels, images, labels, ("a", "b", "c", "d"))
    model = models.lookup("c8-max-c16-max-fc32")(num_classes=4)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))
    run = trained.Run(str(tmp_path), Config(model="c8-max-c16-max-fc32"), model, variables, dataset, 0)
    out = tmp_path / "inspect"
    results = report.write(run, report.choose(dataset, ["0", "1"], []), ["activations", "filters", "edges",
                                                                          "saliency"], str(out))
    assert results["methods"]["filters"]["kernel_shape"] == [3, 3, 3, 8]
    with np.load(out / "filters.npz") as arrays:
        assert arrays["first_layer"].shape == (3, 3, 3, 8)
    with np.load(out / "saliency.npz") as arrays:
        assert arrays["maps"].shape == (2, 16, 16)
    assert (out / "filters_first_layer.png").exists() and (out / "attribution_saliency.png").exists()
