"""The configuration of one training run: plain data, validated before any work starts."""

import dataclasses
import re

from cnn_jax.errors import UserError

LR_SCHEDULES = ("cosine", "constant")
AUGMENTATIONS = ("flip", "none")
DTYPES = ("float32", "bfloat16")  # What a model may compute in (cnn_jax.models.precision).
NEW_LAYERS = ("fresh", "zeros")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that decides what a run computes.

    Defaults are the headline experiment of seed 000: the seed network on
    Fashion-MNIST, Adam with learning rate 1e-3, softmax cross-entropy.
    """

    model: str = ""  # A zoo name or a spec (cnn_jax.models); "": the dataset's default (models.DEFAULT_MODELS).
    dataset: str = "fashion_mnist"
    data_dir: str | None = None
    epochs: int = 10
    batch_size: int = 50
    eval_batch_size: int = 200  # Small enough that a batch's activations stay in a CPU's cache (2× faster than 1000).
    dtype: str = "float32"  # What the model computes in: "float32", or "bfloat16" (mixed precision: parameters,
    #   optimizer, BatchNorm statistics and loss stay float32; cnn_jax.models.precision).
    learning_rate: float = 1e-3  # Adam's (peak) learning rate.
    lr_schedule: str = "cosine"  # "cosine": decays to 0 over the run; "constant": the seed's literal setup.
    augment: str = "flip"  # "flip": mirror each training image left-right with probability 1/2 (and with
    #   `image_size`, Inception's random crop first); "none": neither (training images are converted as test ones).
    #   Signals and texts are never mirrored.
    loss: str = "softmax_cross_entropy"  # Or "sigmoid_cross_entropy", "l2" (cnn_jax.layers.losses).
    label_smoothing: float = 0.0  # Softmax cross-entropy's ε: targets (1 − ε)·one_hot + ε/k.
    seed: int = 0
    image_size: str = ""  # "S" or "H,W": images become this size as the model's input; "": their own (one size).
    channels: int = 0  # 1 (grey) or 3 (RGB): images become this many channels; 0: their own.
    test_fraction: float = 0.2  # `dataset`=folder without split folders: the share of each class held out.
    train_split: str = ""  # A tensorflow-datasets split to train on ("train[:80%]"); "": its training split.
    eval_split: str = ""  # The split to evaluate on; "": "test", else "validation", else the last 20% of "train".
    text_column: str = "text"  # Text files (`dataset`=text): the column (or JSON key) holding each text. A
    #   tensorflow-datasets text dataset: that feature if it has it, else its only text feature, else all joined.
    label_column: str = "label"  # Text files: the column (or JSON key) holding each label.
    vocab_size: int = 20000  # Texts: the most frequent training words kept, padding and unknown included.
    min_count: int = 2  # Texts: words seen fewer times in the training split are unknown.
    max_length: int = 0  # Texts: token ids per example, padded or truncated; 0: the longest training text's.
    max_norm: float = 0.0  # After each update, each class's weight vector in the classifier is rescaled to at most
    #   this L2 norm (Kim 2014's constraint, s = 3); 0: no constraint.
    aux_classifiers: bool = False  # GoogLeNet, InceptionV3: auxiliary classifiers, in the training loss (weight 0.3).
    max_steps: int = 0  # 0 = no limit; otherwise stop after this many training steps.
    max_train_examples: int = 0  # 0 = the whole training split; else its first N (for quick runs).
    max_test_examples: int = 0  # 0 = the whole test split; else its first N.
    eval_every: int = 0  # Steps between evaluations (and their checkpoints); 0 = at every epoch's end.
    classes: str = ""  # Comma-separated class indices or names: only those, in both splits, relabelled in this order.
    train_examples_per_class: int = 0  # 0 = every training example; else N of each class, drawn by `seed`.
    init_from: str = ""  # A run's workdir or one checkpoint folder whose weights start this run (transfer.py).
    reinit: str = ""  # With `init_from`, layers that start fresh all the same: "classifier", or a regex over paths.
    new_layers: str = "fresh"  # With `init_from`, how the layers it does not give start: "fresh" or "zeros".
    freeze: str = ""  # Parameters that do not train: "backbone" (all but the classifier) or a regex over their paths.

    def validate(self) -> "Config":
        """Returns self, or raises UserError naming the first bad field."""
        positive = ("epochs", "batch_size", "eval_batch_size", "min_count")
        non_negative = ("max_length", "max_steps", "max_train_examples", "max_test_examples", "eval_every",
                        "train_examples_per_class")
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"`{name}` must be a positive integer, got {getattr(self, name)}")
        for name in non_negative:
            if getattr(self, name) < 0:
                raise UserError(f"`{name}` must be >= 0, got {getattr(self, name)}")
        if not self.learning_rate > 0:  # Also rejects NaN.
            raise UserError(f"`learning_rate` must be > 0, got {self.learning_rate}")
        for name, choices in (("lr_schedule", LR_SCHEDULES), ("augment", AUGMENTATIONS), ("new_layers", NEW_LAYERS),
                              ("dtype", DTYPES)):
            if getattr(self, name) not in choices:
                raise UserError(f"`{name}` must be one of {', '.join(choices)}, got '{getattr(self, name)}'")
        for name, value in (("new_layers", self.new_layers != "fresh"), ("reinit", self.reinit)):
            if value and not self.init_from:
                raise UserError(f"`{name}`={getattr(self, name)} needs `init_from` (the run whose weights start this "
                                "one)")
        for name in ("freeze", "reinit"):
            try:
                re.compile(getattr(self, name))
            except re.error as e:
                raise UserError(f"`{name}`={getattr(self, name)!r} is not a regular expression ({e})") from None
        if self.vocab_size < 3:
            raise UserError(f"`vocab_size` must be at least 3 (padding, unknown and one word), got {self.vocab_size}")
        self.image_hw  # Raises for a malformed one.
        if self.channels not in (0, 1, 3):
            raise UserError(f"`channels` must be 1 (grey) or 3 (RGB), got {self.channels}")
        if not 0 < self.test_fraction < 1:
            raise UserError(f"`test_fraction` must be between 0 and 1 (the share of each class held out for testing), "
                            f"got {self.test_fraction}")
        if not 0 <= self.max_norm < float("inf"):
            raise UserError(f"`max_norm` must be a norm >= 0 (0: no constraint; Kim 2014 used 3), got {self.max_norm}")
        if not 0 <= self.label_smoothing < 1:
            raise UserError(f"`label_smoothing` must be in [0, 1), got {self.label_smoothing}")
        from cnn_jax.layers import losses  # Imports JAX: not at module level, so the command line stays fast.

        losses.lookup(self.loss, self.label_smoothing)
        return self

    @property
    def image_hw(self) -> tuple[int, int] | None:
        """`image_size` as (height, width), or None; UserError if it is neither "S" nor "H,W" of positive sizes."""
        if not self.image_size:
            return None
        parts = self.image_size.replace("x", ",").split(",")
        if len(parts) not in (1, 2) or not all(part.strip().isdigit() and int(part) > 0 for part in parts):
            raise UserError(f"`image_size` must be a size S or H,W in pixels (224, or 299,299), got '{self.image_size}'")
        height, width = (int(part) for part in parts * (3 - len(parts)))
        return height, width

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
