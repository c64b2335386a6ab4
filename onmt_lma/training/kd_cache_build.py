"""Building a teacher's top-K cache (``onmt_lma_teacher_cache``): one pass of the teacher over the training
corpora, shard by shard, resumable; the format is :mod:`onmt_lma.training.kd_cache`'s.
"""

import onmt_lma.base.onmt_import  # noqa: F401, I001  (first: before onmt)
import os
import shutil
import time

import numpy as np
import torch
from onmt.constants import CorpusTask
from onmt.inputters.text_corpus import build_corpora_iters, get_corpora
from onmt.inputters.text_utils import numericalize, process, tensorify
from onmt.train_single import prepare_transforms_vocabs
from onmt.transforms import get_transforms_cls, make_transforms
from onmt.utils.logging import logger
from onmt.utils.parse import ArgumentParser
from tqdm import tqdm

from onmt_lma.base.batching import token_budget_batches
from onmt_lma.base.files import check_folder_output, refuse_overwriting, replace_folder, sha256_of
from onmt_lma.base.opts import int_type
from onmt_lma.training.kd_cache import (FORMAT, MANIFEST, VALUE_DTYPES, TeacherCacheError, cache_bytes,
                                        corpus_fingerprint, count_lines, differences, read_manifest, shard_stem,
                                        source_checksum, training_corpora, vocab_digest, write_manifest)
from onmt_lma.training.teacher import Teacher

DEFAULT_TOPK = 32


DEFAULT_SHARD_LINES = 10000


DEFAULT_BATCH_TOKENS = 4096


def _batches(examples, batch_tokens):
    """Examples sorted by length, in batches of at most ``batch_tokens`` padded target tokens."""

    examples = sorted(examples, key=lambda ex: (len(ex["tgt"]["tgt_ids"]), len(ex["src"]["src_ids"])))
    return token_budget_batches(examples, batch_tokens,
                                lambda ex: max(len(ex["tgt"]["tgt_ids"]), len(ex["src"]["src_ids"])))


def teacher_top_k(teacher, examples, vocabs, topk, device, value_dtype):
    """``(index rows, targets, ids, log-probs)`` of one batch of numericalized examples."""
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


def is_cache_folder(folder):
    """Whether ``folder`` holds a teacher cache's manifest (what ``-force`` may replace)."""
    return os.path.isfile(os.path.join(folder, MANIFEST))


def build_cache(opt):
    """One pass of the teacher ``opt.model`` over ``opt.data``'s training corpora into ``opt.out``."""
    if not os.path.isfile(opt.model):
        raise TeacherCacheError(f"-model {opt.model}: teacher checkpoint does not exist")
    inputs = {"-model": opt.model, "-src_vocab": opt.src_vocab, "-tgt_vocab": opt.tgt_vocab}
    for cid, info in training_corpora(opt).items():
        for side in ("path_src", "path_tgt"):
            if not os.path.isfile(info[side]):
                raise TeacherCacheError(f"corpus {cid!r}: {side} {info[side]} does not exist")
            inputs[f"corpus {cid} {side}"] = info[side]
    refuse_overwriting(opt.out, inputs, "-out")
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
    if is_cache_folder(opt.out):
        recorded = read_manifest(opt.out)
        found = differences(recorded, current)
        if found and not opt.force:
            raise TeacherCacheError(f"-out {opt.out} holds a cache made from other inputs ({'; '.join(found)}); "
                                    "give another -out, or -force to replace it")
        if not found and recorded.get("complete"):
            logger.info("teacher cache %s: complete already, made from these inputs", opt.out)
            return recorded
    check_folder_output(opt.out, "a teacher cache", is_cache_folder, force=True, option="-out")
    building = opt.out.rstrip("/") + ".partial"  # a stable name, so that an interrupted build resumes there
    manifest = current
    if is_cache_folder(building) and not differences(read_manifest(building), current):
        manifest = read_manifest(building)
    else:
        shutil.rmtree(building, ignore_errors=True)
    os.makedirs(building, exist_ok=True)
    manifest.setdefault("shards", {cid: {} for cid in corpora_files})
    manifest["complete"] = False
    write_manifest(building, manifest)

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
        counts = write_shard(building, shard_stem(cid, shard), rows, targets, ids, values, id_dtype)
        manifest["shards"][cid][str(shard)] = counts
        write_manifest(building, manifest)

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
    write_manifest(building, manifest)
    replace_folder(building, opt.out)
    positions = sum(s["positions"] for shards in manifest["shards"].values() for s in shards.values())
    logger.info("teacher cache %s: complete, %d target positions, top-%d, %.1f MB", opt.out, positions,
                opt.topk, cache_bytes(opt.out) / 1e6)
    return manifest


def add_cache_opts(parser):
    group = parser.add_argument_group("Teacher cache (onmt-lma)")
    group.add("--model", "-model", required=True, help="Teacher checkpoint (OpenNMT-py or onmt-lma).")
    group.add("--out", "-out", required=True, help="Cache folder (built as OUT.partial, where an interrupted build resumes, and renamed when complete).")
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
