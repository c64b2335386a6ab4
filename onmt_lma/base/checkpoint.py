"""Loading OpenNMT-py checkpoints with today's ``torch.load(weights_only=True)``.

OpenNMT-py 3.5.1 pickles its options (an ``argparse.Namespace``) next to the
weights, which torch >= 2.6 refuses by default.  Rather than turning the safe
unpickler off, the few classes such a checkpoint really holds are allowed, and
anything else is refused with a message naming the file.


:func:`load` and :func:`save` read and write one checkpoint (saving atomically).
"""

import argparse
import contextlib
import os
import pickle
import re
from pathlib import Path

import torch

from onmt_lma.base.errors import UserError


#: Everything an OpenNMT-py 3.5.1 or onmt-lma checkpoint holds besides tensors,
#: dicts, lists, tuples, sets, strings and numbers (which torch always allows).
CHECKPOINT_SAFE_GLOBALS = [argparse.Namespace]


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, unreadable or holds disallowed objects."""


@contextlib.contextmanager
def checkpoint_loading(path):
    """Context for one ``torch.load`` of the OpenNMT-py checkpoint at ``path``.

    Allows exactly :data:`CHECKPOINT_SAFE_GLOBALS` in the ``weights_only``
    unpickler (torch's default) and turns every failure to read the file into a
    :class:`CheckpointError` naming it.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist or is not a file")
    try:
        with torch.serialization.safe_globals(CHECKPOINT_SAFE_GLOBALS):
            yield
    except pickle.UnpicklingError as error:
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if refused is None:
            raise CheckpointError(f"{path!r} is not a readable OpenNMT-py checkpoint: {error}") from None
        allowed = ", ".join(g.__module__ + "." + g.__qualname__ for g in CHECKPOINT_SAFE_GLOBALS)
        raise CheckpointError(
            f"refusing to load checkpoint {path!r}: it holds {refused.group(1)}, which is not "
            f"among what OpenNMT-py checkpoints hold (tensors, containers, numbers, strings, "
            f"{allowed}): loading it could run code it carries; do not use it"
        ) from None
    except CheckpointError:
        raise
    except Exception as error:  # torch raises RuntimeError, EOFError, IndexError, ...
        raise CheckpointError(
            f"{path!r} is not a readable OpenNMT-py checkpoint: {type(error).__name__}: {error}"
        ) from None


def load(path):
    """The checkpoint at ``path`` (on the CPU), loaded safely (:func:`checkpoint_loading`)."""
    with checkpoint_loading(str(path)):
        return torch.load(path, map_location="cpu")


def save(checkpoint, output):
    """Write under a temporary name, then rename: never a half-written file."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    torch.save(checkpoint, partial)
    os.replace(partial, output)
