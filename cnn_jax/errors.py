"""The one exception type for mistakes a user can fix (settings, data files, paths).

Messages name a setting in backticks, as the library knows it (a `Config`
field or a function's argument): "`batch_size`=1000 exceeds the 300 training
examples". Entry points print each setting that is one of their flags as that
flag ("--batch_size=1000 exceeds ..."), so only they speak of `--flags`.
"""


class UserError(Exception):
    """Bad input from the user.

    Entry points print it as a single line (no traceback) and exit non-zero, so
    the message must say what is wrong and how to fix it.
    """
