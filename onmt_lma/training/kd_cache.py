"""Word-level distillation from the teacher's top-K distributions, computed once and stored.

Under teacher forcing the teacher's output distribution for a training pair
does not change from epoch to epoch (evaluation mode, no dropout), so one pass
of the teacher over the training corpus can serve every epoch and every student
distilled from it.  Keeping only each position's K most probable tokens (their
ids and log-probabilities) is how large-scale word-level KD stays affordable
(Tan et al. 2019, "Multilingual NMT with Knowledge Distillation", keep the top
8); the KD term is then taken over that support (:func:`onmt_lma.training.distill.distillation_loss`
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

This module is the format and its reading (``-kd_cache``); :mod:`onmt_lma.training.kd_cache_build` writes it.
"""

import hashlib
import json
import os
import re
import zlib

import numpy as np
import torch
import yaml

from onmt_lma.base.files import sha256_of
from onmt_lma.training.teacher import DistillationError

FORMAT = 1


MANIFEST = "manifest.json"


ARRAYS = ("index", "targets", "ids", "logprobs")


VALUE_DTYPES = {"float16": np.float16, "float32": np.float32}


class TeacherCacheError(DistillationError):
    """A teacher cache that cannot be built or used as asked."""


def vocab_digest(vocab):
    """sha256 of a vocabulary's tokens in id order."""
    return hashlib.sha256("\n".join(vocab.ids_to_tokens).encode("utf-8")).hexdigest()


def training_corpora(opt):
    """``{corpus id: {"path_src", "path_tgt", "transforms"}}`` of ``opt.data`` without ``valid``."""
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


def cache_bytes(folder):
    return sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder) if n.endswith(".npy"))


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
