"""A run read back from its workdir: its config, model, dataset and the variables of its newest checkpoint.

    run = trained.load("runs/fashion")
    logits = run.model.apply(run.variables, images, train=False)
    probabilities = trained.probabilities(run, uint8_images)   # as evaluation scales them

What the commands that use a trained network (`experiments.inspect`,
`experiments.score_map`, `experiments.predict`) start from. A finished run and one stopped
mid-way alike: the newest complete checkpoint is read.
"""

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from cnn_jax import data
from cnn_jax.errors import UserError
from cnn_jax.training import checkpoint
from cnn_jax.training.config import Config
from cnn_jax.training.loop import CONFIG_FILE, plan
from cnn_jax.training.steps import create_train_state


@dataclasses.dataclass(frozen=True)
class Run:
    """A trained model: `model.apply(variables, images, train=False)` gives its logits."""

    workdir: str
    config: Config
    model: nn.Module
    variables: dict[str, Any]  # {'params', 'batch_stats'}
    dataset: data.Dataset
    step: int


def read_config(workdir: str) -> Config:
    """The Config recorded in `workdir`; UserError if it holds no run."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise UserError(f"`workdir`={workdir} holds no run ({CONFIG_FILE} is missing); train one with "
                        f"python -m experiments.train --workdir={workdir}")
    with open(path) as f:
        recorded = json.load(f)
    known = {field.name for field in dataclasses.fields(Config)}
    return Config(**{name: value for name, value in recorded.items() if name in known})


def load(workdir: str, data_dir: str | None = None) -> Run:
    """The run in `workdir` at its newest checkpoint, with its dataset (from `data_dir` if given, else where
    the run found it); UserError if there is no run or no checkpoint yet."""
    config = read_config(workdir)
    if data_dir is not None:
        config = dataclasses.replace(config, data_dir=data_dir)
    step = checkpoint.newest_step(workdir)
    if step is None:
        raise UserError(f"`workdir`={workdir} has no checkpoint yet; let its training reach one (or finish it "
                        "by running the same command again)")
    model, dataset, _, total_steps = plan(config, workdir)
    target = create_train_state(model, config, dataset.image_shape, total_steps)
    with checkpoint.manager(workdir) as checkpoints:
        state, _ = checkpoint.latest(checkpoints, target, step)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return Run(workdir, config, model, variables, dataset, step)



def probabilities(run: Run, images: np.ndarray, batch_size: int = 200) -> np.ndarray:
    """`[n, classes]`: what the run's network gives uint8 `images` `[n, h, w, c]` (at its image shape), in test
    mode and scaled as evaluation scales them: class probabilities (softmax; each class's own sigmoid for a
    run trained with sigmoid cross-entropy; the raw outputs, which regress one-hot targets, for `l2`)."""
    outputs = {"sigmoid_cross_entropy": jax.nn.sigmoid, "l2": lambda logits: logits}.get(run.config.loss,
                                                                                          jax.nn.softmax)
    # The variables an argument, not constants baked into the compiled program.
    predict = jax.jit(lambda variables, x: outputs(run.model.apply(variables, data.normalize(x), train=False)))
    return np.concatenate([np.asarray(predict(run.variables, images[start : start + batch_size]))
                           for start in range(0, len(images), batch_size)])
