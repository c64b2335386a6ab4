"""Raw text in, raw text out: a prepared corpus's steps applied to a request's sentences and undone on the
translations, as ``onmt_lma_evaluate -src`` does (Moses ``tokenizer.perl -a`` with escaping, then the
corpus's SentencePiece model if it has one; decoding, then Moses detokenization).
"""

import json
import sentencepiece
import threading
from pathlib import Path
from sacremoses import MosesDetokenizer, MosesTokenizer

from onmt_lma.base.errors import UserError


class CorpusStepsError(UserError, ValueError):
    """A folder that is not a corpus prepared by ``python -m data_prep``."""


class CorpusSteps:
    """The tokenization and subwords of one prepared corpus (German source, English target)."""

    def __init__(self, corpus_dir):
        self.corpus_dir = Path(corpus_dir)
        manifest = self.corpus_dir / "manifest.json"
        if not manifest.is_file():
            raise CorpusStepsError(f"-corpus {corpus_dir}: no manifest.json; give a corpus prepared by "
                                   "python -m data_prep (its tokenization and subwords are applied to requests)")
        self.name = json.loads(manifest.read_text()).get("corpus", self.corpus_dir.name)
        self._tokenizer = MosesTokenizer(lang="de")
        self._detokenizer = MosesDetokenizer(lang="en")
        self._lock = threading.Lock()  # sacremoses' objects are not documented as thread-safe
        self._spm = None
        if (self.corpus_dir / "spm.model").is_file():
            self._spm = sentencepiece.SentencePieceProcessor(model_file=str(self.corpus_dir / "spm.model"))

    def encode(self, line):
        """A raw source sentence as the model's input tokens (one space between them)."""
        with self._lock:
            tokens = self._tokenizer.tokenize(" ".join(line.split()), aggressive_dash_splits=True, escape=True,
                                              return_str=True)
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
