#!/usr/bin/env python
"""Model-level cost of the activations: students side by side (default: ReLU vs LMA-8, 64 and 256-dim).

On Multi30k (prepared from ../shared/data, or $LMA_DATA), with the recipes'
student settings (feed-forward 2048), in one run:
  * training target tokens/s (every step timed, the first 3 are warm-up);
  * beam-5 translation of the first --sentences test sentences one at a time
    (sentences/s) and inference memory in a fresh process (as
    ``onmt_lma_evaluate`` measures it);
each measured --rounds times per model, the models taking turns in each round
(a slow minute of the machine falls on all of them); the table gives the
median and the range.
Ratios are against the first activation listed.  Writes results/bench/<name>.{json,md}.
Goals (issue: fast LMA): training tokens/s and translation sentences/s >= 0.9
of ReLU, memory <= ReLU + 2%.

    python scripts/bench_students.py [--steps 12] [--sentences 200] [--rounds 3]
    python scripts/bench_students.py --sizes 64 --activations relu lma-4 lma-8 lma-12 lma-16 --name segments
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

from onmt_lma.training import plugin  # noqa: F401  (installs)
from onmt_lma.study import recipes
from onmt_lma.deploy.decoding import Decoding
from onmt_lma.evaluation.measure import Translation
from onmt_lma.model.activations import registered_activations
from onmt_lma.model.lma import DEFAULT_SEGMENTS
from onmt_lma.study.benchmark import WARMUP_STEPS, StepTimer, machine
from onmt_lma.bin import train as train_cli

REPO = Path(__file__).resolve().parents[1]
OUTPUT_LENGTH = 20  # every translation exactly 20 tokens: equal decoding work however trained


def prepare(data, work):
    out = work / "multi30k"
    subprocess.run([sys.executable, "-m", "data_prep", "multi30k", "--out", str(out), "--source", str(data / "multi30k")],
                   check=True, capture_output=True)
    return out


def parse_activation(label):
    """A registered activation, with ``-K`` for K segments ('relu', 'lma-8', 'aplu-4') -> (name, segments)."""
    name, _, segments = label.partition("-")
    if name in registered_activations() and (not segments or (segments.isdigit() and int(segments) >= 2)):
        return name, int(segments) if segments else DEFAULT_SEGMENTS
    raise argparse.ArgumentTypeError(f"activation {label!r}: expected one of {', '.join(registered_activations())}, "
                                     "with -K for K >= 2 segments (lma-8)")


def train_speed(corpus, run_dir, size, label, steps):
    activation, segments = parse_activation(label)
    settings = [("pos_ffn_activation_fn", activation), ("lma_segments", segments), ("train_steps", steps),
                ("save_checkpoint_steps", steps), ("valid_steps", 10**6), ("report_every", 10**6)]
    config = recipes.compose("multi30k", f"student{size}", corpus, run_dir, settings)
    run_dir.mkdir(parents=True, exist_ok=True)
    recipes.write_config(config, run_dir / "config.yaml")
    with StepTimer() as timer:
        train_cli.main(["-config", str(run_dir / "config.yaml")])
    return timer.tokens_per_second(), run_dir / f"model_step_{steps}.pt"


def translate_speed(checkpoint, source):
    result = subprocess.run(
        [sys.executable, "-m", "onmt_lma.evaluation.measure", "--worker", str(checkpoint), str(source),
         str(checkpoint) + ".hyp", "--translation",
         Translation(decoding=Decoding(min_length=OUTPUT_LENGTH, max_length=OUTPUT_LENGTH)).to_json()],
        capture_output=True, text=True, check=True,
    )
    run = json.loads(result.stdout.strip().splitlines()[-1])
    sentences = len(Path(source).read_text(encoding="utf-8").splitlines())
    tokens = sum(len(line.split()) + 1 for line in Path(str(checkpoint) + ".hyp").read_text().splitlines())
    return sentences / run["seconds"], tokens / run["seconds"], run["memory"]["peak_mb"]


def label_name(label):
    name, segments = parse_activation(label)
    pretty = {"relu": "ReLU", "prelu": "PReLU", "silu": "SiLU", "gelu": "GELU"}.get(name, name.capitalize())
    return (name.upper() if "-" in label else pretty) + (f"-{segments}" if "-" in label else "")


def table(results, sizes, labels):
    rows = []
    for size in sizes:
        reference = {field: median(values) for field, values in results[f"{size}/{labels[0]}"].items()}
        for label in labels:
            r = results[f"{size}/{label}"]
            m = {field: median(values) for field, values in r.items()}
            ratio = {field: m[field] / reference[field] for field in m}
            train, sent = sorted(r["train_target_tokens_per_s"]), sorted(r["translate_sentences_per_s"])
            rows.append(
                f"| {size} | {label_name(label)} | {m['train_target_tokens_per_s']:.0f} ({train[0]:.0f}–{train[-1]:.0f}) | "
                f"{ratio['train_target_tokens_per_s']:.2f} | "
                f"{m['translate_sentences_per_s']:.1f} ({sent[0]:.1f}–{sent[-1]:.1f}) | "
                f"{ratio['translate_sentences_per_s']:.2f} | "
                f"{m['translate_target_tokens_per_s']:.0f} | {ratio['translate_target_tokens_per_s']:.2f} | "
                f"{m['inference_memory_mb']:.0f} | {100 * (ratio['inference_memory_mb'] - 1):+.1f}% |"
            )
    reference = label_name(labels[0])
    return (
        f"| student | activation | train tok/s, median (range) | ratio to {reference} | translate sent/s, median (range) | ratio "
        f"| output tok/s (incl. EOS) | ratio | memory MB | change |\n"
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("LMA_DATA", REPO.parent / "shared" / "data")))
    parser.add_argument("--steps", type=int, default=12, help=f"training steps per run (first {WARMUP_STEPS} are warm-up)")
    parser.add_argument("--sentences", type=int, default=200, help="test sentences translated one at a time")
    parser.add_argument("--rounds", type=int, default=3, help="training and translation measurements per model, taking turns")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256], choices=[64, 128, 256])
    parser.add_argument("--activations", nargs="+", default=["relu", "lma-8"], type=str,
                        help="relu, prelu, swish, lma-K, aplu-K; ratios are against the first")
    parser.add_argument("--name", default="students", help="output file name (default: students)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    args = parser.parse_args()
    if args.steps <= WARMUP_STEPS:
        parser.error(f"--steps must be > {WARMUP_STEPS}")
    if args.rounds < 1 or args.sentences < 1:
        parser.error("--rounds and --sentences must be >= 1")
    for label in args.activations:
        try:
            parse_activation(label)
        except argparse.ArgumentTypeError as error:
            parser.error(f"--activations: {error}")
    if len(set(args.activations)) != len(args.activations):
        parser.error(f"--activations: each at most once, got {' '.join(args.activations)}")
    if not (args.data / "multi30k" / "train.de.gz").is_file():
        parser.error(f"--data {args.data}: expected multi30k/train.de.gz there")

    checkpoints = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        corpus = prepare(args.data, work)
        source = work / "test_subset.de"
        source.write_text("\n".join((corpus / "test.de").read_text().splitlines()[: args.sentences]) + "\n")
        keys = [f"{size}/{label}" for size in args.sizes for label in args.activations]
        results = {key: {"train_target_tokens_per_s": [], "translate_sentences_per_s": [],
                         "translate_target_tokens_per_s": [], "inference_memory_mb": []} for key in keys}
        for round_ in range(1, args.rounds + 1):
            for key in keys:
                size, label = key.split("/")
                print(f"== round {round_}/{args.rounds}: {key} training {args.steps} steps", flush=True)
                run_dir = work / f"student{size}_{label}_round{round_}"
                tokens_per_s, checkpoint = train_speed(corpus, run_dir, int(size), label, args.steps)
                results[key]["train_target_tokens_per_s"].append(tokens_per_s)
                checkpoints.setdefault(key, checkpoint)  # round 1's model is the one translated
        for round_ in range(1, args.rounds + 1):
            for key, checkpoint in checkpoints.items():
                print(f"== round {round_}/{args.rounds}: {key} translating {args.sentences} sentences", flush=True)
                for field, value in zip(("translate_sentences_per_s", "translate_target_tokens_per_s",
                                         "inference_memory_mb"), translate_speed(checkpoint, source)):
                    results[key][field].append(value)
    text = table(results, args.sizes, args.activations)
    print("\n" + text)
    command = "python scripts/bench_students.py " + " ".join(sys.argv[1:])
    meta = {"command": command.strip(), "steps": args.steps, "warmup_steps": WARMUP_STEPS, "sentences": args.sentences,
            "rounds": args.rounds, "machine": machine()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
    (args.out / f"{args.name}.md").write_text(
        f"# Students side by side: {', '.join(map(label_name, args.activations))}, model level\n\n"
        f"`{meta['command']}`: Multi30k, recipes' student settings (3 + 3 layers, feed-forward 2048, "
        f"3192-token batches), training tokens/s over {args.steps - WARMUP_STEPS} timed steps; beam-5 translation "
        f"of {args.sentences} test sentences one at a time with every output exactly {OUTPUT_LENGTH} tokens long "
        f"(-min_length = -max_length), so that every model does the same decoding work. Training and translation "
        f"each measured {args.rounds} times per model with the models taking turns (median and range); memory = "
        f"peak resident memory from model load on, minus resident memory before (CPU), median. Ratios and changes "
        f"are against "
        f"{label_name(args.activations[0])}.\n\n" + text + f"\nMachine: {meta['machine']}\n"
    )
    print(f"wrote {args.out / args.name}.json and .md")


if __name__ == "__main__":
    main()
