"""Running a command-line tool: absl flags, quiet library logs, and user mistakes as one line.

Every `python -m experiments...` entry point calls `run(main)`. A malformed
flag, stray arguments or a `UserError` print `error: <message>` on stderr and
exit with status 2, without a traceback; the settings the message names in
backticks are printed as the flags of the same name (`cnn_jax.errors`). This
module imports no JAX, so `--help` stays fast.
"""

import contextlib
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator

from absl import app, flags, logging

from cnn_jax.errors import UserError


def as_flags(message: str) -> str:
    """`message` with each setting it names in backticks that is a defined flag written as that flag."""
    return re.sub(r"`([a-z][a-z0-9_]*)`", lambda m: f"--{m[1]}" if m[1] in flags.FLAGS else m[0], message)


def _fail(message) -> None:
    print(f"error: {as_flags(str(message))}", file=sys.stderr)
    sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, with a malformed flag reported in one line instead of absl's two."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(e)


def run(main: Callable[[list[str]], None], usage: str, positional: int | range = 0) -> None:
    """`app.run(main)`, where `main` takes `positional` arguments after the program name (see `usage`): that
    many, or a number in that range.

    Library INFO logs (JAX's backend probing, orbax) are silenced unless `-v`
    is given.
    """

    def wrapped(argv: list[str]) -> None:
        if len(argv) - 1 not in (positional if isinstance(positional, range) else (positional,)):
            _fail(f"usage: {usage} (got {len(argv) - 1} argument(s) besides --flags: {' '.join(argv[1:])})")
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        try:
            main(argv)
        except UserError as e:
            _fail(e)

    app.run(wrapped, flags_parser=_parse_flags)


def seeds(given: int | None, quick: bool) -> list[int]:
    """The seeds 0 .. N − 1 of a study's `--seeds` (default 3; 2 with `--quick`); UserError below 1."""
    from cnn_jax.errors import UserError

    count = given if given is not None else 2 if quick else 3
    if count < 1:
        raise UserError(f"--seeds={given} must be at least 1")
    return list(range(count))


@contextlib.contextmanager
def preemption_notice() -> Iterator[Callable[[], bool]]:
    """Notes SIGTERM (a preemption notice) while the block runs; yields a function saying whether it came.

    The training loop asks it after every step (`stop_requested`), saves a
    checkpoint and raises `Preempted`; the previous handler is restored after.
    """
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        yield lambda: bool(received)
    finally:
        signal.signal(signal.SIGTERM, previous)


def preempted_message(error) -> str:
    """The line printed when SIGTERM stopped a run (`cnn_jax.training.loop.Preempted`)."""
    return (f"stopped by SIGTERM at step {error.step:,}; checkpoint saved in {', '.join(error.workdirs)}: "
            "run the same command to resume")


def cache_compiled_programs(folder: str) -> None:
    """Keeps every compiled program in `folder` (JAX's persistent compilation cache), for commands that train
    many runs of a few shapes: each later run of a shape loads its programs instead of compiling them."""
    import jax

    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def initialize_distributed(coordinator_address: str | None, num_processes: int | None,
                           process_id: int | None) -> None:
    """Joins a multi-process run (`jax.distributed.initialize`), or does nothing for a single process.

    With a coordinator address the three flags must come together; without
    one, a multi-task SLURM job or a multi-host Cloud TPU slice is detected by
    JAX itself. Call it before anything else uses JAX.
    """
    import jax

    given = [value is not None for value in (coordinator_address, num_processes, process_id)]
    if any(given):
        if not all(given):
            raise UserError("--coordinator_address, --num_processes and --process_id go together; give all three")
        if not 0 <= process_id < num_processes:
            raise UserError(f"--process_id={process_id} must be from 0 to --num_processes - 1 = {num_processes - 1}")
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
        jax.distributed.initialize()
