#!/usr/bin/env python
"""Teacher cost of word-level KD: student training tokens/s alone, with an online teacher, with its top-K cache.

A 64-dim student (3 + 3 layers, feed-forward 2048, the paper's student 3) trains
on real German-English text (Ope's test split in ../shared/data) alone and with a
256-dim teacher (6 + 6 layers, feed-forward 2048), alternating in one process.
Each training step (forward, backward, optimizer) is timed; the first steps are
warm-up.  The teacher is a freshly initialized checkpoint: its cost does not
depend on its quality.  The top-K caches (onmt_lma_teacher_cache) are built once
first; their build time and size per million target tokens are reported.
Writes results/bench/kd_teacher_cost.{json,md}.

    python scripts/bench_kd.py [--steps 20] [--repeats 2] [--activation lma] [--topk 8 32]
"""

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from onmt_lma.training import plugin  # noqa: F401  (installs)
from onmt_lma.bin import build_vocab as build_vocab_cli
from onmt_lma.bin import teacher_cache as cache_cli
from onmt_lma.bin import train as train_cli
from onmt_lma.training.kd_cache import cache_bytes
from onmt_lma.study.benchmark import WARMUP_STEPS, StepTimer, machine

REPO = Path(__file__).resolve().parents[1]

MODEL = [
    "-encoder_type", "transformer", "-decoder_type", "transformer", "-position_encoding",
    "-transformer_ff", "2048", "-heads", "8", "-batch_type", "tokens", "-batch_size", "3192",
    "-bucket_size", "16384", "-num_workers", "0", "-optim", "adam", "-adam_beta2", "0.998",
    "-decay_method", "noam", "-learning_rate", "2.0", "-warmup_steps", "8000",
    "-param_init", "0", "-param_init_glorot", "-dropout", "0.1", "-seed", "1",
    "-report_every", "1000", "-valid_steps", "100000",
]
STUDENT = ["-layers", "3", "-hidden_size", "64", "-word_vec_size", "64"]
TEACHER = ["-layers", "6", "-hidden_size", "256", "-word_vec_size", "256"]


def prepare(work, data, lines):
    """Train / valid files from Ope's tokenized test split, a data config and vocabularies."""
    de = (data / "ope" / "de-val-clean.10K.txt").read_text(encoding="utf-8").splitlines()
    en = (data / "ope" / "en-val-clean.10K.txt").read_text(encoding="utf-8").splitlines()
    for name, rows in (("train", slice(0, lines)), ("valid", slice(lines, lines + 100))):
        (work / f"{name}.de").write_text("\n".join(de[rows]) + "\n", encoding="utf-8")
        (work / f"{name}.en").write_text("\n".join(en[rows]) + "\n", encoding="utf-8")
    config = work / "data.yaml"
    config.write_text(
        f"save_data: {work}/run\nsrc_vocab: {work}/vocab.de\ntgt_vocab: {work}/vocab.en\n"
        f"overwrite: true\ndata:\n"
        f"  corpus_1: {{path_src: {work}/train.de, path_tgt: {work}/train.en}}\n"
        f"  valid: {{path_src: {work}/valid.de, path_tgt: {work}/valid.en}}\n"
    )
    build_vocab_cli.main(["-config", str(config), "-n_sample", "-1"])
    return config


def train(config, save_model, steps, extra):
    train_cli.main(
        ["-config", str(config), *MODEL, "-save_model", str(save_model),
         "-train_steps", str(steps), "-save_checkpoint_steps", str(steps), *extra]
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("LMA_DATA", REPO.parent / "shared" / "data")))
    parser.add_argument("--steps", type=int, default=20, help="training steps per run (first 3 are warm-up)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating runs per configuration")
    parser.add_argument("--activation", default="lma", help="student activation")
    parser.add_argument("--lines", type=int, default=4000, help="training pairs")
    parser.add_argument("--topk", type=int, nargs="*", default=[8, 32], help="teacher caches to time (K each)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    args = parser.parse_args()
    if args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must be > {WARMUP_STEPS} (warm-up)")
    if not (args.data / "ope" / "de-val-clean.10K.txt").is_file():
        parser.error(f"--data {args.data}: expected ope/de-val-clean.10K.txt there")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        config = prepare(work, args.data, args.lines)
        print("== teacher checkpoint (256-dim, 6 + 6 layers)", flush=True)
        train(config, work / "teacher", 1, TEACHER)
        teacher = work / "teacher_step_1.pt"
        configurations = {"student alone": [], "student + online teacher": ["-kd_teacher", str(teacher)]}
        caches = {}
        for k in args.topk:
            print(f"== teacher cache, top-{k}", flush=True)
            out = work / f"cache_top{k}"
            start = time.perf_counter()
            cache_cli.main(["-config", str(config), "-model", str(teacher), "-out", str(out), "-topk", str(k)])
            seconds = time.perf_counter() - start
            manifest = json.loads((out / "manifest.json").read_text())
            positions = sum(s["positions"] for shards in manifest["shards"].values() for s in shards.values())
            caches[k] = {"build_seconds": seconds, "target_positions": positions, "bytes": cache_bytes(out),
                         "mb_per_million_target_tokens": cache_bytes(out) / positions}
            configurations[f"student + cache top-{k}"] = ["-kd_cache", str(out)]
        student = [*STUDENT, "-pos_ffn_activation_fn", args.activation]
        runs = {name: [] for name in configurations}
        for repeat in range(args.repeats):
            for name, extra in configurations.items():
                print(f"== {name}, run {repeat + 1}/{args.repeats}, {args.steps} steps", flush=True)
                with StepTimer() as timer:
                    train(config, work / "student", args.steps, student + extra)
                runs[name].append(timer.tokens_per_second())

    median = {name: statistics.median(values) for name, values in runs.items()}
    alone = median["student alone"]
    result = {
        "benchmark": "student training target tokens/s: alone, with an online KD teacher, with its top-K cache",
        "student": "64-dim, 3+3 layers, ff 2048, " + args.activation,
        "teacher": "256-dim, 6+6 layers, ff 2048, relu",
        "batch": "3192 tokens",
        "training_pairs": args.lines,
        "steps_per_run": args.steps,
        "warmup_steps": WARMUP_STEPS,
        "runs": runs,
        "median_tokens_per_s": median,
        "ratio_to_student_alone": {name: value / alone for name, value in median.items()},
        "caches": {f"top-{k}": info for k, info in caches.items()},
        "machine": machine(),
    }
    table = "| configuration | target tokens/s (median) | ratio |\n| --- | --- | --- |\n" + "".join(
        f"| {name} | {value:.0f} | {value / alone:.2f} |\n" for name, value in median.items())
    if caches:
        table += ("\n| cache | build time (s) | target positions | size (MB) | MB per million target tokens |\n"
                  "| --- | --- | --- | --- | --- |\n" + "".join(
                      f"| top-{k} | {c['build_seconds']:.1f} | {c['target_positions']} | {c['bytes'] / 1e6:.1f} | "
                      f"{c['mb_per_million_target_tokens']:.1f} |\n" for k, c in caches.items()))
    print("\n" + table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "kd_teacher_cost.json").write_text(json.dumps(result, indent=2) + "\n")
    topk = " ".join(map(str, args.topk))
    (args.out / "kd_teacher_cost.md").write_text(
        "# Teacher cost of word-level distillation\n\n"
        f"`python scripts/bench_kd.py --steps {args.steps} --repeats {args.repeats} --topk {topk}`: "
        f"{result['student']} student, {result['teacher']} teacher, {args.lines} training pairs, batches of "
        f"3192 tokens, {args.steps} steps per run ({WARMUP_STEPS} warm-up), {args.repeats} alternating runs "
        "each; the caches are built once before the runs (their build time is the teacher's one pass).\n\n"
        + table
        + f"\nMachine: {result['machine']}\n"
    )
    print(f"wrote {args.out / 'kd_teacher_cost.json'} and .md")


if __name__ == "__main__":
    main()
