"""Sequence-level knowledge distillation data (Kim & Rush 2016).

The teacher translates the source side of a training corpus; a student then
trains on (source, teacher translation) pairs, alone or with word-level KD on
top.  :func:`distill_corpus` does the file work: chunks, progress, and resuming
after an interruption.  Finished lines live in ``OUTPUT.partial``, appended one
whole chunk at a time; an interrupted run resumes after the last complete line
(a torn last line is dropped and redone), and the file gets its final name only
when every source line has its translation.

What made the lines -- the source file's sha256, the model files' sha256 and
the options that change a translation -- is written beside them
(``OUTPUT.partial.json`` while running, ``OUTPUT.json`` when complete); a rerun
with another source, model or option refuses to resume or to call the output
complete, naming what differs.
"""

import json
import os

from tqdm import tqdm

from onmt_lma.base.errors import UserError
from onmt_lma.base.files import sha256_of


class DistillDataError(UserError, RuntimeError):
    """Inputs or outputs of sequence-level distillation that cannot be used."""


def read_lines(path):
    """Lines of a UTF-8 text file, without their newline; errors name file and line."""
    lines = []
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                lines.append(raw.rstrip(b"\n").rstrip(b"\r").decode("utf-8"))
            except UnicodeDecodeError as error:
                raise DistillDataError(f"{path}, line {number}: not UTF-8 ({error})") from None
    return lines


def recover_partial(path):
    """Drop a torn last line of ``path`` (if any); return its number of whole lines."""
    if not os.path.exists(path):
        return 0
    with open(path, "rb+") as handle:
        data = handle.read()
        whole = data.rfind(b"\n") + 1
        if whole != len(data):
            handle.truncate(whole)
    return data[:whole].count(b"\n")


def check_provenance(record_path, made_from, what):
    """Refuse ``what`` when the record beside it says it was made from other inputs."""
    if not os.path.exists(record_path):
        return
    with open(record_path, encoding="utf-8") as handle:
        recorded = json.load(handle)
    differences = [f"{key} {recorded.get(key)!r} then, {value!r} now"
                   for key, value in made_from.items() if recorded.get(key) != value]
    if differences:
        raise DistillDataError(f"{what} was made from other inputs ({'; '.join(differences)}): "
                               "remove it to distil again")


def _write_json(path, content):
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(content, handle, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


def distill_corpus(src_path, out_path, translate_lines, chunk_lines=1000, progress=True, made_from=None):
    """Write ``translate_lines(chunk)`` for every line of ``src_path`` into ``out_path``.

    ``translate_lines`` maps a list of non-empty source lines to as many
    translations; an empty source line gets an empty translation.  ``made_from``
    (models, options) is recorded with the source's sha256 beside the output and
    checked on every rerun.  Returns the number of lines translated by this call
    (0 when ``out_path`` was complete).
    """
    if chunk_lines < 1:
        raise DistillDataError(f"chunk_lines must be >= 1, got {chunk_lines}")
    if os.path.exists(out_path) and os.path.samefile(src_path, out_path):
        raise DistillDataError(f"-output {out_path} is the -src file: it would be overwritten")
    sources = read_lines(src_path)
    made_from = {"src_sha256": sha256_of(src_path), **(made_from or {})}
    if os.path.exists(out_path):
        check_provenance(out_path + ".json", made_from, out_path)
        finished = len(read_lines(out_path))
        if finished == len(sources):
            return 0
        raise DistillDataError(
            f"{out_path} exists with {finished} lines but {src_path} has {len(sources)}: "
            "remove it to distil again"
        )
    partial = out_path + ".partial"
    check_provenance(partial + ".json", made_from, partial)
    done = recover_partial(partial)
    _write_json(partial + ".json", made_from)
    if done > len(sources):
        raise DistillDataError(
            f"{partial} holds {done} lines but {src_path} has only {len(sources)}: "
            "it belongs to another source file; remove it"
        )
    bar = tqdm(total=len(sources), initial=done, unit="line", desc="distilling", disable=not progress)
    with bar, open(partial, "a", encoding="utf-8") as out:
        for start in range(done, len(sources), chunk_lines):
            chunk = sources[start : start + chunk_lines]
            todo = [line for line in chunk if line.strip()]
            translations = list(translate_lines(todo)) if todo else []
            if len(translations) != len(todo):
                raise DistillDataError(
                    f"the translator returned {len(translations)} lines for {len(todo)}"
                )
            translated = iter(t.replace("\n", " ") for t in translations)
            lines = [next(translated) if line.strip() else "" for line in chunk]
            out.write("".join(line + "\n" for line in lines))
            out.flush()
            os.fsync(out.fileno())
            bar.update(len(chunk))
    os.replace(partial + ".json", out_path + ".json")
    os.replace(partial, out_path)
    return len(sources) - done
