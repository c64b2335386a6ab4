#!/usr/bin/env python
"""Model-level cost of LMA: ReLU vs LMA-8 students (64 and 256-dim, feed-forward 2048), side by side.

On Multi30k (prepared from ../shared/data, or $LMA_DATA), with the recipes'
student settings, in one run and alternating ReLU / LMA:
  * training target tokens/s (every step timed, the first 3 are warm-up);
  * beam-5 translation of the first --sentences test sentences one at a time
    (sentences/s) and inference memory in a fresh process (as
    ``python -m onmt_lma.evaluate`` measures it).
Writes results/bench/students.{json,md}.  Goals (issue: fast LMA): training
tokens/s and translation sentences/s >= 0.9 of ReLU, memory <= ReLU + 2%.

    python scripts/bench_students.py [--steps 12] [--sentences 200]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from onmt_lma import plugin  # noqa: F401  (installs)
from onmt_lma import recipes
from onmt_lma.benchmark import WARMUP_STEPS, StepTimer, machine
from onmt_lma.bin import train as train_cli

REPO = Path(__file__).resolve().parents[1]
SIZES = (64, 256)
ACTIVATIONS = ("relu", "lma")
OUTPUT_LENGTH = 20  # every translation exactly 20 tokens: equal decoding work however trained


def prepare(data, work):
    out = work / "multi30k"
    subprocess.run([sys.executable, "-m", "data_prep", "multi30k", "--out", str(out), "--source", str(data / "multi30k")],
                   check=True, capture_output=True)
    return out


def train_speed(corpus, work, size, activation, steps):
    run_dir = work / f"student{size}_{activation}"
    settings = [("pos_ffn_activation_fn", activation), ("train_steps", steps), ("save_checkpoint_steps", steps),
                ("valid_steps", 10**6), ("report_every", 10**6)]
    config = recipes.compose("multi30k", f"student{size}", corpus, run_dir, settings)
    run_dir.mkdir(parents=True, exist_ok=True)
    recipes.write_config(config, run_dir / "config.yaml")
    with StepTimer() as timer:
        train_cli.main(["-config", str(run_dir / "config.yaml")])
    return timer.tokens_per_second(), run_dir / f"model_step_{steps}.pt"


def translate_speed(checkpoint, source):
    result = subprocess.run(
        [sys.executable, "-m", "onmt_lma.evaluate", "--worker", str(checkpoint), str(source),
         str(checkpoint) + ".hyp", "--beam", "5", "--fixed-length", str(OUTPUT_LENGTH)],
        capture_output=True, text=True, check=True,
    )
    run = json.loads(result.stdout.strip().splitlines()[-1])
    sentences = len(Path(source).read_text(encoding="utf-8").splitlines())
    tokens = sum(len(line.split()) + 1 for line in Path(str(checkpoint) + ".hyp").read_text().splitlines())
    return sentences / run["seconds"], tokens / run["seconds"], run["memory"]["peak_mb"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("LMA_DATA", REPO.parent / "shared" / "data")))
    parser.add_argument("--steps", type=int, default=12, help=f"training steps per run (first {WARMUP_STEPS} are warm-up)")
    parser.add_argument("--sentences", type=int, default=200, help="test sentences translated one at a time")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    args = parser.parse_args()
    if args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must be > {WARMUP_STEPS}")
    if not (args.data / "multi30k" / "train.de.gz").is_file():
        parser.error(f"--data {args.data}: expected multi30k/train.de.gz there")

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = prepare(args.data, work)
        source = work / "test_subset.de"
        source.write_text("\n".join((corpus / "test.de").read_text().splitlines()[: args.sentences]) + "\n")
        for size in SIZES:
            for activation in ACTIVATIONS:
                print(f"== {size}-dim {activation}: training {args.steps} steps, translating "
                      f"{args.sentences} sentences", flush=True)
                tokens_per_s, checkpoint = train_speed(corpus, work, size, activation, args.steps)
                sentences_per_s, tokens_per_s_out, memory_mb = translate_speed(checkpoint, source)
                results[f"{size}/{activation}"] = {
                    "train_target_tokens_per_s": tokens_per_s,
                    "translate_sentences_per_s": sentences_per_s,
                    "translate_target_tokens_per_s": tokens_per_s_out,
                    "inference_memory_mb": memory_mb,
                }
    rows = []
    for size in SIZES:
        relu, lma = results[f"{size}/relu"], results[f"{size}/lma"]
        rows.append(
            f"| {size} | {relu['train_target_tokens_per_s']:.0f} | {lma['train_target_tokens_per_s']:.0f} | "
            f"{lma['train_target_tokens_per_s'] / relu['train_target_tokens_per_s']:.2f} | "
            f"{relu['translate_sentences_per_s']:.1f} | {lma['translate_sentences_per_s']:.1f} | "
            f"{lma['translate_sentences_per_s'] / relu['translate_sentences_per_s']:.2f} | "
            f"{relu['translate_target_tokens_per_s']:.0f} | {lma['translate_target_tokens_per_s']:.0f} | "
            f"{lma['translate_target_tokens_per_s'] / relu['translate_target_tokens_per_s']:.2f} | "
            f"{relu['inference_memory_mb']:.0f} | {lma['inference_memory_mb']:.0f} | "
            f"{100 * (lma['inference_memory_mb'] / relu['inference_memory_mb'] - 1):+.1f}% |"
        )
    table = (
        "| student | train tok/s ReLU | LMA-8 | ratio | translate sent/s ReLU | LMA-8 | ratio "
        "| output tok/s (incl. EOS) ReLU | LMA-8 | ratio | memory MB ReLU | LMA-8 | change |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n"
    )
    print("\n" + table)
    meta = {"steps": args.steps, "warmup_steps": WARMUP_STEPS, "sentences": args.sentences, "machine": machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "students.json").write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
    (args.out / "students.md").write_text(
        "# Students: ReLU vs LMA-8, model level\n\n"
        f"`python scripts/bench_students.py --steps {args.steps} --sentences {args.sentences}`: Multi30k, recipes' "
        f"student settings (3 + 3 layers, feed-forward 2048, 3192-token batches), training tokens/s over "
        f"{args.steps - WARMUP_STEPS} timed steps; beam-5 translation of {args.sentences} test sentences one at a "
        f"time with every output exactly {OUTPUT_LENGTH} tokens long (-min_length = -max_length), so that both models do the same decoding work; memory = peak resident memory from model load on, minus resident memory before (CPU). Goals: ratios >= 0.9, memory <= +2%.\n\n"
        + table + f"\nMachine: {meta['machine']}\n"
    )
    print(f"wrote {args.out / 'students.json'} and .md")


if __name__ == "__main__":
    main()
