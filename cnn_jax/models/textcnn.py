"""Kim (2014)'s sentence CNN: word vectors, convolutions of several widths over them, max-over-time pooling.

    tokens [b, length] -> embedding [b, length, E]
      -> for k in windows: conv k×E -> 100 maps -> ReLU -> max over time -> [b, 100]
      -> concatenate [b, 300] -> dropout 0.5 -> dense -> logits

Each convolution slides a window of k words along the text ("valid": no
padding, so a text needs at least max(windows) tokens; padding id 0 counts as
a token whose vector is zero). Max-over-time pooling keeps each map's
strongest response wherever it occurs, so the classifier sees a fixed-length
vector whatever the text's length. Kim's max-norm constraint on the
classifier's weights (s = 3) is the training option `max_norm`
(`cnn_jax.training.steps`), which applies to any model's classifier.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from cnn_jax.analysis import arithmetic
from cnn_jax.data.dataset import TOKENS
from cnn_jax.errors import UserError
from cnn_jax.layers import Conv, Dense, Embedding
from cnn_jax.layers.pooling import global_max_pool
from cnn_jax.models.base import Entry, check_input


class TextCNN(nn.Module):
    """Kim (2014)'s CNN-rand: `[batch, length]` token ids of a `vocab_size` vocabulary -> logits `[batch, classes]`.

    Parameters: vocab_size·E (the embedding), Σ_k (k·E·maps + maps) (the
    convolutions), (len(windows)·maps + 1)·num_classes (the classifier).
    Kim used E = 300 (word2vec's size), windows 3, 4, 5 with 100 maps each
    and dropout 0.5.
    """

    num_classes: int = 2
    vocab_size: int = 0
    embedding: int = 300
    windows: Sequence[int] = (3, 4, 5)
    maps: int = 100
    dropout: float = 0.5
    inputs = TOKENS

    @nn.compact
    def __call__(self, tokens: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        check_input("textcnn", TOKENS, tokens)
        if self.vocab_size < 1:
            raise UserError("textcnn needs `vocab_size`, the size of its vocabulary: train it on a text dataset")
        x = Embedding(self.vocab_size, self.embedding)(tokens)
        features = []
        for k in self.windows:
            arithmetic.conv_output_size(x.shape[1], k, layer=f"textcnn's {k}-word convolution")
            features.append(global_max_pool(nn.relu(Conv(self.maps, (k,), padding="VALID")(x))))
        x = nn.Dropout(self.dropout, deterministic=not train)(jnp.concatenate(features, axis=-1))
        return Dense(self.num_classes)(x)


MODELS = {
    "textcnn": Entry(TextCNN, "Kim (2014)'s sentence CNN: 3-, 4- and 5-word windows, max over time, dropout 0.5."),
}
