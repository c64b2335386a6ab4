"""Loading OpenNMT-py checkpoints with ``torch.load(weights_only=True)``, whatever the environment says.

OpenNMT-py 3.5.1 pickles its options (an ``argparse.Namespace``) next to the
weights, which torch >= 2.6 refuses by default.  Rather than turning the safe
unpickler off, the few classes such a checkpoint really holds are allowed, and
anything else is refused with a message naming the file.  ``weights_only=True``
is passed explicitly, on our loads and on OpenNMT-py's own (which pass nothing):
``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``, which people set to read old files,
switches the safe loader off only where a call leaves ``weights_only`` unset.

:func:`load` and :func:`save` read and write one checkpoint (saving atomically);
:func:`checkpoint_loading` wraps a load that OpenNMT-py makes.
"""

import argparse
import contextlib
import functools
import os
import re
from pathlib import Path

import torch

from onmt_lma.base.errors import UserError


#: Everything an OpenNMT-py 3.5.1 or onmt-lma checkpoint holds besides tensors,
#: dicts, lists, tuples, sets, strings and numbers (which torch always allows).
CHECKPOINT_SAFE_GLOBALS = [argparse.Namespace]


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that is missing, unreadable or holds disallowed objects."""


def _safe_torch_load(original):
    """``torch.load`` with ``weights_only=True`` on every call, whatever the caller or the environment asks."""

    @functools.wraps(original)
    def load(*args, **kwargs):
        kwargs["weights_only"] = True
        kwargs.pop("pickle_module", None)
        return original(*args, **kwargs)

    load.onmt_lma_safe = True
    return load


def refusal(path, error, what="OpenNMT-py checkpoint"):
    """The one-line :class:`CheckpointError` for the failed safe load of ``path`` (torch's own text, which
    advises switching the safe loader off, is never shown)."""
    text = str(error)
    refused = re.search(r"GLOBAL (\S+)", text)
    if refused or re.search(r"[Uu]nsupported class", text):  # the safe loader refused an object
        holds = f"it holds {refused.group(1)}, which" if refused else "it holds an object that"
        allowed = ", ".join(g.__module__ + "." + g.__qualname__ for g in CHECKPOINT_SAFE_GLOBALS)
        return CheckpointError(
            f"refusing to load {what} {path!r}: {holds} is not among what an {what} holds (tensors, containers, numbers, "
            f"strings, {allowed}): loading it could run code it carries; do not use it, and do not load it with "
            "the safe loader switched off")
    advice = ("weights_only", "Weights only load failed", "Please file an issue", "Check the documentation")
    lines = [line for line in text.strip().splitlines() if line.strip() and not any(a in line for a in advice)]
    first = lines[0] if lines else ""
    first = re.split(r"(?<=\.) ", first)[0]  # torch's first sentence, not its advice
    return CheckpointError(f"{path!r} is not a readable {what} (damaged or truncated?): "
                           f"{type(error).__name__}: {first}")


@contextlib.contextmanager
def checkpoint_loading(path, what="OpenNMT-py checkpoint"):
    """Context for loads of the file at ``path``: every ``torch.load`` inside (OpenNMT-py's too) passes
    ``weights_only=True`` with exactly :data:`CHECKPOINT_SAFE_GLOBALS` allowed, and every failure to read
    the file is a :class:`CheckpointError` naming it."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} {path!r} does not exist or is not a file")
    original = torch.load
    try:
        if not getattr(original, "onmt_lma_safe", False):
            torch.load = _safe_torch_load(original)
        with torch.serialization.safe_globals(CHECKPOINT_SAFE_GLOBALS):
            yield
    except CheckpointError:
        raise
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, IndexError, ...
        raise refusal(path, error, what) from None
    finally:
        torch.load = original


def load(path, mmap=False):
    """The checkpoint at ``path`` (on the CPU), loaded safely (:func:`checkpoint_loading`); ``mmap``: its
    tensors mapped from the file rather than read (cheap when only a few entries are needed)."""
    with checkpoint_loading(str(path)):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def load_weights(path, what):
    """A file of plain tensors and containers (an export's weights), loaded with ``weights_only=True`` and
    nothing else allowed; a refusal names ``what`` the file should have been."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} {str(path)!r} does not exist or is not a file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise refusal(str(path), error, what) from None


def save(checkpoint, output):
    """Write under a temporary name, then rename: never a half-written file."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    torch.save(checkpoint, partial)
    os.replace(partial, output)
