import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn_jax.errors import UserError
from cnn_jax.layers import losses
from cnn_jax.training.config import Config

K = 5


def random_logits_and_labels(seed=0, b=6):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(b, K)).astype(np.float32) * 3, rng.integers(0, K, size=b)


def numpy_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_cross_entropy_matches_numpy_with_and_without_label_smoothing(smoothing):
    logits, labels = random_logits_and_labels()
    targets = np.eye(K)[labels] * (1 - smoothing) + smoothing / K
    want = -(targets * numpy_log_softmax(logits.astype(np.float64))).sum(axis=-1)
    got = losses.lookup("softmax_cross_entropy", smoothing)(jnp.asarray(logits), jnp.asarray(labels))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_softmax_cross_entropy_takes_class_indices_or_distributions_alike():
    logits, labels = random_logits_and_labels(1)
    np.testing.assert_allclose(losses.softmax_cross_entropy(logits, labels),
                               losses.softmax_cross_entropy(logits, np.eye(K, dtype=np.float32)[labels]), rtol=1e-6)


def test_sigmoid_cross_entropy_sums_independent_binary_losses_for_multi_label_targets():
    logits, _ = random_logits_and_labels(2)
    targets = (np.random.default_rng(3).random((6, K)) < 0.4).astype(np.float32)  # Several labels per example.
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    want = -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).sum(axis=-1)
    np.testing.assert_allclose(losses.lookup("sigmoid_cross_entropy")(logits, targets), want, rtol=1e-5)


def test_l2_is_half_the_squared_euclidean_distance_to_real_valued_targets():
    logits, _ = random_logits_and_labels(4)
    targets = np.random.default_rng(5).normal(size=(6, K)).astype(np.float32)
    want = 0.5 * ((logits - targets) ** 2).sum(axis=-1)
    np.testing.assert_allclose(losses.lookup("l2")(logits, targets), want, rtol=1e-5)


def test_l2_and_sigmoid_losses_train_on_class_indices_as_one_hot_targets():
    logits, labels = random_logits_and_labels(6)
    one_hot = np.eye(K, dtype=np.float32)[labels]
    for name in ("l2", "sigmoid_cross_entropy"):
        np.testing.assert_allclose(losses.lookup(name)(logits, labels), losses.lookup(name)(logits, one_hot))


def test_every_loss_gradient_lowers_it():
    logits, labels = random_logits_and_labels(7)
    for name in losses.LOSSES:
        loss = lambda z: losses.lookup(name)(z, labels).mean()  # noqa: E731
        stepped = logits - 0.1 * jax.grad(loss)(jnp.asarray(logits))
        assert loss(stepped) < loss(logits), name


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"loss": "hinge"}, "unknown loss 'hinge': choose one of softmax_cross_entropy, sigmoid_cross_entropy, l2"),
        ({"loss": "l2", "label_smoothing": 0.1}, "label smoothing applies to softmax_cross_entropy only"),
        ({"label_smoothing": 1.0}, r"`label_smoothing` must be in \[0, 1\)"),
    ],
)
def test_bad_loss_configurations_are_refused_with_the_fix(fields, message):
    with pytest.raises(UserError, match=message):
        Config(**fields).validate()
