"""Command-line entry points: ``onmt_lma_train``, ``onmt_lma_translate``,
``onmt_lma_build_vocab``, ``onmt_lma_distill_data``, ``onmt_lma_teacher_cache``.

Importing this package installs the plugin (before any command module imports onmt).
"""

import contextlib

from onmt_lma import plugin  # noqa: F401  (first: silences onmt's warnings, installs)
from onmt_lma.checkpoint import CheckpointError
from onmt_lma.distill import DistillationError, NonFiniteTrainingError
from onmt_lma.opts import OptionMismatchError
from onmt_lma.export import ExportError
from onmt_lma.quantize import QuantizeError
from onmt_lma.seqkd import DistillDataError

#: errors that are the user's input, reported as one line instead of a traceback
USER_ERRORS = (CheckpointError, DistillationError, DistillDataError, NonFiniteTrainingError, OptionMismatchError,
               QuantizeError, ExportError)


@contextlib.contextmanager
def user_errors_exit(parser):
    """Report :data:`USER_ERRORS` like argparse does: ``prog: error: ...``, exit 2."""
    try:
        yield
    except USER_ERRORS as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
