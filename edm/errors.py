"""User-facing errors: one clear line and a non-zero exit at the command line, never a traceback."""
import functools
import sys
from typing import Callable


class UserError(Exception):
    """A mistake the user can fix (bad path, option value, file); the message says what is wrong and what to do."""


def exit_on_user_error(fn: Callable) -> Callable:
    """Wrap a CLI entry point so that a UserError prints `error: <message>` on stderr and exits with status 1."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            print(f'error: {exc}', file=sys.stderr)
            sys.exit(1)
    return wrapper
