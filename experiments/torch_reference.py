r"""The seed network in PyTorch, trained exactly as cnn_jax trains it: the reference for benchmarks.

    python -m experiments.torch_reference --epochs=1 --batch_size=100

Same architecture (seed 000: conv 5×5/16 → BN → ReLU → pool → conv 5×5/32 → BN →
ReLU → pool → dense; `experiments.torch_models` mirrors it and the other zoo
models, whose `Trainer` the zoo benchmark uses), same initialisation scheme as Flax's defaults (kernels
truncated-normal LeCun, biases zero), same BatchNorm momentum and epsilon, Adam
with the same cosine schedule, the same left-right flips and the same data
(cnn_jax.data). With `--dtype=bfloat16`, PyTorch's own mixed precision,
`torch.autocast("cpu", dtype=torch.bfloat16)`, against cnn_jax's (`cnn_jax.models.precision`).
It needs PyTorch: pip install -e '.[bench]'.
"""

import math
import sys
import time

import numpy as np
import torch
from absl import flags
from torch import nn

from cnn_jax import data
from cnn_jax.training.config import DTYPES, Config
from experiments import cli, torch_models

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command line's flags; defined only when run as a program, so the module imports cleanly."""
    defaults = Config()
    flags.DEFINE_integer("epochs", defaults.epochs, "Passes over the training set.")
    flags.DEFINE_integer("batch_size", defaults.batch_size, "Training examples per step.")
    flags.DEFINE_float("learning_rate", defaults.learning_rate, "Adam's peak learning rate.")
    flags.DEFINE_integer("seed", defaults.seed, "Seed for initialisation, data order and flips.")
    flags.DEFINE_enum("dtype", defaults.dtype, DTYPES, "bfloat16: train under torch.autocast (bfloat16 on the CPU).")


def lecun_normal_(tensor: torch.Tensor, fan_in: int) -> None:
    """Flax's default kernel init: truncated normal (±2σ) with variance 1/fan_in after truncation."""
    std = math.sqrt(1.0 / fan_in) / 0.87962566103423978
    nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)


def seed_network(num_classes: int = 10, image_size: int = 28, channels: int = 1) -> nn.Module:
    """The seed-000 network (`torch_models.ConvNet`), initialised as cnn_jax.models.ConvNet is (by its scheme: this
    program does not import JAX)."""
    net = torch_models.ConvNet((image_size, image_size, channels), num_classes)
    for layer in net.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            lecun_normal_(layer.weight, layer.weight[0].numel())
            nn.init.zeros_(layer.bias)
    return net


def cosine_factor(total_steps: int):
    """optax.cosine_decay_schedule's factor at step t, for torch's LambdaLR."""
    return lambda t: 0.5 * (1 + math.cos(math.pi * min(t, total_steps) / total_steps))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [0, 1]."""
    return torch.from_numpy(data.normalize(images)).permute(0, 3, 1, 2).contiguous()


class Trainer:
    """A network (default: the seed network), Adam and its schedule, for `total_steps` steps of `batch_size`; with
    `dtype` "bfloat16", under PyTorch's autocast to bfloat16."""

    def __init__(self, dataset: data.Dataset, batch_size: int, learning_rate: float, seed: int, total_steps: int,
                 net: nn.Module | None = None, dtype: str = "float32"):
        torch.manual_seed(seed)
        self.generator = torch.Generator().manual_seed(seed)
        h, _, c = dataset.image_shape
        self.net = net or seed_network(dataset.num_classes, h, c)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=learning_rate)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cosine_factor(total_steps))
        self.loss = nn.CrossEntropyLoss()
        self.images, self.labels = to_tensor(dataset.train_images), torch.from_numpy(dataset.train_labels).long()
        self.batch_size = batch_size
        self.autocast = dtype == "bfloat16"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            return self.net(x).float()

    def step(self, idx: np.ndarray) -> float:
        x, y = self.images[idx], self.labels[idx]
        flip = torch.rand(len(idx), generator=self.generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(self.forward(x), y)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        return loss

    def epoch(self, order: np.ndarray, max_steps: int | None = None) -> int:
        """Trains on the batches of `order`; returns the number of steps taken."""
        self.net.train()
        steps = len(order) // self.batch_size if max_steps is None else max_steps
        for i in range(steps):
            self.step(order[i * self.batch_size : (i + 1) * self.batch_size])
        return steps

    @torch.no_grad()
    def evaluate(self, images: np.ndarray, labels: np.ndarray) -> float:
        self.net.eval()
        correct = 0
        for start in range(0, len(labels), 1000):
            logits = self.forward(to_tensor(images[start : start + 1000]))
            correct += int((logits.argmax(1).numpy() == labels[start : start + 1000]).sum())
        return correct / len(labels)


def main(argv):
    del argv
    dataset = data.load_dataset("fashion_mnist")
    steps_per_epoch = len(dataset.train_labels) // FLAGS.batch_size
    trainer = Trainer(dataset, FLAGS.batch_size, FLAGS.learning_rate, FLAGS.seed, FLAGS.epochs * steps_per_epoch,
                      dtype=FLAGS.dtype)
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads, {FLAGS.dtype}", flush=True)
    for epoch in range(FLAGS.epochs):
        start = time.perf_counter()
        steps = trainer.epoch(data.epoch_permutation(FLAGS.seed, epoch, len(dataset.train_labels)))
        seconds = time.perf_counter() - start
        accuracy = trainer.evaluate(dataset.test_images, dataset.test_labels)
        print(f"epoch {epoch + 1}: test acc {accuracy:.4f} | {steps * FLAGS.batch_size / seconds:,.0f} examples/s")
    print(f"test accuracy: {accuracy:.4f}")
    sys.stdout.flush()


if __name__ == "__main__":
    define_flags()
    cli.run(main, usage="python -m experiments.torch_reference [--epochs=N] [--batch_size=N]")
