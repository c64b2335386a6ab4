"""Errors that are the user's input: reported by every ``onmt_lma_*`` command as one line, not a traceback.
"""

import contextlib


class UserError(Exception):
    """Base of every error about the user's input (a file, option or value that cannot be used): the commands
    report it as ``prog: error: message`` and exit 2.  Each layer derives its own errors from it."""


@contextlib.contextmanager
def user_errors_exit(parser):
    """Report a :class:`UserError` like argparse does: ``prog: error: ...``, exit 2."""
    try:
        yield
    except UserError as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
