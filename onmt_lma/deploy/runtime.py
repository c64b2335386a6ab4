"""Translation on ONNX Runtime with the graphs of ``onmt_lma_export``, and what every export engine shares.

    onmt_lma_translate -engine onnx -model EXPORT_DIR -src SRC -output OUT [-beam_size 5] [-batch_size 32] ...

or from Python::

    translator = OnnxTranslator("export_dir")
    translator.translate(["ein Mann .", ...], Decoding(beam_size=5))   # -> [[(score, "a man ."), ...], ...]

The search is :func:`onmt_lma.deploy.search.beam_search` (OpenNMT-py's, step for step) over the exported
decoder step, with the batches OpenNMT-py forms (lines sorted by source length).
"""

import time
from pathlib import Path

import numpy as np

from onmt_lma.base.batching import batches
from onmt_lma.base.files import sha256_of
from onmt_lma.deploy.decoding import Decoding
from onmt_lma.deploy.manifest import SPECIAL, ExportError, cache_names, read_manifest, read_vocabulary
from onmt_lma.deploy.search import BANNED, PROFILE_KEYS, beam_search


class ExportTranslator:
    """What every engine on an ``onmt_lma_export`` folder shares: the manifest's checks, the vocabularies,
    OpenNMT-py's batches and length cap, and the output text.  A subclass gives ``_search``."""

    def __init__(self, folder, checked):
        """``checked(name)``: whether the engine loads the file ``name`` (its sha256 is then verified)."""
        self.folder = Path(folder)
        manifest = read_manifest(folder)
        for name, digest in manifest["files"].items():
            path = self.folder / name
            if not path.is_file():
                raise ExportError(f"{folder}: {name} is missing; export the checkpoint again")
            if (checked(name) or name.endswith(".json")) and sha256_of(path) != digest:
                raise ExportError(f"{folder}: {name} is not the file the export wrote (sha256 differs)")
        self.manifest = manifest
        self.special = manifest["special"]
        self.src_vocab = {token: i for i, token in enumerate(read_vocabulary(self.folder / "src.vocab.json"))}
        self.tgt_tokens = read_vocabulary(self.folder / "tgt.vocab.json")
        for key in SPECIAL:
            if self.special[key] >= len(self.src_vocab if key.startswith("src") else self.tgt_tokens):
                raise ExportError(f"{folder}: special id {key} {self.special[key]} is outside its vocabulary; "
                                  "export the checkpoint again")
        #: where the time goes (:data:`~onmt_lma.deploy.search.PROFILE_KEYS`), summed over every call
        self.profile = {key: 0.0 if key.endswith("_s") else 0 for key in PROFILE_KEYS}

    def source_ids(self, line):
        return [self.src_vocab.get(token, self.special["src_unk"]) for token in line.split()]

    def target_ids(self, line):
        """A reference line's ids, then the end token."""
        if not hasattr(self, "_tgt_vocab"):
            self._tgt_vocab = {token: i for i, token in enumerate(self.tgt_tokens)}
        return [self._tgt_vocab.get(token, self.special["unk"]) for token in line.split()] + [self.special["eos"]]

    def translate(self, lines, decoding=Decoding(), batch_size=1, batch_type="sents"):
        """``decoding.n_best`` ``(score, text)`` per line, best first (every line must hold a token), in the
        lines' order; batched as OpenNMT-py batches (:func:`batches`: ``batch_type`` ``sents``, ``batch_size``
        lines; ``tokens``, lines times the longest source)."""
        positions = self.manifest["max_positions"]
        for number, line in enumerate(lines, 1):
            if len(line.split()) > positions:
                raise ExportError(f"line {number}: {len(line.split())} tokens; this export's position table holds "
                                  f"{positions}")
        results = [None] * len(lines)
        for batch in batches(lines, batch_size, batch_type):
            sources = [lines[index] for index in batch]
            max_steps = decoding.max_steps(max(len(line.split()) for line in sources), positions)
            for index, hypotheses in zip(batch, self._search(sources, decoding, max_steps)):
                results[index] = [(score, self._text(ids)) for score, ids in hypotheses]
        return results

    def _text(self, ids):
        tokens = [self.tgt_tokens[i] for i in ids]
        if tokens and tokens[-1] == self.tgt_tokens[self.special["eos"]]:
            tokens = tokens[:-1]
        return " ".join(tokens)


class OnnxTranslator(ExportTranslator):
    """The exported encoder and decoder step of an ``onmt_lma_export`` folder on ONNX Runtime."""

    def __init__(self, folder, int8=False, threads=None):
        try:
            import onnxruntime  # here: the native engine's users need not load it (nor install it)
        except ImportError:
            raise ExportError("-engine onnx needs ONNX Runtime, which this install lacks: pip install onnxruntime "
                              "(or onmt-lma[train]), or run the export with -engine native") from None

        suffix = ".int8.onnx" if int8 else ".onnx"
        super().__init__(folder, lambda name: name.endswith(suffix))
        if self.manifest.get("onnx_refused"):
            raise ExportError(f"{folder}: no ONNX graphs ({self.manifest['onnx_refused']}); run it with -engine native")
        if int8 and not self.manifest.get("int8"):
            raise ExportError(f"{folder}: exported without int8 graphs; export again with -int8")
        # the encoder's intra-op workers must not spin on while the decoder steps (they take its cores)
        encoder_options, decoder_options = onnxruntime.SessionOptions(), onnxruntime.SessionOptions()
        encoder_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            encoder_options.intra_op_num_threads = decoder_options.intra_op_num_threads = threads
        self.encoder = onnxruntime.InferenceSession(str(self.folder / f"encoder{suffix}"), encoder_options,
                                                    providers=["CPUExecutionProvider"])
        self.decoder = onnxruntime.InferenceSession(str(self.folder / f"decoder_step{suffix}"), decoder_options,
                                                    providers=["CPUExecutionProvider"])
        self.cross_names, self.self_names, self.grown_names = cache_names(self.manifest["layers"])
        log_probs_shape = {o.name: o.shape for o in self.decoder.get_outputs()}["log_probs"]
        self.vocab_size = log_probs_shape[1] if isinstance(log_probs_shape[1], int) else len(self.tgt_tokens)

    def _encode(self, lines):
        ids = [self.source_ids(line) for line in lines]
        lengths = np.array([len(i) for i in ids], dtype=np.int64)
        src = np.full((len(ids), int(lengths.max())), self.special["src_pad"], dtype=np.int64)
        for row, sentence in enumerate(ids):
            src[row, : len(sentence)] = sentence
        return self.encoder.run(None, {"src": src, "src_len": lengths})

    def _search(self, lines, decoding, max_steps):
        started = time.perf_counter()
        steps = _OnnxSteps(self, lines, decoding.beam_size)
        encoded = time.perf_counter()
        found = beam_search(steps, len(lines), decoding, self.special, max_steps)
        profile = self.profile
        profile["encoder_s"] += encoded - started
        profile["decoder_s"] += steps.seconds
        profile["search_s"] += time.perf_counter() - encoded - steps.seconds
        profile["steps"] += steps.calls
        profile["sentences"] += len(lines)
        return found

    def score(self, sources, targets, batch_size=32):
        """Teacher-forced log-probability of each ``targets`` line (its tokens, then the end token) given its
        source line: ``(sum of the log-probabilities, number of target tokens)``, for perplexity; what
        OpenNMT-py's translator scores with ``-tgt`` (its ``_score_target``), here from the decoder step's
        ``log_probs``, one gold token a step."""
        special, m = self.special, self.manifest
        total, count = 0.0, 0
        for batch in batches(sources, batch_size):
            memory_bias, *cross = self._encode([sources[i] for i in batch])
            gold = [self.target_ids(targets[i]) for i in batch]
            lengths = np.array([len(ids) for ids in gold])
            padded = np.full((len(batch), lengths.max()), special["pad"], dtype=np.int64)
            for row, ids in enumerate(gold):
                padded[row, : len(ids)] = ids
            fed = np.concatenate([np.full((len(batch), 1), special["bos"], dtype=np.int64), padded[:, :-1]], axis=1)
            own = [np.zeros((len(batch), m["heads"], 0, m["head_dim"]), dtype=np.float32)] * len(self.self_names)
            rows = np.arange(len(batch))
            for step in range(padded.shape[1]):  # a finished line's later steps are computed and not counted
                log_probs, *own = self.decoder.run(
                    ["log_probs", *self.grown_names],
                    {"token": fed[:, step], "step": np.array([step], dtype=np.int64), "memory_bias": memory_bias,
                     **dict(zip(self.cross_names, cross)), **dict(zip(self.self_names, own)),
                     "k": np.array([1], dtype=np.int64)})
                counted = step < lengths
                total += float(log_probs[rows, padded[:, step]][counted].sum(dtype=np.float64))
                count += int(counted.sum())
        return total, count


class _OnnxSteps:
    """:func:`~onmt_lma.deploy.search.beam_search`'s model: the decoder step graph, its caches carried over."""

    def __init__(self, translator, lines, beam):
        self.translator, self.vocab = translator, translator.vocab_size
        memory_bias, *cross = translator._encode(lines)
        rows = np.repeat(np.arange(len(lines)), beam)
        self.memory_bias, self.cross = memory_bias[rows], [array[rows] for array in cross]
        m = translator.manifest
        self.own = [np.zeros((len(rows), m["heads"], 0, m["head_dim"]), dtype=np.float32)] * len(translator.self_names)
        self.seconds, self.calls = 0.0, 0

    def top_k(self, tokens, step, k, banned):
        # the graph's TopK gives each row's best k + len(banned); the banned ones then drop to BANNED
        t = self.translator
        wanted = min(k + len(banned), self.vocab)
        before = time.perf_counter()
        values, ids, *self.grown = t.decoder.run(
            ["top_log_probs", "top_ids", *t.grown_names],
            {"token": tokens, "step": np.array([step], dtype=np.int64), "memory_bias": self.memory_bias,
             **dict(zip(t.cross_names, self.cross)), **dict(zip(t.self_names, self.own)),
             "k": np.array([wanted], dtype=np.int64)})
        self.seconds += time.perf_counter() - before
        self.calls += 1
        if banned:
            values[np.isin(ids, banned)] = BANNED
        order = np.lexsort((ids, -values), axis=1)[:, :k]
        return np.take_along_axis(values, order, axis=1), np.take_along_axis(ids, order, axis=1)

    def keep(self, rows):
        self.own = [array[rows] for array in self.grown]
        self.memory_bias, self.cross = self.memory_bias[rows], [array[rows] for array in self.cross]
