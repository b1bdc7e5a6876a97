import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from cnn_jax import data, models
from cnn_jax.errors import UserError
from cnn_jax.training import loop, steps
from cnn_jax.training.config import Config


def fixed_batch(size=32, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.integers(0, 256, (size, 28, 28, 1)).astype(np.uint8), "label": rng.integers(0, 10, size).astype(np.int32)}


def test_one_train_step_lowers_the_loss_on_a_fixed_batch():
    state = steps.create_train_state(models.ConvNet(), Config(), (28, 28, 1))
    step = jax.jit(steps.train_step)
    batch = fixed_batch()
    state, before = step(state, batch)
    _, after = step(state, batch)  # Metrics are computed before the update: this is the loss after one step.
    assert float(after["loss"]) < float(before["loss"])
    assert int(state.step) == 1


def test_train_step_is_pure():
    state = steps.create_train_state(models.ConvNet(), Config(), (28, 28, 1))
    batch = fixed_batch()
    step = jax.jit(steps.train_step)  # Eagerly, each of the step's operations would compile on its own.
    (a, ma), (b, mb) = step(state, batch), step(state, batch)
    assert float(ma["loss"]) == float(mb["loss"])
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)


class PixelsAsLogits(nn.Module):
    """Logits are the first three pixels of the image: a model whose predictions a test can choose."""

    @nn.compact
    def __call__(self, x, train=False):
        return x.reshape(x.shape[0], -1)[:, :3]


def hand_made_state():
    return steps.TrainState.create(
        apply_fn=PixelsAsLogits().apply, params={}, batch_stats={}, rng=jax.random.PRNGKey(0), tx=optax.sgd(0.1)
    )


def test_eval_step_counts_correct_predictions_and_ignores_masked_examples():
    image = np.zeros((5, 1, 3, 1), np.uint8)
    image[:, 0, :, 0] = [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 0, 0], [0, 255, 0]]  # argmax 0, 1, 2, 0, 1
    batch = {"image": image, "label": np.array([0, 1, 0, 2, 2]), "mask": np.array([1, 1, 1, 1, 0], np.float32)}
    sums = steps.eval_step(hand_made_state(), batch)
    assert float(sums["correct"]) == 2 and float(sums["count"]) == 4
    logits = data.normalize(image).reshape(5, 3)[:4]
    expected_loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"][:4]).sum()
    np.testing.assert_allclose(float(sums["loss"]), float(expected_loss), rtol=1e-6)


def test_evaluate_gives_the_same_answer_for_any_batch_size():
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (23, 1, 3, 1)).astype(np.uint8), rng.integers(0, 3, 23).astype(np.int32)
    state = hand_made_state()
    results = [loop.evaluate(jax.jit(steps.eval_step), state, data.batches(images, labels, size))[0]
               for size in (1, 5, 23, 64)]
    for result in results[1:]:
        assert result["accuracy"] == results[0]["accuracy"]
        np.testing.assert_allclose(result["loss"], results[0]["loss"], rtol=1e-6)
    predictions = images.reshape(23, 3).argmax(-1)
    assert results[0]["accuracy"] == pytest.approx(np.mean(predictions == labels))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("batch_size", 0, "`batch_size` must be a positive integer, got 0"),
        ("epochs", -1, "`epochs` must be a positive integer, got -1"),
        ("learning_rate", 0.0, "`learning_rate` must be > 0, got 0.0"),
        ("learning_rate", float("nan"), "`learning_rate` must be > 0, got nan"),
        ("max_steps", -5, "`max_steps` must be >= 0, got -5"),
        ("vocab_size", 2, r"`vocab_size` must be at least 3 \(padding, unknown and one word\), got 2"),
        ("min_count", 0, "`min_count` must be a positive integer, got 0"),
        ("max_length", -1, "`max_length` must be >= 0, got -1"),
        ("max_norm", -3.0, "`max_norm` must be a norm >= 0"),
    ],
)
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(UserError, match=message):
        Config(**{field: value}).validate()


def test_batch_larger_than_the_training_set_is_refused_before_writing(tmp_path, idx_dir):
    config = Config(data_dir=idx_dir, batch_size=1000)
    with pytest.raises(UserError, match="`batch_size`=1000 exceeds the 300 training examples"):
        loop.train_and_evaluate(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, message", [("results.json", "holds a finished run"),
                                           ("metrics.jsonl", "holds a run without config.json")])
def test_a_workdir_holding_a_run_it_cannot_resume_is_refused(tmp_path, idx_dir, name, message):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / name).write_text("{}")
    with pytest.raises(UserError, match=message):
        loop.train_and_evaluate(Config(data_dir=idx_dir), str(tmp_path / "run"))


def test_cosine_schedule_decays_from_the_learning_rate_to_zero_and_constant_stays():
    cosine = steps.learning_rate_schedule(Config(learning_rate=0.01, lr_schedule="cosine"), total_steps=100)
    assert float(cosine(0)) == pytest.approx(0.01)
    assert float(cosine(50)) == pytest.approx(0.005)
    assert float(cosine(100)) == pytest.approx(0.0)
    constant = steps.learning_rate_schedule(Config(learning_rate=0.01, lr_schedule="constant"), total_steps=100)
    assert float(constant(0)) == float(constant(100)) == pytest.approx(0.01)


def test_flip_augmentation_depends_only_on_seed_and_step():
    state = steps.create_train_state(models.ConvNet(), Config(), (28, 28, 1))
    batch = fixed_batch()
    step = jax.jit(steps.train_step, static_argnums=2)
    (a, _), (b, _) = step(state, batch, "flip"), step(state, batch, "flip")
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    c, _ = step(state, batch, "none")
    assert not np.array_equal(a.params["DenseHead_0"]["Dense_0"]["kernel"], c.params["DenseHead_0"]["Dense_0"]["kernel"])


def test_an_unwritable_workdir_is_refused_before_training(tmp_path, idx_dir):
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match=r"`workdir`=.*/file/run is not writable \(Not a directory\)"):
        loop.train_and_evaluate(Config(data_dir=idx_dir), str(tmp_path / "file" / "run"))


@pytest.mark.parametrize("loss_name", ["sigmoid_cross_entropy", "l2"])
def test_train_and_eval_steps_use_the_configured_loss(loss_name):
    from cnn_jax.layers import losses

    loss = losses.lookup(loss_name)
    image = np.zeros((2, 1, 3, 1), np.uint8)
    image[:, 0, :, 0] = [[255, 0, 0], [0, 128, 0]]
    batch = {"image": image, "label": np.array([0, 2]), "mask": np.ones(2, np.float32)}
    logits = data.normalize(image).reshape(2, 3)
    sums = steps.eval_step(hand_made_state(), batch, loss=loss)
    np.testing.assert_allclose(float(sums["loss"]), float(loss(logits, batch["label"]).sum()), rtol=1e-6)
    _, metrics = steps.train_step(hand_made_state(), batch, loss=loss)
    np.testing.assert_allclose(float(metrics["loss"]), float(loss(logits, batch["label"]).mean()), rtol=1e-6)
