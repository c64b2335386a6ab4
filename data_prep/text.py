"""Text files: atomic writes, strict UTF-8 reading, whitespace normalization, Moses tokenization."""

import contextlib
import gzip
import multiprocessing
import os

from sacremoses import MosesDetokenizer, MosesTokenizer
from tqdm import tqdm


class DataPrepError(RuntimeError):
    """Input that cannot be prepared; the message names the file and what was expected."""


@contextlib.contextmanager
def atomic_write(path, mode="w"):
    """Write ``path`` under a temporary name, renamed only when the block completes."""
    tmp = f"{path}.tmp-{os.getpid()}"
    kwargs = {} if "b" in mode else {"encoding": "utf-8", "newline": "\n"}
    try:
        with open(tmp, mode, **kwargs) as handle:
            yield handle
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def normalize_whitespace(line):
    """One ASCII space between tokens, none at the ends.

    ``str.split()`` splits on every Unicode whitespace (U+00A0, U+2009, ...), as
    OpenNMT-py's vocabulary reader does: a token holding such a character would
    make a vocabulary file that training cannot read.
    """
    return " ".join(line.split())


def read_lines(path):
    """Lines of a UTF-8 text file (``.gz`` too), whitespace-normalized.

    Undecodable bytes raise :class:`DataPrepError` naming the file and line.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    lines = []
    with opener(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DataPrepError(f"{path}, line {number}: not valid UTF-8 ({error.reason} at byte {error.start})") from None
            lines.append(normalize_whitespace(text))
    return lines


def check_parallel(src_name, src_lines, tgt_name, tgt_lines):
    if len(src_lines) != len(tgt_lines):
        raise DataPrepError(
            f"line counts differ: {src_name} has {len(src_lines)} lines, {tgt_name} has {len(tgt_lines)}"
        )


def write_lines(path, lines):
    with atomic_write(path) as handle:
        for line in lines:
            handle.write(line + "\n")


# --------------------------------------------------------------------------- #
# Moses tokenization (sacremoses), parallel over the machine's cores
# --------------------------------------------------------------------------- #
_TOKENIZER = None
#: Moses ``tokenizer.perl -a`` with XML escaping: how every corpus, test set and request is tokenized
MOSES_OPTIONS = {"aggressive_dash_splits": True, "escape": True}


def _init_tokenizer(lang):
    global _TOKENIZER
    _TOKENIZER = MosesTokenizer(lang=lang)


def _tokenize(line):
    return normalize_whitespace(_TOKENIZER.tokenize(line, return_str=True, **MOSES_OPTIONS))


def moses_tokenize(lines, lang, desc, workers=None):
    """Moses-tokenize ``lines`` (``tokenizer.perl -a -l lang``), with a progress bar."""
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(lines) < 20000:
        _init_tokenizer(lang)
        return [_tokenize(line) for line in tqdm(lines, desc=desc, unit="line", mininterval=2)]
    with multiprocessing.get_context("fork").Pool(workers, _init_tokenizer, (lang,)) as pool:
        return list(
            tqdm(pool.imap(_tokenize, lines, chunksize=2000), total=len(lines), desc=desc, unit="line", mininterval=2)
        )


def moses_detokenize(lines, lang):
    """Moses detokenization (with unescaping), for a plain-text reference of tokenized data."""
    detokenizer = MosesDetokenizer(lang=lang)
    return [detokenizer.detokenize(line.split()) for line in lines]
