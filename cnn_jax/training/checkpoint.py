"""Checkpoints of a run with orbax, under `workdir/checkpoints/<step>`: the TrainState and the run's progress.

Orbax writes each checkpoint into a temporary folder and renames it when it
is complete, so a process killed while writing leaves the previous checkpoints
intact and the half-written one is never read. The last `KEEP` are kept. In a
multi-process run every process calls `save` and `latest`; orbax writes each
array once, from the process that owns it.
"""

import os

import orbax.checkpoint as ocp
from flax import serialization

from cnn_jax.errors import UserError

CHECKPOINT_DIR = "checkpoints"
KEEP = 3


def manager(workdir: str) -> ocp.CheckpointManager:
    """The checkpoint manager of `workdir` (a context manager; close it when done)."""
    directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(max_to_keep=KEEP, create=True))


def newest_step(workdir: str) -> int | None:
    """The step of `workdir`'s newest complete checkpoint, None if it has none (from the folder names: a
    half-written checkpoint's temporary folder is not a number)."""
    folder = os.path.join(workdir, CHECKPOINT_DIR)
    steps = [int(name) for name in os.listdir(folder) if name.isdigit()] if os.path.isdir(folder) else []
    return max(steps, default=None)


def save(checkpoints: ocp.CheckpointManager, state, progress: dict) -> None:
    """Saves `state` (params, batch_stats, opt_state, step, rng) and `progress` (JSON) at the state's step.

    Returns once the checkpoint is complete on disk. One already at that step
    (saved mid-epoch, now at the epoch's end with its evaluation) is replaced.
    """
    if int(state.step) in checkpoints.all_steps():
        checkpoints.delete(int(state.step))
    args = ocp.args.Composite(state=ocp.args.StandardSave(serialization.to_state_dict(state)),
                              progress=ocp.args.JsonSave(progress))
    checkpoints.save(int(state.step), args=args, force=True)
    checkpoints.wait_until_finished()


def latest(checkpoints: ocp.CheckpointManager, target, step: int | None = None) -> tuple | None:
    """(state, progress) from the newest complete checkpoint (or the one of `step`), restored into `target`'s
    structure; None if there is none.

    Raises UserError when the checkpoint holds another model's (or optimizer's) variables.
    """
    step = checkpoints.latest_step() if step is None else step
    if step is None:
        return None
    args = ocp.args.Composite(state=ocp.args.StandardRestore(serialization.to_state_dict(target)),
                              progress=ocp.args.JsonRestore())
    try:
        restored = checkpoints.restore(step, args=args)
    except (ValueError, KeyError, TypeError) as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise UserError(f"the checkpoint at step {step} in {checkpoints.directory} does not fit this model ({reason}); "
                        "resume with the settings that made it, or choose a new `workdir`") from None
    return serialization.from_state_dict(target, restored["state"]), restored["progress"]


def restore(workdir: str, target):
    """The TrainState of the newest checkpoint in `workdir`, restored into the structure of `target`."""
    with manager(workdir) as checkpoints:
        found = latest(checkpoints, target)
    if found is None:
        raise FileNotFoundError(f"no checkpoint in {os.path.join(workdir, CHECKPOINT_DIR)}")
    return found[0]
