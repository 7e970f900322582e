"""User-facing errors: one clear line and a non-zero exit at the command line, never a traceback."""
import sys
from typing import Any

import click


class UserError(Exception):
    """A mistake the user can fix (bad path, option value, file); the message says what is wrong and what to do."""


class _OneLineErrors:
    """Mixin for click commands: usage errors and UserErrors print `error: <message>` and exit non-zero."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs['standalone_mode'] = False
        try:
            return super().main(*args, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            print('error: aborted', file=sys.stderr)
            sys.exit(1)
        except click.ClickException as exc:
            print(f'error: {exc.format_message()}', file=sys.stderr)
            sys.exit(exc.exit_code)
        except UserError as exc:
            print(f'error: {exc}', file=sys.stderr)
            sys.exit(1)


class Command(_OneLineErrors, click.Command):
    """click.Command with one-line errors."""


class Group(_OneLineErrors, click.Group):
    """click.Group with one-line errors."""
