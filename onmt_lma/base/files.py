"""File helpers shared by the commands and data preparation: hashes, and outputs that never destroy an input.

Every command that writes checks its outputs against its inputs first (:func:`refuse_overwriting`): no output
is an input file, an existing file of an input folder, a folder that holds an input, or a folder inside one.
Folder outputs (exports, CTranslate2 models, caches) are built under a temporary name beside their place and
renamed into it when complete (:func:`building_folder`); an existing folder is replaced only with ``-force``
and only when it is a folder of the same kind.
"""

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from onmt_lma.base.errors import UserError


class OutputError(UserError, ValueError):
    """An output that would overwrite an input or a folder of another kind."""


def sha256_of(path):
    """Hex sha256 of a file, read 1 MiB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _within(path, folder):
    return path == folder or folder in path.parents


def refuse_overwriting(output, inputs, option="-output"):
    """Refuse an ``output`` (file or folder) that would write over one of ``inputs`` (``{option: path}``, paths
    that do not exist are skipped): the same file, an existing file inside an input folder, a folder that holds
    an input, or a folder inside an input folder.  Paths are compared after following links."""
    target = Path(os.path.realpath(output))
    for name, path in inputs.items():
        if path is None or not os.path.exists(path):
            continue
        source = Path(os.path.realpath(path))
        if target == source:
            raise OutputError(f"{option} {output} is the {name} {path}: it would be overwritten; give another path")
        if source.is_dir() and source in target.parents:
            raise OutputError(f"{option} {output} is inside the {name} folder {path}: it would change that input; "
                              "write it elsewhere")
        if target in source.parents:
            raise OutputError(f"{option} {output} holds the {name} {path}: replacing it would delete that input; "
                              "give another folder")


def check_folder_output(output, kind, is_kind, force=False, option="-output"):
    """Refuse a folder output ``output`` that exists and is not empty unless it is a ``kind`` folder
    (``is_kind(path)``: say an export) and ``force`` is given."""
    out = Path(output)
    if out.exists() or out.is_symlink():
        if not out.is_dir() or out.is_symlink():
            raise OutputError(f"{option} {output} exists and is not a folder; give a new folder for the {kind}")
        if any(out.iterdir()):
            if not is_kind(out):
                raise OutputError(f"{option} {output} exists and is not {kind} folder; refusing to replace it "
                                  "(give a new or empty folder)")
            if not force:
                raise OutputError(f"{option} {output} exists ({kind}); give -force to replace it")


@contextlib.contextmanager
def building_folder(output, kind, is_kind, force=False, option="-output"):
    """Yield a fresh folder beside ``output`` to build it in; when the block completes, it replaces ``output``
    (renamed into place), else it is removed and ``output`` stays as it was (:func:`check_folder_output` first)."""
    check_folder_output(output, kind, is_kind, force, option)
    out = Path(output)
    if not out.parent.is_dir():
        out.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    os.chmod(partial, 0o777 & ~_umask())  # as mkdir makes it (mkdtemp: 0o700)
    replace_folder(partial, out)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def replace_folder(built, output):
    """Put the complete folder ``built`` at ``output``: an earlier ``output`` is moved aside first and removed
    after, so that ``output`` is always either the old folder or the new one, never half of each."""
    output = Path(output)
    if output.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
        os.rename(output, aside / output.name)
        os.rename(built, output)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(built, output)
