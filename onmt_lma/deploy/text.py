"""Raw text in, raw text out: the steps that turn a sentence into a model's tokens and its output back into
text, as the corpus it was trained on was prepared (``python -m data_prep``: Moses ``tokenizer.perl -a`` with
escaping, then the corpus's SentencePiece model if it has one; on the way out SentencePiece's decoding, then
Moses detokenization).

They come from a prepared corpus (:meth:`TextSteps.from_corpus`) or travel inside an ``onmt_lma_export``
folder (``text.json`` and the SentencePiece model, :meth:`TextSteps.write`), so that an export translates raw
text with nothing else: ``onmt_lma_translate -raw_text`` and ``onmt_lma_server``.
"""

import dataclasses
import json
import shutil
import threading
from pathlib import Path

import sentencepiece
from sacremoses import MosesDetokenizer, MosesTokenizer

from data_prep.text import MOSES_OPTIONS
from onmt_lma.base.errors import UserError
from onmt_lma.base.files import sha256_of
from onmt_lma.deploy.manifest import read_manifest

TEXT_FILE = "text.json"
SENTENCEPIECE_FILE = "spm.model"
FORMAT = 1


class TextStepsError(UserError, ValueError):
    """A corpus or export whose text steps cannot be read; the message names it."""


@dataclasses.dataclass
class TextSteps:
    """The text steps of one language pair; ``sentencepiece``: the path of its model, or None (words)."""

    source_language: str
    target_language: str
    sentencepiece: Path = None
    corpus: str = ""  # the prepared corpus's name (its manifest's "corpus")
    origin: str = ""  # where they came from (a corpus folder, an export folder), for logs

    def __post_init__(self):
        self._tokenizer = MosesTokenizer(lang=self.source_language)
        self._detokenizer = MosesDetokenizer(lang=self.target_language)
        self._lock = threading.Lock()  # sacremoses' objects are not documented as thread-safe
        self._spm = None
        if self.sentencepiece is not None:
            self._spm = sentencepiece.SentencePieceProcessor(model_file=str(self.sentencepiece))

    @classmethod
    def from_corpus(cls, corpus_dir):
        """The steps of a corpus prepared by ``python -m data_prep`` (its ``manifest.json``'s direction)."""
        folder = Path(corpus_dir)
        manifest = _read_json(folder / "manifest.json", f"-corpus {corpus_dir}: no readable manifest.json; give a "
                              "corpus prepared by python -m data_prep (its tokenization and subwords apply)")
        source, _, target = str(manifest.get("direction", "de->en")).partition("->")
        spm = folder / SENTENCEPIECE_FILE
        return cls(source, target, spm if spm.is_file() else None, str(manifest.get("corpus", folder.name)), str(folder))

    @classmethod
    def from_export(cls, folder):
        """The steps an export carries, or None where it carries none (exported without its corpus)."""
        path = Path(folder) / TEXT_FILE
        if not path.is_file():
            return None
        listed = read_manifest(folder)["files"]
        for name in (TEXT_FILE, SENTENCEPIECE_FILE):
            if (Path(folder) / name).is_file() and sha256_of(Path(folder) / name) != listed.get(name):
                raise TextStepsError(f"{folder}: {name} is not the file the export wrote (sha256 differs or it is "
                                     "not listed); export the checkpoint again")
        text = _read_json(path, f"{path}: not readable; export the checkpoint again")
        languages = [text.get(key) for key in ("source_language", "target_language")]
        if text.get("format") != FORMAT or text.get("tokenizer") != "moses" or text.get("moses") != MOSES_OPTIONS \
                or not all(isinstance(language, str) and language.isalpha() for language in languages):
            raise TextStepsError(f"{path}: text steps this onmt-lma does not apply ({text!r:.120}); export the "
                              "checkpoint again")
        spm = text.get("sentencepiece")
        if spm is not None and (spm != SENTENCEPIECE_FILE or not (Path(folder) / spm).is_file()):
            raise TextStepsError(f"{path}: names the SentencePiece model {spm!r:.60}, which is not {SENTENCEPIECE_FILE} "
                              "beside it; export the checkpoint again")
        return cls(*languages, Path(folder) / spm if spm else None, str(text.get("corpus", "")), str(folder))

    def write(self, folder):
        """Write these steps into the export ``folder``; the names of the files written."""
        names = [TEXT_FILE]
        if self.sentencepiece is not None:
            shutil.copyfile(self.sentencepiece, Path(folder) / SENTENCEPIECE_FILE)
            names.append(SENTENCEPIECE_FILE)
        text = {"format": FORMAT, "tokenizer": "moses", "moses": MOSES_OPTIONS,
                "corpus": self.corpus, "source_language": self.source_language, "target_language": self.target_language,
                "sentencepiece": SENTENCEPIECE_FILE if self.sentencepiece is not None else None}
        (Path(folder) / TEXT_FILE).write_text(json.dumps(text, indent=1) + "\n", encoding="utf-8")
        return names

    def encode(self, line):
        """A raw source sentence as the model's input tokens (one space between them)."""
        with self._lock:
            tokens = self._tokenizer.tokenize(" ".join(line.split()), return_str=True, **MOSES_OPTIONS)
        tokens = " ".join(tokens.split())
        if self._spm is not None:
            tokens = " ".join(self._spm.encode(tokens, out_type=str))
        return tokens

    def decode(self, tokens):
        """A translation's tokens as plain text."""
        if self._spm is not None:
            tokens = self._spm.decode(tokens.split())
        with self._lock:
            return self._detokenizer.detokenize(tokens.split())


def text_steps(model, corpus=None):
    """The steps raw text takes for ``model`` (a checkpoint or an export folder): ``corpus``'s where given, else
    those an export carries, else those of the prepared corpus the checkpoint (an export's: the one beside it
    it was exported from) was trained on; refused, saying what to give, where there are none."""
    if corpus:
        return TextSteps.from_corpus(corpus)
    checkpoint, found = Path(model), None
    if (checkpoint / "manifest.json").is_file():  # an export folder
        carried = TextSteps.from_export(checkpoint)
        if carried is not None:
            return carried
        exported_from = _read_json(checkpoint / "manifest.json", f"{model}: no readable manifest.json").get("checkpoint")
        checkpoint = checkpoint.parent / str(exported_from)
    if checkpoint.is_file():
        from onmt_lma.base.checkpoint import load  # here: only a checkpoint needs torch to read its options

        found = trained_corpus(load(checkpoint)["opt"])
    if found is None:
        raise TextStepsError(f"{model}: which prepared corpus's text steps apply? give -corpus DIR, or export it with "
                             "them (onmt_lma_export -corpus DIR)")
    return TextSteps.from_corpus(found)


def trained_corpus(opt):
    """The folder of the corpus prepared by ``python -m data_prep`` whose vocabularies the training options
    ``opt`` name (a checkpoint's ``opt``), or None."""
    folder = Path(getattr(opt, "src_vocab", None) or ".").parent
    return folder if (folder / "manifest.json").is_file() else None


def fits(corpus_dir, source_tokens):
    """Whether most of a model's source vocabulary (``source_tokens``) is the corpus's (its ``vocab.*`` of the
    source language): a model trained on another corpus or subword scheme does not."""
    steps = TextSteps.from_corpus(corpus_dir)
    path = Path(corpus_dir) / f"vocab.{steps.source_language}"
    try:
        corpus = {line.split("\t")[0] for line in path.read_text(encoding="utf-8").splitlines()}
    except OSError:
        raise TextStepsError(f"-corpus {corpus_dir}: no {path.name}; give a corpus prepared by python -m data_prep")
    return sum(token in corpus for token in source_tokens) > len(source_tokens) / 2


def _read_json(path, message):
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        raise TextStepsError(message) from None
    if not isinstance(value, dict):
        raise TextStepsError(message)
    return value
