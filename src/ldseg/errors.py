"""One exception type for problems the user can fix.

The CLI prints an `LdsegError` as a single line and exits non-zero; anything else is a bug
and keeps its traceback.
"""


class LdsegError(Exception):
    """A problem with the user's input, files or settings, stated in one line."""


class LdsegWarning(UserWarning):
    """Something in the input was fixed on the user's request (e.g. `--allow-nan`); the CLI
    prints it as one line."""
