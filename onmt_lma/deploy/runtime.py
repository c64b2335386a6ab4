"""Translation on ONNX Runtime with the graphs of ``onmt_lma_export``: OpenNMT-py 3.5.1's beam search, in NumPy.

    onmt_lma_translate -engine onnx -model EXPORT_DIR -src SRC -output OUT [-beam_size 5] [-batch_size 32] ...

or from Python::

    translator = OnnxTranslator("export_dir")
    translator.translate(["ein Mann .", ...], beam_size=5)   # -> [[(score, "a man ."), ...], ...]

The search is OpenNMT-py's ``BeamSearch`` step for step (``onmt/translate/beam_search.py``): the first
beam starts alone (the others at -inf), the scores are divided by the length penalty of the hypothesis
length plus one (``avg``: length ** alpha, ``wu``: ((5 + length) / 6) ** alpha, ``none``), the best
``beam_size`` of beam x vocabulary continue, a finished hypothesis is kept with its penalized score and
its beam is closed (-65504), and a sentence is done when its best beam has finished and ``n_best``
hypotheses are kept, or at ``min(max_length, longest source x max_length_ratio + 5)`` tokens, with
the batches OpenNMT-py forms (lines sorted by source length).  ``min_length`` and ``ban_unk_token`` forbid the end and
unknown tokens as OpenNMT-py does.  OpenNMT-py's other search options (n-gram blocking, coverage penalty,
``ratio``, sampling, ``replace_unk``) are refused.
"""

import json
import os
import time
from pathlib import Path

import numpy as np

from onmt_lma.base.batching import batches
from onmt_lma.deploy.graphs import ExportError, cache_names
from onmt_lma.deploy.manifest import SPECIAL, read_manifest

BANNED = -65504.0  # OpenNMT-py's score for a forbidden token and a closed beam


def length_penalty(kind, length, alpha):
    if kind == "avg":
        return length ** alpha
    if kind == "wu":
        return ((5 + length) / 6.0) ** alpha
    return 1.0


def read_vocabulary(path):
    """An export's ``*.vocab.json``: a JSON list of token strings."""
    try:
        tokens = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise ExportError(f"{path}: not a readable vocabulary ({type(error).__name__}); export the checkpoint "
                          "again") from None
    if not isinstance(tokens, list) or not all(isinstance(token, str) for token in tokens):
        raise ExportError(f"{path}: expected a JSON list of token strings; export the checkpoint again")
    return tokens


class ExportTranslator:
    """What every engine on an ``onmt_lma_export`` folder shares: the manifest's checks, the vocabularies,
    OpenNMT-py's batches and length cap, and the output text.  A subclass gives ``_search``."""

    def __init__(self, folder, checked):
        """``checked(name)``: whether the engine loads the file ``name`` (its sha256 is then verified)."""
        from onmt_lma.base.files import sha256_of

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
        #: where the time goes (seconds, summed over every call): the encoder, the decoder steps, and the
        #: beam search around them (scores, top-k, reordering the caches); ``steps``: decoder calls
        self.profile = {"encoder_s": 0.0, "decoder_s": 0.0, "search_s": 0.0, "steps": 0, "sentences": 0}

    def source_ids(self, line):
        return [self.src_vocab.get(token, self.special["src_unk"]) for token in line.split()]

    def target_ids(self, line):
        """A reference line's ids, then the end token."""
        if not hasattr(self, "_tgt_vocab"):
            self._tgt_vocab = {token: i for i, token in enumerate(self.tgt_tokens)}
        return [self._tgt_vocab.get(token, self.special["unk"]) for token in line.split()] + [self.special["eos"]]

    def translate(self, lines, beam_size=5, batch_size=1, max_length=250, min_length=0, n_best=1,
                  length_penalty_kind="avg", alpha=1.0, ban_unk_token=False, batch_type="sents",
                  max_length_ratio=1.25):
        """``n_best`` ``(score, text)`` per line, best first (every line must hold a token), in the lines' order.

        Batched as OpenNMT-py batches (:func:`batches`: ``batch_type`` ``sents``, ``batch_size`` lines;
        ``tokens``, lines times the longest source); each batch decodes at most
        ``min(max_length, longest source x max_length_ratio + 5)`` tokens (OpenNMT-py's cap; a ratio of 0:
        ``max_length`` only).
        """
        positions = self.manifest["max_positions"]
        for number, line in enumerate(lines, 1):
            if len(line.split()) > positions:
                raise ExportError(f"line {number}: {len(line.split())} tokens; this export's position table holds "
                                  f"{positions}")
        results = [None] * len(lines)
        for batch in batches(lines, batch_size, batch_type):
            sources = [lines[index] for index in batch]
            cap = min(max_length, positions - 1)
            if max_length_ratio > 0:
                cap = int(min(cap, max(len(line.split()) for line in sources) * max_length_ratio + 5))
            found = self._search(sources, beam_size, cap, min_length, n_best, length_penalty_kind, alpha,
                                 ban_unk_token)
            for index, hypotheses in zip(batch, found):
                results[index] = hypotheses
        return results

    def _text(self, ids):
        tokens = [self.tgt_tokens[i] for i in ids]
        if tokens and tokens[-1] == self.tgt_tokens[self.special["eos"]]:
            tokens = tokens[:-1]
        return " ".join(tokens)


class OnnxTranslator(ExportTranslator):
    """The exported encoder and decoder step of an ``onmt_lma_export`` folder on ONNX Runtime."""

    def __init__(self, folder, int8=False, threads=None):
        import onnxruntime

        suffix = ".int8.onnx" if int8 else ".onnx"
        super().__init__(folder, lambda name: name.endswith(suffix))
        if self.manifest.get("onnx_refused"):
            raise ExportError(f"{folder}: no ONNX graphs ({self.manifest['onnx_refused']}); run it with -engine native")
        if int8 and not self.manifest.get("int8"):
            raise ExportError(f"{folder}: exported without int8 graphs; export again with -int8")
        # Each session has its own intra-op thread pool, whose workers spin for a while after a call.  The
        # encoder's, spinning on while the decoder steps, took the core the decoder's pool needed: one sentence
        # at a time on 2 cores, 2 threads then translated 2x slower than 1, now 1.15-1.24x faster (bench_threads).
        # The encoder runs once per batch, so its workers sleep as soon as it returns.
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

    def _search(self, lines, beam, max_length, min_length, n_best, penalty, alpha, ban_unk):
        started = time.perf_counter()
        decoder_s, decoder_calls = 0.0, 0
        special = self.special
        memory_bias, *cross = self._encode(lines)
        encoded = time.perf_counter()
        count = len(lines)
        rows = np.repeat(np.arange(count), beam)
        memory_bias, cross = memory_bias[rows], [array[rows] for array in cross]
        m = self.manifest
        own = [np.zeros((count * beam, m["heads"], 0, m["head_dim"]), dtype=np.float32)] * len(self.self_names)
        alive = np.full((count * beam, 1), special["bos"], dtype=np.int64)
        beam_scores = np.tile(np.array([0.0] + [-np.inf] * (beam - 1), dtype=np.float32), (count, 1))
        offsets = np.arange(count)
        hypotheses = [[] for _ in range(count)]
        results = [None] * count
        vocab = self.vocab_size
        for step in range(max_length):
            length = alive.shape[1]
            banned = [special["eos"]] * (length <= min_length) + [special["unk"]] * bool(ban_unk)
            # a sentence's best `beam` continuations are among each of its hypotheses' best `beam` tokens (adding
            # the hypothesis's score and dividing by the length penalty keep a row's order), and those among the
            # row's best `beam` + (banned tokens): the graph's TopK gives them, then beam x k candidates only
            k = min(beam + len(banned), vocab)
            before = time.perf_counter()
            top_log_probs, tokens, *own = self.decoder.run(
                ["top_log_probs", "top_ids", *self.grown_names],
                {"token": alive[:, -1], "step": np.array([step], dtype=np.int64), "memory_bias": memory_bias,
                 **dict(zip(self.cross_names, cross)), **dict(zip(self.self_names, own)),
                 "k": np.array([k], dtype=np.int64)})
            decoder_s += time.perf_counter() - before
            decoder_calls += 1
            for token in banned:
                top_log_probs[tokens == token] = BANNED
            candidates = top_log_probs + beam_scores.reshape(-1, 1)
            lp = length_penalty(penalty, length + 1, alpha)
            scores = (candidates / lp if lp != 1 else candidates).reshape(len(offsets), beam * k)
            ids = (tokens.reshape(len(offsets), beam, k) + (np.arange(beam) * vocab)[None, :, None]).reshape(
                len(offsets), beam * k)  # positions in the sentence's beam x vocabulary scores
            sentence_rows = np.arange(len(offsets))[:, None]  # plain indexing: take_along_axis costs ~25 us a call
            chosen = np.argpartition(-scores, beam - 1, axis=1)[:, :beam]
            best, top_scores = ids[sentence_rows, chosen], scores[sentence_rows, chosen]
            order = np.lexsort((best, -top_scores), axis=1)  # score desc, id asc
            best, top_scores = best[sentence_rows, order], top_scores[sentence_rows, order]
            beam_scores = top_scores * lp
            tokens = best % vocab
            select = (best // vocab + sentence_rows * beam).reshape(-1)
            alive = np.concatenate([alive[select], tokens.reshape(-1, 1)], axis=1)
            own = [array[select] for array in own]
            finished = tokens == special["eos"]
            if alive.shape[1] == max_length + 1:
                finished[:] = True
            if not finished.any():
                continue
            beam_scores[finished] = BANNED
            going = []
            for i, sentence in enumerate(offsets):
                for j in np.flatnonzero(finished[i]):
                    hypotheses[sentence].append((float(top_scores[i, j]), alive[i * beam + j, 1:]))
                if finished[i, 0] and len(hypotheses[sentence]) >= n_best:
                    ranked = sorted(hypotheses[sentence], key=lambda h: h[0], reverse=True)[:n_best]
                    results[sentence] = [(score, self._text(ids)) for score, ids in ranked]
                else:
                    going.append(i)
            if not going:
                break
            kept = (np.array(going)[:, None] * beam + np.arange(beam)).reshape(-1)
            offsets, beam_scores = offsets[going], beam_scores[going]
            alive, own = alive[kept], [array[kept] for array in own]
            memory_bias, cross = memory_bias[kept], [array[kept] for array in cross]
        finished_at = time.perf_counter()
        profile = self.profile
        profile["encoder_s"] += encoded - started
        profile["decoder_s"] += decoder_s
        profile["search_s"] += finished_at - encoded - decoder_s
        profile["steps"] += decoder_calls
        profile["sentences"] += count
        return results

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

#: onmt_translate options the ONNX engine does not implement, with the values that mean "not used"
UNSUPPORTED = {"block_ngram_repeat": (0,), "coverage_penalty": ("none",), "ratio": (0.0,), "replace_unk": (False,),
               "random_sampling_topk": (0, 1), "tgt": (None,), "attn_debug": (False,), "align_debug": (False,),
               "report_align": (False,), "phrase_table": ("",), "gpu": (-1,)}


def check_options(opt):
    """Refuse, naming them, the options that an export engine (``opt.engine``) would silently ignore."""
    engine = getattr(opt, "engine", "onnx")
    if getattr(opt, "threads", 0) < 0:
        raise ExportError(f"-threads {opt.threads}: expected 0 (automatic) or a number of threads")
    used = [f"-{name} {getattr(opt, name)!r}" for name, unused in UNSUPPORTED.items()
            if getattr(opt, name, unused[0]) not in unused]
    if len(opt.models) != 1 or not os.path.isdir(opt.models[0]):
        used.append(f"-model {' '.join(opt.models)} (-engine {engine} takes one onmt_lma_export folder)")
    if used:
        raise ExportError(f"-engine {engine} does not implement " + ", ".join(used))


def translate_file(opt, translator):
    """``onmt_lma_translate -engine onnx|native``: ``opt.src`` (non-empty lines) into ``opt.output``, n_best
    lines each, on ``translator`` (an :class:`ExportTranslator`)."""
    lines = Path(opt.src).read_text(encoding="utf-8").splitlines()
    results = translator.translate(lines, opt.beam_size, opt.batch_size, opt.max_length, opt.min_length, opt.n_best,
                                   opt.length_penalty, opt.alpha, opt.ban_unk_token, opt.batch_type,
                                   opt.max_length_ratio)
    with open(opt.output, "w", encoding="utf-8") as out:
        for hypotheses in results:
            for _, text in hypotheses:
                out.write(text + "\n")
