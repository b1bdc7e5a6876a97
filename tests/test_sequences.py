"""One-dimensional convolutions: the blocks along sequences against NumPy, the 1-D spec, Kim's textcnn, MNIST-1D and
texts through the training loop, and the checks that a model meets the data it takes."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ffi_targets, normal, write_reviews

from cnn_jax import data, layers, models
from cnn_jax.analysis import arithmetic
from cnn_jax.data import text
from cnn_jax.errors import UserError
from cnn_jax.kernels import ffi
from cnn_jax.layers import pooling
from cnn_jax.models import spec
from cnn_jax.training import loop, steps, trained, transfer
from cnn_jax.training.config import Config

KEY = jax.random.key(0)


def numpy_conv1d(x, kernel, bias, stride=1, padding=0):
    """Cross-correlation along the length of `x` [b, l, c] with `kernel` [k, c, o]: one output position at a time."""
    x = np.pad(x, ((0, 0), (padding, padding), (0, 0)))
    k = kernel.shape[0]
    starts = range(0, x.shape[1] - k + 1, stride)
    return np.stack([np.einsum("bkc,kco->bo", x[:, t : t + k], kernel) for t in starts], axis=1) + bias


@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 0), (1, 2)])
def test_a_conv_block_on_a_sequence_is_numpy_correlation_along_its_length(stride, padding):
    block = layers.ConvBlock(4, kernel_size=3, strides=stride, padding=padding, batch_norm=False,
                             activation=lambda x: x)
    x = normal(0, (2, 9, 3))
    variables = block.init(KEY, x)
    conv = variables["params"]["Conv_0"]
    assert conv["kernel"].shape == (3, 3, 4)  # [k, in, out]: a kernel 3 long, not 3×3.
    expected = numpy_conv1d(np.asarray(x), np.asarray(conv["kernel"]), np.asarray(conv["bias"]), stride, padding)
    np.testing.assert_allclose(block.apply(variables, x), expected, rtol=1e-5, atol=1e-5)


def test_a_conv_block_with_batch_norm_relu_and_max_pool_on_a_sequence_trains_like_numpy():
    block = layers.ConvBlock(4, kernel_size=5, padding=2, pool=pooling.max_pool_2x2)
    x = normal(1, (3, 8, 2))
    variables = block.init(KEY, x)
    out, updates = block.apply(variables, x, train=True, mutable=["batch_stats"])
    conv = variables["params"]["Conv_0"]
    z = numpy_conv1d(np.asarray(x), np.asarray(conv["kernel"]), np.asarray(conv["bias"]), padding=2)
    normalised = (z - z.mean((0, 1))) / np.sqrt(z.var((0, 1)) + layers.blocks.EPSILON)
    expected = np.maximum(normalised, 0).reshape(3, 4, 2, 4).max(axis=2)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["BatchNorm_0"]["mean"], 0.1 * z.mean((0, 1)), rtol=1e-5,
                               atol=1e-6)


def numpy_pool1d(x, window, stride, padding, reduce, fill):
    """Pools `x` [b, l, c] one window at a time; `reduce` maps a window [b, k, c] to [b, c]."""
    x = np.pad(x, ((0, 0), (padding, padding), (0, 0)), constant_values=fill)
    return np.stack([reduce(x[:, t : t + window]) for t in range(0, x.shape[1] - window + 1, stride)], axis=1)


def gaussian_1d(window, sigma):
    weights = np.exp(-((np.arange(window) - (window - 1) / 2) ** 2) / (2 * sigma**2))
    return weights / weights.sum()


POOLINGS_1D = {  # name, options, reduction of a window [b, k, c], padding fill
    "max": ("max", {}, lambda v: v.max(1), -np.inf),
    "avg": ("avg", {}, lambda v: v.mean(1), 0.0),
    "l2": ("l2", {}, lambda v: np.sqrt((v**2).sum(1)), 0.0),
    "gaussian": ("gaussian", {"sigma": 0.8}, lambda v: np.einsum("bkc,k->bc", v, gaussian_1d(v.shape[1], 0.8)), 0.0),
    "stochastic": ("stochastic", {}, lambda v: (np.maximum(v, 0) ** 2).sum(1) / np.maximum(np.maximum(v, 0).sum(1),
                                                                                          1e-30), 0.0),
}


@pytest.mark.parametrize("window, stride, padding", [(2, None, 0), (3, 2, 1), (3, 1, 2)])
@pytest.mark.parametrize("name", POOLINGS_1D)
def test_windowed_poolings_along_a_sequence_equal_numpy(name, window, stride, padding):
    kind, options, reduce, fill = POOLINGS_1D[name]
    x = np.random.default_rng(2).normal(size=(2, 11, 3)).astype(np.float32)
    pool = pooling.lookup(kind, window, stride, padding, **options)
    if isinstance(pool, nn.Module):
        pooled = pool.apply(pool.init(KEY, jnp.asarray(x)), jnp.asarray(x))
    else:
        pooled = pool(jnp.asarray(x))
    np.testing.assert_allclose(pooled, numpy_pool1d(x, window, stride or window, padding, reduce, fill), rtol=1e-5,
                               atol=1e-6)


def test_global_poolings_spp_and_fractional_pool_over_time():
    x = np.random.default_rng(3).normal(size=(2, 7, 3)).astype(np.float32)
    np.testing.assert_array_equal(pooling.global_max_pool(jnp.asarray(x)), x.max(axis=1))
    np.testing.assert_allclose(pooling.global_avg_pool(jnp.asarray(x)), x.mean(axis=1), rtol=1e-6)
    # Pyramid levels 1 and 2 over 7 positions: all of it, then bins [0, 4) and [3, 7).
    expected = np.concatenate([x.max(1), x[:, :4].max(1), x[:, 3:].max(1)], axis=-1)
    np.testing.assert_array_equal(pooling.spatial_pyramid_pool(jnp.asarray(x), (1, 2)), expected)
    fractional = pooling.FractionalMaxPool()
    out = fractional.apply({}, jnp.asarray(x))  # Test mode: boundaries ceil(i·7/4) = 0, 2, 4, 6, 7.
    np.testing.assert_array_equal(out, np.stack([x[:, a:b].max(1) for a, b in ((0, 2), (2, 4), (4, 6), (6, 7))], 1))


def test_an_embedding_is_its_table_read_by_id_with_padding_zero():
    embedding = layers.Embedding(vocab_size=6, features=4)
    tokens = jnp.array([[3, 1, 0, 5], [2, 0, 0, 0]])
    variables = embedding.init(KEY, tokens)
    table = np.asarray(variables["params"]["Embed_0"]["embedding"])
    assert table.shape == (6, 4) and np.abs(table).max() <= 0.25  # Kim's uniform [−0.25, 0.25].
    expected = np.where(np.asarray(tokens)[..., None] != 0, table[np.asarray(tokens)], 0.0)
    np.testing.assert_array_equal(embedding.apply(variables, tokens), expected)
    grad = jax.grad(lambda v: embedding.apply(v, tokens).sum())(variables)["params"]["Embed_0"]["embedding"]
    assert np.all(np.asarray(grad)[0] == 0) and np.all(np.asarray(grad)[3] == 1)  # Padding takes no gradient.


@pytest.mark.parametrize("text, inputs", [("c8k5-max-c16s2-avgk3-fc32:1d", data.SIGNALS),
                                          ("emb16-c8-max-c8k5p0-global_max-fc8:drop=0.5", data.TOKENS),
                                          ("c8-max-fc8", data.IMAGES)])
def test_a_1d_spec_round_trips_and_says_what_it_takes(text, inputs):
    model = spec.parse(text)(num_classes=3)
    assert spec.to_spec(model) == text and models.inputs_of(model) == inputs


def test_a_1d_spec_takes_signals_and_refuses_images():
    model = models.lookup("c8k5-max-c8k3-global_max:1d")(num_classes=3)
    signals = jax.ShapeDtypeStruct((2, 40, 1), jnp.float32)
    logits, variables = jax.eval_shape(lambda x: model.init_with_output(KEY, x), signals)
    assert logits.shape == (2, 3)
    with pytest.raises(UserError, match=r"takes \[batch, length, channels\] signals, not an input of shape"):
        jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32))


@pytest.mark.parametrize("text, message", [
    ("c8-emb16", "token 2 'emb16' at column 4 is an embedding, which comes first"),
    ("c8k9p0-max:1d", "layer 1 'c8k9p0' on its 5 input"),
])
def test_bad_1d_specs_give_one_line(text, message):
    with pytest.raises(UserError) as error:
        model = models.lookup(text)(num_classes=2)
        model.init(KEY, jnp.zeros((1, 5, 1)))
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("vocab, width, windows, maps, classes", [(1000, 300, (3, 4, 5), 100, 2), (50, 8, (2,), 3, 5)])
def test_textcnn_has_the_parameters_of_its_formula(vocab, width, windows, maps, classes):
    model = models.lookup("textcnn")(num_classes=classes).clone(vocab_size=vocab, embedding=width, windows=windows,
                                                              maps=maps)
    variables = jax.eval_shape(model.init, KEY, jnp.zeros((1, 20), jnp.int32))
    formula = vocab * width + sum(k * width * maps + maps for k in windows) + (len(windows) * maps + 1) * classes
    assert arithmetic.count_params(variables["params"]) == formula


def test_textcnn_needs_texts_at_least_as_long_as_its_widest_window():
    model = models.lookup("textcnn")(num_classes=2).clone(vocab_size=10)
    with pytest.raises(UserError, match="textcnn's 5-word convolution: kernel spans 5 pixels, more than"):
        jax.eval_shape(model.init, KEY, jnp.zeros((1, 4), jnp.int32))


def test_max_norm_rescales_only_the_classifier_columns_longer_than_the_limit():
    model = models.lookup("c4k3-global_max:1d")(num_classes=3)
    state = steps.create_train_state(model, Config(max_norm=0.5), (10, 1))
    assert state.max_norm == ("DenseHead_0/Dense_0", 0.5)
    kernel = jnp.array([[3.0, 0.1, 0.0], [4.0, 0.1, 1.0], [0.0, 0.1, 0.0], [0.0, 0.1, 0.0]])  # Norms 5, 0.2, 1.
    params = transfer.flat(state.params)
    params["DenseHead_0/Dense_0/kernel"] = kernel
    constrained = steps.constrained(state.replace(params=transfer.unflat(params)))
    got = transfer.flat(constrained.params)
    np.testing.assert_allclose(got["DenseHead_0/Dense_0/kernel"], kernel * jnp.array([0.1, 1.0, 0.5]), rtol=1e-6)
    assert all(np.array_equal(got[path], value) for path, value in params.items() if "Dense" not in path)


@pytest.fixture(scope="module")
def mnist1d():
    return data.load_dataset("mnist1d")


def test_mnist1d_is_4000_and_1000_standardised_signals_of_length_40_and_leaves_numpy_seeded_as_it_was(mnist1d):
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    data.mnist1d._generated.cache_clear()  # Generated again, not read from this process's cache.
    again = data.load_dataset("mnist1d")
    assert np.random.random() == expected  # The mnist1d package seeds NumPy's global generator: put back.
    assert not again.train_images.flags.writeable  # Shared by every load in the process.
    assert mnist1d.kind == data.SIGNALS and mnist1d.train_images.shape == (4000, 40, 1)
    assert mnist1d.test_images.shape == (1000, 40, 1) and mnist1d.train_images.dtype == np.float32
    assert np.array_equal(again.train_images, mnist1d.train_images) and mnist1d.num_classes == 10
    assert np.bincount(mnist1d.train_labels).min() > 350
    whole = np.concatenate([mnist1d.train_images, mnist1d.test_images])
    assert abs(whole.mean()) < 1e-5 and abs(whole.std() - 1) < 1e-4


def test_a_model_that_takes_other_inputs_than_the_dataset_holds_is_one_line(idx_dir):
    cases = [(Config(dataset="mnist1d", model="resnet18"), "model 'resnet18' takes images, but mnist1d holds signals; "
              "use convnet1d, or a spec ending in :1d"),
             (Config(data_dir=idx_dir, model="convnet1d"), "model 'convnet1d' takes signals, but fashion_mnist holds "
              "images"),
             (Config(dataset="mnist1d", image_size="32"), "`image_size` and `channels` apply to images, and mnist1d "
              "holds signals")]
    for config, message in cases:
        with pytest.raises(UserError) as error:
            loop.plan(config)
        assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.slow  # Three short trainings; the loop's resumption is tested on images and texts in the everyday suite.
def trained_whole_and_resumed(config, tmp_path, capsys, stop_at: int) -> dict:
    """results.json of `config` trained uninterrupted in tmp_path/whole, after checking that a run stopped at step
    `stop_at` in tmp_path/resumed resumes to the same metrics.jsonl and results."""
    uninterrupted = loop.train_and_evaluate(config, str(tmp_path / "whole"))
    asked = iter(range(1, 10**6))
    with pytest.raises(loop.Preempted, match=f"stopped at step {stop_at}"):
        loop.train_and_evaluate(config, str(tmp_path / "resumed"), checkpoint_every=2,
                                stop_requested=lambda: next(asked) >= stop_at)
    capsys.readouterr()
    resumed = loop.train_and_evaluate(config, str(tmp_path / "resumed"))
    assert f"resuming at step {stop_at}" in capsys.readouterr().out
    metrics = [(tmp_path / name / "metrics.jsonl").read_text() for name in ("whole", "resumed")]
    assert metrics[0] == metrics[1] and resumed["test_accuracy"] == uninterrupted["test_accuracy"]
    return uninterrupted


def test_mnist1d_trains_convnet1d_by_default_and_resumes_to_the_uninterrupted_end(tmp_path, capsys):
    config = Config(dataset="mnist1d", max_train_examples=600, max_test_examples=200, epochs=3, batch_size=50)
    assert config.model == "" and loop.plan(config)[0].inputs == data.SIGNALS
    results = trained_whole_and_resumed(config, tmp_path, capsys, stop_at=4)
    assert results["model"] == "convnet1d" and results["image_shape"] == [40, 1]
    assert results["test_accuracy"] > 0.35  # After 36 steps (43% when written); chance is 10%.
    assert json.loads((tmp_path / "whole" / "config.json").read_text())["model"] == "convnet1d"


def test_a_sequence_models_blocks_run_on_xla_not_the_image_kernels():
    # The seed network's 2×2 pool fuses with BatchNorm and ReLU on images; along a sequence nothing matches it.
    assert ffi_targets(models.lookup("convnet")(num_classes=10), (8, 28, 28, 1)) or not ffi.load()
    assert not ffi_targets(models.lookup("convnet1d")(num_classes=10), (8, 40, 1))


def test_texts_train_textcnn_by_default_and_resume_with_their_saved_vocabulary(tmp_path, capsys):
    reviews = write_reviews(tmp_path / "reviews.csv")
    config = Config(dataset="text", data_dir=reviews, epochs=3, batch_size=16, min_count=1, max_norm=3.0)
    results = trained_whole_and_resumed(config, tmp_path, capsys, stop_at=5)
    assert results["model"] == "textcnn" and results["test_accuracy"] >= 0.9
    saved = text.read_vocabulary(str(tmp_path / "whole" / text.VOCABULARY_FILE))
    assert saved == loop.plan(config)[1].vocabulary and {"good", "awful", "<pad>", "<unk>"} <= set(saved)
    assert text.read_vocabulary(str(tmp_path / "resumed" / text.VOCABULARY_FILE)) == saved
    # New texts (`experiments.predict`): token ids as the training texts were made, through the run read back.
    run = trained.load(str(tmp_path / "whole"))
    ids = text.encode_texts(["A superb and lovely film", "awful, dull acting"], run.dataset)
    assert text.decode(ids[1], run.dataset.vocabulary) == "awful <unk> dull acting"  # No training text has ",".
    assert list(trained.probabilities(run, ids).argmax(-1)) == [run.dataset.class_names.index("good"),
                                                                run.dataset.class_names.index("bad")]
    # Texts that changed since: a rebuilt vocabulary would put the new word first; the run keeps its own.
    write_reviews(tmp_path / "reviews.csv", extra=" zebra zebra")
    assert loop.plan(config, str(tmp_path / "whole"))[1].vocabulary == saved
    assert loop.plan(config)[1].vocabulary[2] == "zebra"
