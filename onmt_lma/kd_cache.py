"""Word-level distillation from the teacher's top-K distributions, computed once and stored.

Under teacher forcing the teacher's output distribution for a training pair
does not change from epoch to epoch (evaluation mode, no dropout), so one pass
of the teacher over the training corpus can serve every epoch and every student
distilled from it.  Keeping only each position's K most probable tokens (their
ids and log-probabilities) is how large-scale word-level KD stays affordable
(Tan et al. 2019, "Multilingual NMT with Knowledge Distillation", keep the top
8); the KD term is then taken over that support (:func:`onmt_lma.distill.distillation_loss`
with ``teacher_ids``).  Stored values are log-probabilities at temperature 1;
since ``softmax(log p / T)`` over a support equals ``softmax(z / T)`` over it,
one cache serves every ``-kd_temperature``.

Layout of a cache folder (``onmt_lma_teacher_cache`` writes it, ``-kd_cache`` reads it)::

    manifest.json                 teacher sha256, vocabularies, corpora sha256, K, shards
    CORPUS.SHARD.index.npy        int64 (examples, 4): line, first position, length, crc32 of the source ids
    CORPUS.SHARD.targets.npy      int32 (positions,): the gold target id of each position
    CORPUS.SHARD.ids.npy          uint16 or int32 (positions, K): the teacher's top-K token ids
    CORPUS.SHARD.logprobs.npy     float16 or float32 (positions, K): their log-probabilities

A shard holds the examples of ``-shard_lines`` consecutive lines of one corpus,
after OpenNMT-py's transforms (filtered lines are absent).  Examples are keyed
by (corpus id, line number), which OpenNMT-py's batches carry whatever its
bucketing and shuffling do; every lookup checks the stored target ids and the
source's checksum against the batch, so a stochastic or changed transform is an
error, never a silently wrong teacher.  A shard becomes part of the cache only
once its files are complete (the manifest lists it last), so an interrupted
build resumes at the first missing shard.
"""

import json
import os
import re
import time
import zlib

import numpy as np
import torch
from tqdm import tqdm

from onmt_lma.distill import DistillationError, Teacher
from onmt_lma.files import sha256_of
from onmt_lma.opts import int_type

FORMAT = 1
MANIFEST = "manifest.json"
ARRAYS = ("index", "targets", "ids", "logprobs")
VALUE_DTYPES = {"float16": np.float16, "float32": np.float32}
DEFAULT_TOPK = 32
DEFAULT_SHARD_LINES = 10000
DEFAULT_BATCH_TOKENS = 4096


class TeacherCacheError(DistillationError):
    """A teacher cache that cannot be built or used as asked."""


# --------------------------------------------------------------------------- #
# What a cache is made from
# --------------------------------------------------------------------------- #
def vocab_digest(vocab):
    """sha256 of a vocabulary's tokens in id order."""
    import hashlib

    return hashlib.sha256("\n".join(vocab.ids_to_tokens).encode("utf-8")).hexdigest()


def training_corpora(opt):
    """``{corpus id: {"path_src", "path_tgt", "transforms"}}`` of ``opt.data`` without ``valid``."""
    import yaml

    data = yaml.safe_load(opt.data) if isinstance(opt.data, str) else opt.data  # a string until OpenNMT-py parses it
    if not isinstance(data, dict):
        raise TeacherCacheError("-config has no data: section of corpora")
    corpora = {}
    for cid, info in data.items():
        if cid == "valid":
            continue
        if info.get("path_txt") or not info.get("path_tgt"):
            raise TeacherCacheError(f"corpus {cid!r}: a teacher cache needs parallel data (path_src and path_tgt)")
        corpora[cid] = {"path_src": info["path_src"], "path_tgt": info["path_tgt"],
                        "transforms": list(info.get("transforms") or [])}
    if not corpora:
        raise TeacherCacheError("-config names no training corpus in data: (only valid)")
    return corpora


def corpus_fingerprint(corpora):
    """The sha256 of each corpus's files, as the manifest records them."""
    return {cid: {"src_sha256": sha256_of(info["path_src"]), "tgt_sha256": sha256_of(info["path_tgt"]),
                  "transforms": info["transforms"]} for cid, info in corpora.items()}


def count_lines(path):
    with open(path, "rb") as handle:
        return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))


def real_line(reported, stride):
    """The file line of OpenNMT-py 3.5.1's ``cid_line_number`` when it reads with ``stride``.

    With ``stride`` s (GPUs x data-loader workers) a reader at offset w takes the
    lines i with ``(i // s) % s == w`` and numbers its j-th one ``j * s + w``
    (``onmt.inputters.text_corpus``): blocks of s lines every s*s lines.
    """
    if stride == 1:
        return reported
    offset, j = reported % stride, reported // stride
    return (j // stride) * stride * stride + offset * stride + j % stride


def source_checksum(ids):
    return zlib.crc32(np.asarray(ids, dtype=np.int32).tobytes())


def _safe_name(cid):
    return re.sub(r"[^A-Za-z0-9_.-]", "_", cid)


def shard_stem(cid, shard):
    return f"{_safe_name(cid)}.{shard:06d}"


# --------------------------------------------------------------------------- #
# Manifest
# --------------------------------------------------------------------------- #
def read_manifest(folder):
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise TeacherCacheError(f"-kd_cache {folder}: no {MANIFEST} there; build it with onmt_lma_teacher_cache")
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except (OSError, ValueError) as error:
        raise TeacherCacheError(f"{path}: not a readable manifest ({error})") from None
    if manifest.get("format") != FORMAT:
        raise TeacherCacheError(f"{path}: cache format {manifest.get('format')!r}, this onmt-lma reads {FORMAT}; "
                                "rebuild it with onmt_lma_teacher_cache")
    return manifest


def write_manifest(folder, manifest):
    path = os.path.join(folder, MANIFEST)
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(manifest, handle, indent=1)
        handle.write("\n")
    os.replace(path + ".tmp", path)


def differences(recorded, current):
    """What differs between a manifest's inputs and today's, one phrase each."""
    found = []
    if recorded["teacher_sha256"] != current["teacher_sha256"]:
        found.append("another teacher checkpoint (sha256 differs)")
    for side in ("src", "tgt"):
        if recorded["vocab"][side] != current["vocab"][side]:
            found.append(f"another {side} vocabulary")
    if recorded["topk"] != current["topk"]:
        found.append(f"-topk {recorded['topk']} then, {current['topk']} now")
    if recorded["dtype"] != current["dtype"]:
        found.append(f"-cache_dtype {recorded['dtype']} then, {current['dtype']} now")
    if recorded["shard_lines"] != current["shard_lines"]:
        found.append(f"-shard_lines {recorded['shard_lines']} then, {current['shard_lines']} now")
    for cid in sorted(set(recorded["corpora"]) | set(current["corpora"])):
        then, now = recorded["corpora"].get(cid), current["corpora"].get(cid)
        if then is None or now is None:
            found.append(f"corpus {cid!r} only in {'-config' if then is None else 'the cache'}")
            continue
        for key in ("src_sha256", "tgt_sha256", "transforms"):
            if then[key] != now[key]:
                found.append(f"corpus {cid!r}: {key} differs")
    return found


# --------------------------------------------------------------------------- #
# Building
# --------------------------------------------------------------------------- #
def _batches(examples, batch_tokens):
    """Examples sorted by length, in batches of at most ``batch_tokens`` padded target tokens."""
    from onmt_lma.runtime import token_budget_batches

    examples = sorted(examples, key=lambda ex: (len(ex["tgt"]["tgt_ids"]), len(ex["src"]["src_ids"])))
    return token_budget_batches(examples, batch_tokens,
                                lambda ex: max(len(ex["tgt"]["tgt_ids"]), len(ex["src"]["src_ids"])))


def teacher_top_k(teacher, examples, vocabs, topk, device, value_dtype):
    """``(index rows, targets, ids, log-probs)`` of one batch of numericalized examples."""
    from onmt.inputters.text_utils import tensorify

    tensors = tensorify(vocabs, [(ex, i) for i, ex in enumerate(examples)], device)
    with torch.no_grad():
        log_probs = torch.log_softmax(teacher.logits(tensors).float(), dim=-1)
        values, ids = log_probs.topk(topk, dim=-1)
    values, ids = values.cpu().numpy().astype(value_dtype), ids.cpu().numpy()
    rows, targets, top_ids, top_values = [], [], [], []
    for b, example in enumerate(examples):
        gold = example["tgt"]["tgt_ids"][1:]  # after the decoder's start token
        rows.append((example["cid_line_number"], len(gold), source_checksum(example["src"]["src_ids"])))
        targets.append(np.asarray(gold, dtype=np.int32))
        top_ids.append(ids[b, : len(gold)])
        top_values.append(values[b, : len(gold)])
    return rows, targets, top_ids, top_values


def write_shard(folder, stem, rows, targets, ids, values, id_dtype):
    """Write one shard's four arrays, each complete before it gets its name."""
    starts = np.cumsum([0] + [length for _, length, _ in rows[:-1]])
    order = np.argsort([line for line, _, _ in rows], kind="stable")
    index = np.array([(line, start, length, crc) for (line, length, crc), start in zip(rows, starts)],
                     dtype=np.int64).reshape(-1, 4)[order]
    topk = ids[0].shape[-1] if ids else 0
    arrays = {
        "index": index,
        "targets": np.concatenate(targets) if targets else np.zeros(0, np.int32),
        "ids": np.concatenate(ids).astype(id_dtype) if ids else np.zeros((0, topk), id_dtype),
        "logprobs": np.concatenate(values) if values else np.zeros((0, topk), np.float16),
    }
    for name, array in arrays.items():
        path = os.path.join(folder, f"{stem}.{name}.npy")
        with open(path + ".tmp", "wb") as handle:
            np.save(handle, array)
        os.replace(path + ".tmp", path)
    return {"examples": int(index.shape[0]), "positions": int(arrays["targets"].shape[0])}


def build_cache(opt):
    """One pass of the teacher ``opt.model`` over ``opt.data``'s training corpora into ``opt.out``."""
    from onmt.constants import CorpusTask
    from onmt.inputters.text_corpus import build_corpora_iters, get_corpora
    from onmt.inputters.text_utils import numericalize, process
    from onmt.train_single import prepare_transforms_vocabs
    from onmt.transforms import get_transforms_cls, make_transforms
    from onmt.utils.logging import logger
    from onmt.utils.parse import ArgumentParser

    if not os.path.isfile(opt.model):
        raise TeacherCacheError(f"-model {opt.model}: teacher checkpoint does not exist")
    for cid, info in training_corpora(opt).items():
        for side in ("path_src", "path_tgt"):
            if not os.path.isfile(info[side]):
                raise TeacherCacheError(f"corpus {cid!r}: {side} {info[side]} does not exist")
    ArgumentParser.validate_prepare_opts(opt)
    corpora_files = training_corpora(opt)  # with OpenNMT-py's defaults filled in (transforms)
    transforms_cls = get_transforms_cls(opt._all_transform)
    vocabs = prepare_transforms_vocabs(opt, transforms_cls)
    vocab_size = len(vocabs["tgt"].ids_to_tokens)
    if opt.topk > vocab_size:
        raise TeacherCacheError(f"-topk {opt.topk} is larger than the target vocabulary ({vocab_size} tokens)")
    device = torch.device(f"cuda:{opt.gpu}" if opt.gpu >= 0 else "cpu")
    teacher = Teacher.load(opt.model, vocabs, device)
    id_dtype = np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32
    current = {
        "format": FORMAT, "teacher": os.path.basename(opt.model), "teacher_sha256": sha256_of(opt.model),
        "vocab": {side: vocab_digest(vocabs[side]) for side in ("src", "tgt")}, "vocab_size": vocab_size,
        "topk": opt.topk, "dtype": opt.cache_dtype, "id_dtype": np.dtype(id_dtype).name,
        "shard_lines": opt.shard_lines, "corpora": corpus_fingerprint(corpora_files),
    }
    for cid, info in corpora_files.items():
        current["corpora"][cid]["lines"] = count_lines(info["path_src"])
    os.makedirs(opt.out, exist_ok=True)
    if os.path.isfile(os.path.join(opt.out, MANIFEST)):
        recorded = read_manifest(opt.out)
        found = differences(recorded, current)
        if found and not opt.force:
            raise TeacherCacheError(f"-out {opt.out} holds a cache made from other inputs ({'; '.join(found)}); "
                                    "give another -out, or -force to replace it")
        manifest = current if found else recorded
        if found:
            for name in os.listdir(opt.out):
                if name.endswith(".npy") or name.endswith(".npy.tmp"):
                    os.remove(os.path.join(opt.out, name))
    else:
        manifest = current
    manifest.setdefault("shards", {cid: {} for cid in corpora_files})
    manifest["complete"] = False
    write_manifest(opt.out, manifest)

    transforms = make_transforms(opt, transforms_cls, vocabs)
    iterators = build_corpora_iters(get_corpora(opt, CorpusTask.TRAIN), transforms, opt.data,
                                    skip_empty_level=opt.skip_empty_level)
    total = sum(current["corpora"][cid]["lines"] for cid in corpora_files)
    started = time.time()
    value_dtype = VALUE_DTYPES[opt.cache_dtype]

    def flush(cid, shard, chunk):
        examples = [numericalize(vocabs, ex) for ex in (process(CorpusTask.TRAIN, chunk) or [])]
        rows, targets, ids, values = [], [], [], []
        for batch in _batches(examples, opt.cache_batch_size):
            parts = teacher_top_k(teacher, batch, vocabs, opt.topk, device, value_dtype)
            for collected, part in zip((rows, targets, ids, values), parts):
                collected.extend(part)
        counts = write_shard(opt.out, shard_stem(cid, shard), rows, targets, ids, values, id_dtype)
        manifest["shards"][cid][str(shard)] = counts
        write_manifest(opt.out, manifest)

    with tqdm(total=total, unit="lines", desc=f"teacher top-{opt.topk}", mininterval=2) as progress:
        for cid, corpus_iter in iterators.items():
            done = manifest["shards"][cid]
            chunk, shard, seen = [], 0, 0
            for item in corpus_iter:
                line = item[0]["cid_line_number"]
                if line // opt.shard_lines != shard:
                    if chunk or str(shard) not in done:
                        flush(cid, shard, chunk)
                    chunk, shard = [], line // opt.shard_lines
                if str(shard) not in done:
                    chunk.append(item)
                progress.update(line + 1 - seen)
                seen = line + 1
            if chunk or str(shard) not in done:
                flush(cid, shard, chunk)
            progress.update(current["corpora"][cid]["lines"] - seen)
    manifest["complete"] = True
    manifest["build_seconds"] = round(time.time() - started, 1)
    write_manifest(opt.out, manifest)
    positions = sum(s["positions"] for shards in manifest["shards"].values() for s in shards.values())
    logger.info("teacher cache %s: complete, %d target positions, top-%d, %.1f MB", opt.out, positions,
                opt.topk, cache_bytes(opt.out) / 1e6)
    return manifest


def cache_bytes(folder):
    return sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder) if n.endswith(".npy"))


# --------------------------------------------------------------------------- #
# Reading
# --------------------------------------------------------------------------- #
class _CorpusEntries:
    """Per line of one corpus: shard, first position, length and source checksum (or shard -1: absent)."""

    def __init__(self, lines):
        self.shard = np.full(lines, -1, dtype=np.int64)
        self.start = np.zeros(lines, dtype=np.int64)
        self.length = np.zeros(lines, dtype=np.int64)
        self.crc = np.zeros(lines, dtype=np.int64)


class TeacherCache:
    """A complete cache folder, checked against the student's vocabularies and corpora."""

    def __init__(self, folder):
        self.folder = folder
        self.manifest = manifest = read_manifest(folder)
        if not manifest.get("complete"):
            raise TeacherCacheError(f"-kd_cache {folder}: the cache is not complete (its build was interrupted); "
                                    "run onmt_lma_teacher_cache again with the same options to finish it")
        self.topk = manifest["topk"]
        self.shards = {}
        self.entries = {}
        for cid, shards in manifest["shards"].items():
            entries = self.entries[cid] = _CorpusEntries(manifest["corpora"][cid]["lines"])
            for shard, counts in shards.items():
                arrays = self._open_shard(cid, int(shard), counts)
                self.shards[(cid, int(shard))] = arrays
                index = arrays["index"]
                lines = index[:, 0]
                if len(lines) and (lines.min() < 0 or lines.max() >= len(entries.shard)):
                    raise TeacherCacheError(f"{self._path(cid, int(shard), 'index')}: line numbers outside "
                                            f"the corpus's {len(entries.shard)} lines; rebuild the cache")
                entries.shard[lines] = int(shard)
                entries.start[lines], entries.length[lines], entries.crc[lines] = index[:, 1], index[:, 2], index[:, 3]

    def _path(self, cid, shard, name):
        return os.path.join(self.folder, f"{shard_stem(cid, shard)}.{name}.npy")

    def _open_shard(self, cid, shard, counts):
        expected = {"index": (counts["examples"], 4), "targets": (counts["positions"],),
                    "ids": (counts["positions"], self.topk), "logprobs": (counts["positions"], self.topk)}
        arrays = {}
        for name in ARRAYS:
            path = self._path(cid, shard, name)
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as error:
                raise TeacherCacheError(f"{path}: missing, truncated or damaged ({error}); rebuild the cache "
                                        "(onmt_lma_teacher_cache -force)") from None
            if array.shape != expected[name]:
                raise TeacherCacheError(f"{path}: shape {array.shape}, the manifest says {expected[name]}; "
                                        "the file is truncated or from another build: rebuild the cache "
                                        "(onmt_lma_teacher_cache -force)")
            arrays[name] = array
        return arrays

    def check(self, vocabs, opt):
        """Refuse a cache made with other vocabularies or corpora than ``opt``'s training data."""
        for side in ("src", "tgt"):
            if self.manifest["vocab"][side] != vocab_digest(vocabs[side]):
                raise TeacherCacheError(f"-kd_cache {self.folder}: made with another {side} vocabulary than "
                                        f"-{side}_vocab {getattr(opt, side + '_vocab', '?')}")
        for cid, info in training_corpora(opt).items():
            recorded = self.manifest["corpora"].get(cid)
            if recorded is None:
                raise TeacherCacheError(f"-kd_cache {self.folder}: corpus {cid!r} of -config is not in the cache "
                                        f"(it holds {', '.join(sorted(self.manifest['corpora']))})")
            for side, key in (("path_src", "src_sha256"), ("path_tgt", "tgt_sha256")):
                if sha256_of(info[side]) != recorded[key]:
                    raise TeacherCacheError(f"-kd_cache {self.folder}: corpus {cid!r}: {info[side]} is not the "
                                            "file the cache was made from (sha256 differs); rebuild the cache")

    def lookup(self, batch, padding_idx, stride=1):
        """Teacher top-K ``(log-probs, ids)``, each ``(batch, tgt_len - 1, K)``, for ``batch``'s targets.

        Padding positions get id 0 and log-probability 0 (the loss masks them).
        """
        target = batch["tgt"][:, 1:, 0].cpu().numpy()
        source = batch["src"][:, :, 0].cpu().numpy()
        source_lengths = batch["srclen"].cpu().numpy()
        shape = target.shape + (self.topk,)
        ids = np.zeros(shape, dtype=np.int64)
        values = np.zeros(shape, dtype=np.float32)
        for b, (cid, reported) in enumerate(zip(batch["cid"], batch["cid_line_number"])):
            line = real_line(int(reported), stride)
            entries = self.entries.get(cid)
            if entries is None or line >= len(entries.shard) or entries.shard[line] < 0:
                raise TeacherCacheError(
                    f"-kd_cache {self.folder}: corpus {cid!r} line {line + 1} is not in the cache "
                    "(the cache's transforms filtered it, or another corpus); rebuild it with the student's -config")
            shard, start, length = int(entries.shard[line]), int(entries.start[line]), int(entries.length[line])
            arrays = self.shards[(cid, shard)]
            gold = target[b][target[b] != padding_idx]
            if (len(gold) != length or not np.array_equal(gold, arrays["targets"][start:start + length])
                    or source_checksum(source[b, : source_lengths[b]]) != entries.crc[line]):
                raise TeacherCacheError(
                    f"-kd_cache {self.folder}: corpus {cid!r} line {line + 1} is not the example the cache holds "
                    "(its source or target tokens differ): a stochastic transform (subword sampling, "
                    "dropout, noise) or changed transform options; the cache needs deterministic transforms")
            ids[b, :length] = arrays["ids"][start:start + length]
            values[b, :length] = arrays["logprobs"][start:start + length]
        return torch.from_numpy(values), torch.from_numpy(ids)


class CachedTeacher:
    """The teacher of a :class:`TeacherCache`: top-K scores looked up instead of computed."""

    def __init__(self, cache, padding_idx, stride, device):
        self.cache, self.padding_idx, self.stride, self.device = cache, padding_idx, stride, device

    def scores(self, batch, start, end):
        """``(log-probs, ids)`` of target positions ``start:end``, each ``(batch * positions, K)``."""
        values, ids = self.cache.lookup(batch, self.padding_idx, self.stride)
        values, ids = values[:, start:end], ids[:, start:end]
        return (values.reshape(-1, values.size(-1)).to(self.device),
                ids.reshape(-1, ids.size(-1)).to(self.device))


def reading_stride(opt):
    """The line stride of OpenNMT-py's training reader (GPUs in data parallel x data-loader workers)."""
    gpus = max(1, len(opt.gpu_ranks)) if opt.parallel_mode == "data_parallel" else 1
    return gpus * max(1, opt.num_workers)


# --------------------------------------------------------------------------- #
# Options of the building command
# --------------------------------------------------------------------------- #
def add_cache_opts(parser):
    group = parser.add_argument_group("Teacher cache (onmt-lma)")
    group.add("--model", "-model", required=True, help="Teacher checkpoint (OpenNMT-py or onmt-lma).")
    group.add("--out", "-out", required=True, help="Cache folder (created; an interrupted build resumes there).")
    group.add("--topk", "-topk", type=int_type("an integer >= 1", lambda k: k >= 1), default=DEFAULT_TOPK,
              help="Tokens kept per target position: the teacher's K most probable.")
    group.add("--cache_dtype", "-cache_dtype", choices=sorted(VALUE_DTYPES), default="float16",
              help="Storage of the log-probabilities.")
    group.add("--shard_lines", "-shard_lines", type=int_type("an integer >= 1", lambda n: n >= 1),
              default=DEFAULT_SHARD_LINES, help="Corpus lines per shard (an interruption loses at most one).")
    group.add("--cache_batch_size", "-cache_batch_size", type=int_type("an integer >= 1", lambda n: n >= 1),
              default=DEFAULT_BATCH_TOKENS, help="Padded tokens per teacher batch.")
    group.add("--gpu", "-gpu", type=int, default=-1, help="GPU of the teacher (-1: CPU).")
    group.add("--force", "-force", action="store_true",
              help="Replace a cache in -out made from another teacher, vocabulary, corpus or K.")
    return group
