"""cnn_jax: convolutional neural networks in JAX/Flax, built to be trained and dissected."""

__version__ = "0.1.0"
