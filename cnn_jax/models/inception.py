"""InceptionV3 (Szegedy et al. 2015, "Rethinking the Inception Architecture"), in torchvision's layout.

Inception blocks again, with the large kernels factorised: a 5×5 becomes two
3×3s (Mixed_5b-d), an n×n a 1×n then an n×1 (Mixed_6b-e, 7×7), and the
grid shrinks inside blocks whose branches stride (Mixed_6a, 7a) instead of
by pooling between them. Every convolution is torchvision's BasicConv2d: no
bias, BatchNorm with eps 0.001, ReLU. At 299×299×3 and 1,000 classes the
parameter counts equal torchvision's: 23,834,568, or 27,161,264 with the
auxiliary classifier. Images are `[batch, height, width, channels]`.
"""

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.errors import UserError
from cnn_jax.layers import ConvBN, Dense
from cnn_jax.layers.pooling import adaptive_avg_pool, avg_pool, global_avg_pool, max_pool
from cnn_jax.models.base import SMALL_INPUT, Entry

MIN_SIZE = 75  # torchvision's smallest input: Mixed_7a's strided 3×3 needs 3 rows.
SMALL_MIN_SIZE = 19  # The small-image stem's smallest input, for the same reason.


def init(stddev: float) -> nn.initializers.Initializer:
    """torchvision's: a normal truncated to [-2, 2] (absolute bounds: at std 0.1, 20 standard deviations)."""
    return nn.initializers.truncated_normal(stddev, lower=-2 / stddev, upper=2 / stddev)


def Basic(features: int, kernel, strides: int = 1, valid: bool = False, stddev: float = 0.1,
          name: str | None = None) -> ConvBN:
    """torchvision's BasicConv2d: conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU; `kernel` an int or (kh, kw).
    Padded to keep the size (`kernel // 2` a side) unless `valid`."""
    kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    return ConvBN(features, kernel, strides, valid=valid, epsilon=1e-3, kernel_init=init(stddev), name=name)


def _pool_branch(x, features: int, train: bool) -> jnp.ndarray:
    """3×3/1 mean (padding counted, as PyTorch's `avg_pool2d`) -> 1×1 conv."""
    return Basic(features, 1, name="branch_pool")(avg_pool(x, 3, 1, 1), train)


class InceptionA(nn.Module):
    """Mixed_5b-d: 1×1 64 | 1×1 48 -> 5×5 64 | 1×1 64 -> 3×3 96 -> 3×3 96 | pool -> 1×1 `pool_features`."""

    pool_features: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        b1 = Basic(64, 1, name="branch1x1")(x, train)
        b5 = Basic(64, 5, name="branch5x5_2")(Basic(48, 1, name="branch5x5_1")(x, train), train)
        b3 = Basic(64, 1, name="branch3x3dbl_1")(x, train)
        b3 = Basic(96, 3, name="branch3x3dbl_3")(Basic(96, 3, name="branch3x3dbl_2")(b3, train), train)
        return jnp.concatenate([b1, b5, b3, _pool_branch(x, self.pool_features, train)], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a, the grid halves: 3×3/2 384 | 1×1 64 -> 3×3 96 -> 3×3/2 96 | 3×3/2 max-pool."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        b3 = Basic(384, 3, 2, valid=True, name="branch3x3")(x, train)
        d = Basic(96, 3, name="branch3x3dbl_2")(Basic(64, 1, name="branch3x3dbl_1")(x, train), train)
        d = Basic(96, 3, 2, valid=True, name="branch3x3dbl_3")(d, train)
        return jnp.concatenate([b3, d, max_pool(x, 3, 2)], axis=-1)


class InceptionC(nn.Module):
    """Mixed_6b-e, 7×7 factorised: 1×1 192 | 1×1 c7 -> 1×7 -> 7×1 192 | 1×1 c7 -> 7×1 -> 1×7 -> 7×1 -> 1×7 192 |
    pool -> 1×1 192."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        c7 = self.channels_7x7
        b1 = Basic(192, 1, name="branch1x1")(x, train)
        b7 = Basic(c7, 1, name="branch7x7_1")(x, train)
        b7 = Basic(192, (7, 1), name="branch7x7_3")(Basic(c7, (1, 7), name="branch7x7_2")(b7, train), train)
        d = Basic(c7, 1, name="branch7x7dbl_1")(x, train)
        for i, (features, kernel) in enumerate([(c7, (7, 1)), (c7, (1, 7)), (c7, (7, 1)), (192, (1, 7))], start=2):
            d = Basic(features, kernel, name=f"branch7x7dbl_{i}")(d, train)
        return jnp.concatenate([b1, b7, d, _pool_branch(x, 192, train)], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a, the grid halves: 1×1 192 -> 3×3/2 320 | 1×1 192 -> 1×7 -> 7×1 -> 3×3/2 192 | 3×3/2 max-pool."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        b3 = Basic(320, 3, 2, valid=True, name="branch3x3_2")(Basic(192, 1, name="branch3x3_1")(x, train), train)
        b7 = Basic(192, 1, name="branch7x7x3_1")(x, train)
        b7 = Basic(192, (7, 1), name="branch7x7x3_3")(Basic(192, (1, 7), name="branch7x7x3_2")(b7, train), train)
        b7 = Basic(192, 3, 2, valid=True, name="branch7x7x3_4")(b7, train)
        return jnp.concatenate([b3, b7, max_pool(x, 3, 2)], axis=-1)


class InceptionE(nn.Module):
    """Mixed_7b-c, widened: 1×1 320 | 1×1 384 -> (1×3 | 3×1) 384 each | 1×1 448 -> 3×3 384 -> (1×3 | 3×1) 384
    each | pool -> 1×1 192."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        b1 = Basic(320, 1, name="branch1x1")(x, train)
        b3 = Basic(384, 1, name="branch3x3_1")(x, train)
        b3 = [Basic(384, (1, 3), name="branch3x3_2a")(b3, train), Basic(384, (3, 1), name="branch3x3_2b")(b3, train)]
        d = Basic(384, 3, name="branch3x3dbl_2")(Basic(448, 1, name="branch3x3dbl_1")(x, train), train)
        d = [Basic(384, (1, 3), name="branch3x3dbl_3a")(d, train), Basic(384, (3, 1), name="branch3x3dbl_3b")(d, train)]
        return jnp.concatenate([b1, *b3, *d, _pool_branch(x, 192, train)], axis=-1)


class InceptionAux(nn.Module):
    """The auxiliary classifier on Mixed_6e: 5×5/3 mean -> 1×1 conv 128 -> 5×5 conv 768 -> mean -> FC.

    On a map too small for the 5×5/3 mean to leave 5×5 (from inputs below
    299), an adaptive mean to 5×5 stands in for it: the same weights. In
    training its logits are also sown as `aux_logits` `logits`."""

    num_classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = avg_pool(x, 5, 3) if min(x.shape[1:3]) >= 17 else adaptive_avg_pool(x, 5)
        x = Basic(128, 1, name="conv0")(x, train)
        x = Basic(768, 5, valid=True, stddev=0.01, name="conv1")(x, train)
        logits = Dense(self.num_classes, kernel_init=init(0.001), name="fc")(global_avg_pool(x))
        if train:
            self.sow("aux_logits", "logits", logits)
        return logits


class InceptionV3(nn.Module):
    """stem -> Mixed_5b-d (35×35 at 299) -> 6a -> 6b-e (17×17) -> 7a -> 7b-c (8×8) -> mean -> dropout 0.5 -> FC.

    The stem is torchvision's from 75 rows and columns up (below, a one-line
    error names the minimum): 3×3/2 conv 32, 3×3 conv 32, 3×3 conv 64
    (padded), 3×3/2 max-pool, 1×1 conv 80, 3×3 conv 192, 3×3/2 max-pool.
    Below `SMALL_INPUT` (64: MNIST, CIFAR), like the zoo's other ImageNet
    models, it adapts: the first convolution is a padded 3×3/1 and the first
    max-pool goes, so Mixed_5, 6 and 7 see 11, 5 and 2 rows from 28 (13, 6
    and 2 from 32), with the same weights but for the first layer's input
    channels. From `SMALL_MIN_SIZE` (19) up.

    With `aux_logits`, the auxiliary classifier (on Mixed_6e) runs in
    training only and its logits are sown in the `aux_logits` collection
    (`AuxLogits/logits`),
    which the training loss adds with weight 0.3 (`cnn_jax.training.steps`);
    its parameters are created at `init` whatever `train` is.
    """

    num_classes: int = 1000
    aux_logits: bool = False
    dropout: float = 0.5

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        size = min(x.shape[1:3])
        small = size < SMALL_INPUT
        if size < (SMALL_MIN_SIZE if small else MIN_SIZE):
            raise UserError(f"inception_v3 needs images of at least {MIN_SIZE}×{MIN_SIZE} (or, below "
                            f"{SMALL_INPUT}×{SMALL_INPUT}, its small-image stem's {SMALL_MIN_SIZE}×{SMALL_MIN_SIZE}); "
                            f"got {x.shape[1]}×{x.shape[2]}: raise `image_size`")
        x = Basic(32, 3, 1 if small else 2, valid=not small, name="Conv2d_1a_3x3")(x, train)
        x = Basic(32, 3, valid=True, name="Conv2d_2a_3x3")(x, train)
        x = Basic(64, 3, name="Conv2d_2b_3x3")(x, train)
        x = x if small else max_pool(x, 3, 2)
        x = Basic(80, 1, name="Conv2d_3b_1x1")(x, train)
        x = max_pool(Basic(192, 3, valid=True, name="Conv2d_4a_3x3")(x, train), 3, 2)
        for name, features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
            x = InceptionA(features, name=name)(x, train)
        x = InceptionB(name="Mixed_6a")(x, train)
        for name, channels in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
            x = InceptionC(channels, name=name)(x, train)
        if self.aux_logits and (train or self.is_initializing()):
            InceptionAux(self.num_classes, name="AuxLogits")(x, train)
        x = InceptionD(name="Mixed_7a")(x, train)
        x = InceptionE(name="Mixed_7c")(InceptionE(name="Mixed_7b")(x, train), train)
        x = nn.Dropout(self.dropout, deterministic=not train)(global_avg_pool(x))
        return Dense(self.num_classes, kernel_init=init(0.1), name="fc")(x)


MODELS = {
    "inception_v3": Entry(InceptionV3, "Factorised convolutions (5×5 as two 3×3s, 7×7 as 1×7 then 7×1) and "
                                       "grids shrunk inside strided blocks; auxiliary classifier."),
}
