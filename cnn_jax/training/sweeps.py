"""Ablation sweeps as data: a base config and axes, every combination of one value per axis a variant.

    SWEEPS["pooling"].variants()  # [("pooling=max", Config(...)), ("pooling=avg", Config(...)), ...]

Each axis maps a label to the `Config` fields it sets, so one axis may change
several fields at once (a model spec, or a learning rate). Add a sweep by
adding an entry to `SWEEPS`; `python -m experiments.ablate --sweep=NAME` runs
it over seeds. The models are text specs (`cnn_jax.models.spec`); the seed network is
`c16k5-max-c32k5-max` (two 5×5 convolutions, BatchNorm, ReLU, 2×2 max-pooling). The
`conv1d` sweep trains 1-D stacks on MNIST-1D.

`run_all(runs)` trains a list of (config, workdir) in order, skipping finished
runs and resuming interrupted ones: what the sweep and transfer commands run.
"""

import dataclasses
import itertools
import os
import shutil
from collections.abc import Callable, Sequence
from typing import Any

from cnn_jax.training.config import Config

SEED_NETWORK = "c16k5-max-c32k5-max"

CHECKPOINT_EVERY = 500  # Steps between a run's checkpoints (and at every evaluation), so a killed sweep loses little.

QUICK = {"epochs": 5, "max_train_examples": 6000, "max_test_examples": 2000}
"""What the `quick` option of `experiments.ablate` changes: 5 epochs over the first 6,000 training images, tested on 2,000 (minutes on a CPU)."""


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A question from the seed documents, the base config it starts from, and the axes it varies."""

    claim: str
    axes: dict[str, dict[str, dict[str, Any]]]  # axis -> {label: Config fields}
    base: dict[str, Any] = dataclasses.field(default_factory=dict)

    def variants(self, quick: bool = False, **overrides) -> list[tuple[str, Config]]:
        """(label, Config) of every combination, in axis order; `quick` applies `QUICK`, then `overrides`."""
        result = []
        for choice in itertools.product(*(axis.items() for axis in self.axes.values())):
            label = ",".join(f"{axis}={name}" for axis, (name, _) in zip(self.axes, choice))
            fields = {**self.base, **(QUICK if quick else {}), **overrides}
            for _, settings in choice:
                fields.update(settings)
            result.append((label, Config(**fields)))
        return result


def _models(**specs: str) -> dict[str, dict[str, str]]:
    return {label: {"model": spec} for label, spec in specs.items()}


def conv1d_stack(kernel: int, down: str) -> str:
    """convnet1d's three 64-map stages along a signal, with `kernel`-long convolutions, each stage halving the
    length by `down`: a pooling's name ("max", "avg"), or "strided" (the convolution's stride 2, no pooling)."""
    stage = f"c64k{kernel}s2" if down == "strided" else f"c64k{kernel}-{down}"
    return "-".join([stage] * 3) + ":1d"


SWEEPS: dict[str, Sweep] = {
    "activation": Sweep(
        "ReLU trains several times faster than saturating units (sigmoid, tanh); without BatchNorm, which hides it.",
        {"activation": {name: {"model": f"{SEED_NETWORK}:nobn:act={name}"}
                        for name in ("relu", "sigmoid", "tanh", "abs_tanh", "elu")}},
    ),
    "pooling": Sweep(
        "Max-pooling beats average pooling; strided convolutions can replace pooling; smaller windows are better.",
        {"pooling": {
            **_models(max="c16k5-max-c32k5-max", avg="c16k5-avg-c32k5-avg", l2="c16k5-l2-c32k5-l2",
                      stochastic="c16k5-stochastic-c32k5-stochastic", mixed="c16k5-mixed-c32k5-mixed"),
            **_models(max3s2="c16k5-maxk3s2p1-c32k5-maxk3s2p1", none_strided="c16k5s2p2-c32k5s2p2"),
        }},
    ),
    "batchnorm": Sweep(
        "BatchNorm helps: faster training and better accuracy.",
        {"batchnorm": _models(on=SEED_NETWORK, off=f"{SEED_NETWORK}:nobn")},
    ),
    "kernels": Sweep(
        "Stacked 3×3 convolutions beat one large kernel of the same reach (5×5 = two 3×3, 7×7 = three 3×3).",
        {"kernels": _models(**{"5x5": "c16k5-max-c32k5-max", "2x3x3": "2xc16k3-max-2xc32k3-max",
                               "7x7": "c16k7-max-c32k7-max", "3x3x3": "3xc16k3-max-3xc32k3-max"})},
    ),
    "depth_width": Sweep(
        "Depth and width: what more channels or one more convolution buy on a small dataset.",
        {"depth_width": _models(base=SEED_NETWORK, narrow="c8k5-max-c16k5-max", wide="c32k5-max-c64k5-max",
                                deeper="c16k5-max-c32k5-max-c64k3-max")},
    ),
    "conv1d": Sweep(
        "Along a signal (MNIST-1D): wider kernels see more of a digit's shape; pooling beats strided convolutions.",
        {"conv1d": {f"k{kernel}_{down}": {"model": conv1d_stack(kernel, down)} for kernel in (3, 5, 9)
                    for down in ("max", "avg", "strided")}},
        base={"dataset": "mnist1d"},
    ),
    "learning_rate": Sweep(
        "Adam's learning rate: the seed's 1e-3 against a decade around it.",
        {"learning_rate": {f"{rate:g}": {"learning_rate": rate} for rate in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)}},
    ),
}


def finished(workdir: str) -> bool:
    """Whether the run in `workdir` has finished (it wrote results.json)."""
    return os.path.exists(os.path.join(workdir, "results.json"))


def run_all(runs: Sequence[tuple[Config, str]], vmap: bool = False, stop_requested: Callable[[], bool] | None = None,
            checkpoint_every: int = CHECKPOINT_EVERY) -> None:
    """Trains the runs [(config, workdir)] that have not finished, in order, resuming those with a checkpoint.

    With `vmap`, runs that differ only in seed and learning rate and stand at
    the same step (none started, or an interrupted group) train together as
    one vectorised program (`cnn_jax.training.vectorized`); the others one by one.
    """
    from tqdm import tqdm

    from cnn_jax.training import checkpoint, loop, vectorized

    todo = [(config, workdir) for config, workdir in runs if not finished(workdir)]
    for _, workdir in todo:
        if checkpoint.newest_step(workdir) is None:  # Killed before its first checkpoint: start it again.
            shutil.rmtree(workdir, ignore_errors=True)
    groups = {}
    for config, workdir in todo:
        key = (vectorized.group_key(config), checkpoint.newest_step(workdir)) if vmap else workdir
        groups.setdefault(key, []).append((config, workdir))
    with tqdm(total=len(todo), desc="runs", unit="run", disable=None) as bar:
        for group in groups.values():
            configs, workdirs = zip(*group)
            if len(group) > 1:
                vectorized.train_group(configs, workdirs, checkpoint_every, stop_requested)
            else:
                loop.train_and_evaluate(configs[0], workdirs[0], checkpoint_every, stop_requested=stop_requested)
            bar.update(len(group))
