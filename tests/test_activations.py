import math

import numpy as np
import pytest

from cnn_jax.errors import UserError
from cnn_jax.layers import activations

X = np.linspace(-6, 6, 97).astype(np.float32)
erf = np.vectorize(math.erf)

NUMPY = {
    "relu": lambda x: np.maximum(x, 0),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "tanh": np.tanh,
    "abs_tanh": lambda x: np.abs(np.tanh(x)),
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.01 * x),
    "elu": lambda x: np.where(x > 0, x, np.expm1(x)),
    "gelu": lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3))),
    "silu": lambda x: x / (1 + np.exp(-x)),
}


def test_every_activation_has_a_numpy_reference():
    assert set(NUMPY) == set(activations.ACTIVATIONS)


@pytest.mark.parametrize("name", NUMPY)
def test_activation_matches_numpy(name):
    np.testing.assert_allclose(activations.lookup(name)(X), NUMPY[name](X.astype(np.float64)), rtol=1e-5, atol=1e-6)


def test_gelu_is_the_tanh_approximation_of_x_times_the_normal_cdf():
    exact = 0.5 * X * (1 + erf(X / np.sqrt(2)))
    np.testing.assert_allclose(activations.lookup("gelu")(X), exact, atol=1e-3)


def test_unknown_activation_lists_the_choices():
    with pytest.raises(UserError, match="unknown activation 'swish': choose one of relu, sigmoid, tanh, abs_tanh"):
        activations.lookup("swish")
