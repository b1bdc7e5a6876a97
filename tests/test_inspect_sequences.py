"""Looking inside networks of sequences: `experiments.inspect` on a run of MNIST-1D signals and one of texts, the
attribution over time steps checked against the logit's finite differences, and over tokens against the network
run on texts changed by hand."""

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import _shared_run, write_reviews

from cnn_jax import data
from cnn_jax.analysis.inspect import attribution, figures, report, snapshot, taps
from cnn_jax.errors import UserError
from cnn_jax.training import trained
from cnn_jax.training.config import Config


@pytest.fixture(scope="module")
def signals(tmp_path_factory):
    """convnet1d after one epoch on 300 MNIST-1D signals (6 steps), with its first 100 test signals."""
    return trained.load(_shared_run(tmp_path_factory, "inspect_signals", lambda shared: Config(
        dataset="mnist1d", max_train_examples=300, max_test_examples=100, epochs=1)))


@pytest.fixture(scope="module")
def texts(tmp_path_factory):
    """textcnn after 2 epochs on 120 short reviews whose words tell good from bad (`write_reviews`), padded to the
    longest's 10 tokens."""
    return trained.load(_shared_run(tmp_path_factory, "inspect_texts", lambda shared: Config(
        dataset="text", data_dir=write_reviews(shared / "inspect_reviews.csv"), epochs=2, batch_size=16,
        min_count=1)))


def inspect(run, tmp_path, methods, indices, **settings):
    out = tmp_path / "inspect"
    results = report.write(run, report.choose(run.dataset, [str(i) for i in indices], []), methods, str(out),
                           **settings)
    return out, results


def float64(run):
    return dataclasses.replace(run, variables=jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64),
                                                                     run.variables))


@functools.partial(jax.jit, static_argnums=(0, 3))
def logit(model, variables, inputs, k):
    """`[b]`: class k's logit, from `model.apply` (not the inspection's own forward pass)."""
    return model.apply(variables, inputs, train=False)[:, k]


@pytest.mark.slow  # Compiles every method; the everyday suite draws two of each kind (below).
def test_a_run_of_signals_gets_its_methods_figures_arrays_and_numbers(signals, tmp_path):
    methods = report.methods_for(data.SIGNALS)
    assert methods == ["activations", "filters", "saliency", "smoothgrad", "gradient_times_input",
                       "integrated_gradients", "grad_cam", "hires_cam", "occlusion", "sanity"]
    out, results = inspect(signals, tmp_path, methods, [0, 1], layers=["ConvBlock_0/Conv_0", "ConvBlock_2"])
    written = set(os.listdir(out))
    assert list(results["methods"]) == methods and results["images"] == [0, 1]
    assert json.loads((out / "inspect.json").read_text()) == results
    assert all(f"{method}.npz" in written for method in methods)
    for name in attribution.METHODS:  # A value per time step, for both classes.
        with np.load(out / f"{name}.npz") as arrays:
            assert arrays["maps"].shape == arrays["chosen_maps"].shape == (2, 40), name
            assert np.isfinite(arrays["maps"]).all() and list(arrays["images"]) == [0, 1]
        assert f"attribution_{name}.png" in written
    with np.load(out / "integrated_gradients.npz") as arrays:  # Σ over time steps: the change from zeros.
        x = signals.dataset.test_images[:2]
        change = [np.asarray(logit(signals.model, signals.variables, np.stack([x[i], 0 * x[i]]), int(k))) @ [1, -1]
                  for i, k in enumerate(arrays["classes"])]
        np.testing.assert_allclose(arrays["maps"].sum(axis=1), change, rtol=0.02, atol=0.02)
    with np.load(out / "activations.npz") as arrays:
        assert arrays["ConvBlock_0_Conv_0"].shape == (2, 40, 64) and arrays["ConvBlock_2"].shape == (2, 5, 64)
    assert {"activations_00_ConvBlock_0_Conv_0.png", "activations_01_ConvBlock_2.png", "filters_first_layer.png",
            "sanity_cascading_randomisation.png"} <= written
    assert results["methods"]["filters"]["kernel_shape"] == [5, 1, 64]
    assert results["methods"]["sanity"]["groups"] == ["DenseHead_0", "ConvBlock_2", "ConvBlock_1", "ConvBlock_0"]
    page = (out / "index.html").read_text()
    assert all(f"src='{name}'" in page for name in written if name.endswith(".png"))


def test_saliency_over_time_steps_is_the_logits_finite_difference(signals):
    x = signals.dataset.test_images[:1]
    cls = attribution.predicted(signals.model, signals.variables, x)
    saliency = attribution.saliency(signals.model, signals.variables, x, cls)[0]
    times_input = attribution.gradient_times_input(signals.model, signals.variables, x, cls)[0]
    eps = 1e-6
    with jax.enable_x64(True):  # ReLUs and max poolings have kinks within 1e-4 of the signal: nudges must be tiny.
        run = float64(signals)
        steps = np.eye(40)[:, :, None] * eps  # [40 time steps, 40, 1]: one step nudged in each.
        k = int(cls[0])
        slopes = np.asarray(logit(run.model, run.variables, x + steps, k) - logit(run.model, run.variables,
                                                                                  x - steps, k)) / (2 * eps)
    np.testing.assert_allclose(saliency, np.abs(slopes), rtol=1e-4, atol=1e-6)  # |∂ logit / ∂ x_t|, by hand.
    np.testing.assert_allclose(times_input, slopes * x[0, :, 0], rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # Compiles every method; the everyday suite draws two of each kind (below).
def test_a_run_of_texts_scores_each_word_and_gives_padding_zero(texts, tmp_path):
    methods = report.methods_for(data.TOKENS)
    assert methods == ["activations", "saliency", "smoothgrad", "gradient_times_input", "integrated_gradients",
                       "occlusion", "sanity"]
    padded = np.flatnonzero((texts.dataset.test_images == 0).any(axis=1))[:3]  # Texts shorter than the longest.
    tokens = texts.dataset.test_images[padded]
    out, results = inspect(texts, tmp_path, methods, padded)
    for name in methods[1:-1]:
        with np.load(out / f"{name}.npz") as arrays:
            maps = arrays["maps"]
            assert maps.shape == tokens.shape and np.array_equal(arrays["tokens"], tokens), name
        assert np.all(maps[tokens == 0] == 0) and np.all(maps[tokens != 0] != 0), name
        words = results["methods"][name]["words"]  # Each text's words and their scores, padding left out.
        assert [len(w) for w in words] == list((tokens != 0).sum(axis=1)), name
        assert [word for word, _ in words[0]] == [texts.dataset.vocabulary[i] for i in tokens[0] if i], name
        np.testing.assert_allclose([score for _, score in words[0]], maps[0][tokens[0] != 0], rtol=1e-6)
    with np.load(out / "integrated_gradients.npz") as arrays:  # Σ over tokens: the change from all padding.
        change = [np.asarray(logit(texts.model, texts.variables, np.stack([t, 0 * t]), int(k))) @ [1, -1]
                  for t, k in zip(tokens, arrays["classes"])]
        np.testing.assert_allclose(arrays["maps"].sum(axis=1), change, rtol=0.02, atol=0.01)
    assert results["methods"]["activations"]["shown"] == ["Embedding_0", "Conv_0", "Conv_1", "Conv_2"]
    with np.load(out / "activations.npz") as arrays:
        assert arrays["Conv_2"].shape == (3, 6, 100)  # A 5-word window's positions along 10 tokens.
    assert {"attribution_saliency.png", "activations_03_Conv_2.png", "sanity_cascading_randomisation.png"} <= set(
        os.listdir(out))


@pytest.mark.parametrize("kind, methods, layer", [
    ("signals", ["activations", "saliency"], "ConvBlock_1"),
    pytest.param("texts", ["activations", "gradient_times_input"], "Conv_0", marks=pytest.mark.slow)])  # 7 s.
def test_activation_maps_and_an_attribution_of_sequences_are_drawn_and_saved(kind, methods, layer, request,
                                                                             tmp_path):
    run = request.getfixturevalue(kind)
    out, results = inspect(run, tmp_path, methods, [0, 1], layers=[layer])  # One layer: each figure takes 1 s.
    written = set(os.listdir(out))
    assert list(results["methods"]) == methods and f"attribution_{methods[1]}.png" in written
    assert f"activations_00_{layer}.png" in written and "index.html" in written
    with np.load(out / f"{methods[1]}.npz") as arrays:
        assert arrays["maps"].shape == run.dataset.test_images[:2].shape[:2]


def with_word(run, tokens, position, scale):
    """(model, variables, tokens) with the word at `position` made a new word whose vector is `scale` times its
    own: the network run on a text changed by hand."""
    table = run.variables["params"]["Embedding_0"]["Embed_0"]["embedding"]
    grown = jnp.concatenate([table, scale * table[tokens[0, position]][None]])
    params = {**run.variables["params"], "Embedding_0": {"Embed_0": {"embedding": grown}}}
    return run.model.clone(vocab_size=len(grown)), {**run.variables, "params": params}, tokens.at[0, position].set(
        len(table))


def test_token_attributions_are_the_networks_own_response_to_changed_words(texts):
    tokens = jnp.asarray(texts.dataset.test_images[:1])
    cls = attribution.predicted(texts.model, texts.variables, tokens)
    k, words = int(cls[0]), int((tokens[0] != 0).sum())
    scores = attribution.gradient_times_input(texts.model, texts.variables, tokens, cls)[0]
    eps = 1e-6
    with jax.enable_x64(True):  # Max over time switches windows within 1e-4 of the text: nudges must be tiny.
        run = float64(texts)
        slopes = [(logit(*with_word(run, tokens, t, 1 + eps), k) - logit(*with_word(run, tokens, t, 1 - eps), k))[0]
                  / (2 * eps) for t in range(words)]  # gradient · vector: d logit / d (the vector's scale), at 1.
    np.testing.assert_allclose(scores[:words], slopes, rtol=1e-4, atol=1e-6)
    occluded = attribution.occlusion(texts.model, texts.variables, tokens, cls)[0]  # Each word made padding.
    erased = jnp.where(jnp.eye(tokens.shape[1], dtype=bool), 0, tokens)  # Text t: word t made padding.
    drops = logit(texts.model, texts.variables, tokens, k) - logit(texts.model, texts.variables, erased, k)
    np.testing.assert_allclose(occluded, drops, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind, methods, message", [
    ("signals", ["saliency", "features", "hand_made"], "`methods` features, hand_made do not apply to a run of "
     "signals: choose from activations, filters, saliency, "),
    ("texts", ["grad_cam", "filters"], "`methods` grad_cam, filters do not apply to a run of texts: choose from "
     "activations, saliency, "),
])
def test_a_method_that_does_not_apply_to_sequences_is_one_line_and_writes_nothing(kind, methods, message, request,
                                                                                   tmp_path):
    run = request.getfixturevalue(kind)
    with pytest.raises(UserError) as error:
        inspect(run, tmp_path, methods, [0])
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    assert os.listdir(tmp_path) == []
    with pytest.raises(UserError, match=f"^`image_files` are for runs of images, and {run.dataset.name} holds "):
        report.choose(run.dataset, [], ["a.png"])


def test_a_layer_position_is_drawn_over_the_inputs_it_is_computed_around():
    assert figures.alignment(40, 40) == (1, 0) and figures.alignment(40, 5) == (8, 0)  # "same", then pooled.
    assert figures.alignment(10, 6) == (1, 2)  # A 5-word "valid" window: position j over word j + 2, its middle.
    assert figures.alignment(41, 20) == (2, 0.5)  # A pooling that drops the last step.


def test_tensorboard_snapshots_of_sequence_models_are_a_row_per_channel(signals, texts):
    pictures = snapshot.snapshot(signals.model, signals.variables, signals.dataset.test_images[0])
    assert pictures["filters/ConvBlock_0/Conv_0"].shape == (64, 5, 1)  # A row per kernel, its 5 taps.
    assert pictures["activations/ConvBlock_1"].shape == (64, 10, 1)  # A row per channel along 10 positions.
    assert all(picture.dtype == np.uint8 for picture in pictures.values())
    known = taps.layers(texts.model, texts.variables, texts.dataset.image_shape)
    assert taps.embedding_layer(known) == "Embedding_0/Embed_0"  # The lookup the attribution starts from, but
    assert "Embedding_0/Embed_0" not in taps.default_layers(known)  # the maps show the vectors with padding zeroed.
    pictures = snapshot.snapshot(texts.model, texts.variables, texts.dataset.test_images[0])
    assert pictures["activations/Embedding_0"].shape == (300, 10, 1)
