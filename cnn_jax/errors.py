"""The one exception type for mistakes a user can fix (flags, data files, paths)."""


class UserError(Exception):
    """Bad input from the user.

    Entry points print it as a single line (no traceback) and exit non-zero, so
    the message must say what is wrong and how to fix it.
    """
