"""Checkpoints of a TrainState with orbax, under `workdir/checkpoints/<step>`."""

import os

import orbax.checkpoint as ocp
from flax import serialization

CHECKPOINT_DIR = "checkpoints"


def _manager(workdir: str) -> ocp.CheckpointManager:
    directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(max_to_keep=3, create=True))


def save(workdir: str, state) -> None:
    """Saves `state` (params, batch_stats, opt_state, step) at its step and waits until it is on disk."""
    with _manager(workdir) as manager:
        manager.save(int(state.step), args=ocp.args.StandardSave(serialization.to_state_dict(state)))
        manager.wait_until_finished()


def restore(workdir: str, target):
    """The latest checkpoint in `workdir`, restored into the structure of `target` (a TrainState)."""
    with _manager(workdir) as manager:
        step = manager.latest_step()
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, CHECKPOINT_DIR)}")
        abstract = serialization.to_state_dict(target)
        restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
    return serialization.from_state_dict(target, restored)
