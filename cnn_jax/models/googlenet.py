"""GoogLeNet / Inception v1 (Szegedy et al. 2014, "Going Deeper with Convolutions"), in torchvision's layout.

An Inception block runs 1×1, 3×3 and "5×5" convolutions and a max-pool side
by side and concatenates them; 1×1 convolutions first shrink the channels so
the wide kernels stay cheap. Like torchvision (its issue #906), the "5×5"
branch is a 3×3 convolution, so the parameter counts equal torchvision's at
224×224×3 and 1000 classes: 6,624,904, or 13,004,888 with the auxiliary
heads. Images are `[batch, height, width, channels]`.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.layers import ConvBN, Dense
from cnn_jax.layers.pooling import adaptive_avg_pool, global_avg_pool, max_pool, max_pool_ceil
from cnn_jax.models.base import SMALL_INPUT, Entry

# torchvision draws every weight from N(0, 0.01²) truncated to [-2, 2], i.e. 200 standard deviations: a normal.
init = nn.initializers.normal(0.01)


def BasicConv(features: int, kernel: int, strides: int = 1, name: str | None = None) -> ConvBN:
    """torchvision's BasicConv2d: conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU."""
    return ConvBN(features, (kernel, kernel), strides, epsilon=1e-3, kernel_init=init, name=name)


class Inception(nn.Module):
    """Four branches concatenated on channels: 1×1 | 1×1 -> 3×3 | 1×1 -> 3×3 | 3×3/1 max-pool -> 1×1.

    Output channels: ch1x1 + ch3x3 + ch5x5 + pool_proj.
    """

    ch1x1: int
    ch3x3red: int
    ch3x3: int
    ch5x5red: int
    ch5x5: int  # A 3×3 convolution, as torchvision's.
    pool_proj: int

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        branch1 = BasicConv(self.ch1x1, 1)(x, train)
        branch2 = BasicConv(self.ch3x3, 3)(BasicConv(self.ch3x3red, 1)(x, train), train)
        branch3 = BasicConv(self.ch5x5, 3)(BasicConv(self.ch5x5red, 1)(x, train), train)
        branch4 = BasicConv(self.pool_proj, 1)(max_pool(x, window=3, stride=1, padding=1), train)
        return jnp.concatenate([branch1, branch2, branch3, branch4], axis=-1)


class InceptionAux(nn.Module):
    """Auxiliary classifier: 4×4 adaptive mean -> 1×1 conv 128 -> FC 1024 -> ReLU -> dropout 0.7 -> FC; in training,
    its logits are also sown as `aux_logits` `logits`."""

    num_classes: int

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = BasicConv(128, 1)(adaptive_avg_pool(x, 4), train)
        x = nn.relu(Dense(1024, kernel_init=init)(x.reshape(x.shape[0], -1)))
        x = nn.Dropout(0.7, deterministic=not train)(x)
        logits = Dense(self.num_classes, kernel_init=init)(x)
        if train:
            self.sow("aux_logits", "logits", logits)
        return logits


# (ch1x1, ch3x3red, ch3x3, ch5x5red, ch5x5, pool_proj) of each Inception block, and where the max-pools go.
STAGES: Sequence[Sequence[tuple[int, ...]]] = (
    ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64)),  # 3a, 3b
    ((192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64), (128, 128, 256, 24, 64, 64),
     (112, 144, 288, 32, 64, 64), (256, 160, 320, 32, 128, 128)),  # 4a-4e
    ((256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)),  # 5a, 5b
)


class GoogLeNet(nn.Module):
    """stem -> inception 3a-b -> pool -> 4a-e -> pool -> 5a-b -> mean -> dropout 0.2 -> FC.

    The stem depends on the input's height, at call time. From `SMALL_INPUT`
    (64) rows up it is torchvision's: 7×7/2 conv 64, 3×3/2 max-pool, 1×1 conv
    64, 3×3 conv 192, 3×3/2 max-pool (224 -> 28 at inception 3, 14 at 4,
    7 at 5). Below, the 7×7/2 conv becomes a 3×3/1 conv (64·3·3·c instead of
    64·7·7·c weights for c input channels) and the first max-pool goes, so
    inception 3, 4, 5 see 16, 8, 4 rows from 32 (14, 7, 4 from 28). Max-pools
    round up, as torchvision's (`ceil_mode=True`).

    With `aux_logits`, two auxiliary classifiers (after 4a and 4d) run in
    training only; `__call__` still returns the main logits, and the
    auxiliary logits are sown in the `aux_logits` collection, as
    `aux1/logits` and `aux2/logits`, each a one-element tuple (get them with
    `mutable=["batch_stats", "aux_logits"]`; the training loss adds each with
    weight 0.3, `cnn_jax.training.steps`). Their parameters are created at
    `init` whatever `train` is.
    """

    num_classes: int = 1000
    aux_logits: bool = False
    dropout: float = 0.2

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        if x.shape[1] >= SMALL_INPUT:
            x = max_pool_ceil(BasicConv(64, 7, strides=2, name="conv1")(x, train), 3, 2)
        else:
            x = BasicConv(64, 3, name="conv1")(x, train)
        x = BasicConv(64, 1, name="conv2")(x, train)
        x = BasicConv(192, 3, name="conv3")(x, train)
        for stage, blocks in enumerate(STAGES, start=3):
            x = max_pool_ceil(x, 3, 2) if stage < 5 else max_pool_ceil(x, 2, 2)
            for i, channels in enumerate(blocks):
                name = f"inception{stage}{'abcde'[i]}"
                x = Inception(*channels, name=name)(x, train)
                aux = {"inception4a": "aux1", "inception4d": "aux2"}.get(name)
                if aux and self.aux_logits and (train or self.is_initializing()):
                    InceptionAux(self.num_classes, name=aux)(x, train)
        x = nn.Dropout(self.dropout, deterministic=not train)(global_avg_pool(x))
        return Dense(self.num_classes, kernel_init=init, name="fc")(x)


MODELS = {
    "googlenet": Entry(GoogLeNet, "Inception blocks: parallel 1×1/3×3/pool branches, with 1×1 convs shrinking channels first."),
}
