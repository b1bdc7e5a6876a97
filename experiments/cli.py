"""Running a command-line tool: absl flags, quiet library logs, and user mistakes as one line.

Every `python -m experiments...` entry point calls `run(main)`. A malformed
flag, stray arguments or a `UserError` print `error: <message>` on stderr and
exit with status 2, without a traceback; the settings the message names in
backticks are printed as the flags of the same name (`cnn_jax.errors`). This
module imports no JAX, so `--help` stays fast.
"""

import re
import sys
from collections.abc import Callable

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


def run(main: Callable[[list[str]], None], usage: str, positional: int = 0) -> None:
    """`app.run(main)`, where `main` takes `positional` arguments after the program name (see `usage`).

    Library INFO logs (JAX's backend probing, orbax) are silenced unless `-v`
    is given.
    """

    def wrapped(argv: list[str]) -> None:
        if len(argv) - 1 != positional:
            _fail(f"usage: {usage} (got {len(argv) - 1} argument(s) besides --flags: {' '.join(argv[1:])})")
        if not flags.FLAGS["verbosity"].present:
            logging.set_verbosity(logging.WARNING)
        try:
            main(argv)
        except UserError as e:
            _fail(e)

    app.run(wrapped, flags_parser=_parse_flags)
