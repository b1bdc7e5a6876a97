"""LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998) in the layout textbooks use.

Tensors are `[batch, height, width, channels]`.
"""

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.layers.blocks import Activation, Conv, Dense
from cnn_jax.layers.pooling import adaptive_avg_pool, avg_pool
from cnn_jax.models.base import Entry


class LeNet5(nn.Module):
    """C1 CONV 5×5×6 -> S2 AVG POOL 2×2 -> C3 CONV 5×5×16 -> S4 AVG POOL -> C5 CONV 5×5×120 -> F6 FC 84 -> FC.

    61,706 trainable parameters at 32×32×1 and 10 classes:
    C1 (5·5·1 + 1)·6 = 156, C3 (5·5·6 + 1)·16 = 2,416, C5 (5·5·16 + 1)·120 =
    48,120, F6 (120 + 1)·84 = 10,164, output (84 + 1)·10 = 850.

    Differences from the paper: tanh (the paper's is 1.7159·tanh(2x/3)) after
    every layer but the output; S2/S4 are plain averages (the paper's
    subsampling units have a trainable coefficient and bias each); C3 sees
    all six S2 maps (the paper's connection table links each C3 map to three
    to six of them); the output is a dense layer of logits (the paper's is
    Euclidean RBF units).

    Other input sizes: images smaller than 32×32 (MNIST's 28×28) are
    zero-padded by 2 in C1, as LeCun centred the digits in a 32×32 field, so
    the layout is the classic one; on larger images S4's map is averaged to
    5×5 (`adaptive_avg_pool`) so C5 still sees 5×5 and the count does not
    change with image size (at 224×224, S4 is 53×53).
    """

    num_classes: int = 10
    activation: Activation = nn.tanh

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        padding = 2 if min(x.shape[1:3]) < 32 else 0
        x = self.activation(Conv(6, (5, 5), padding=[(padding, padding)] * 2, name="C1")(x))
        x = avg_pool(x, 2)
        x = self.activation(Conv(16, (5, 5), padding="VALID", name="C3")(x))
        x = adaptive_avg_pool(avg_pool(x, 2), 5)
        x = self.activation(Conv(120, (5, 5), padding="VALID", name="C5")(x))
        x = self.activation(Dense(84, name="F6")(x.reshape(x.shape[0], -1)))
        return Dense(self.num_classes, name="output")(x)


MODELS = {
    "lenet5": Entry(LeNet5, "The convolution -> subsampling -> dense pattern every later CNN elaborates (1998)."),
}
