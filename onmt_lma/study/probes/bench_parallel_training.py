#!/usr/bin/env python
"""Training several students at once on a small CPU: one process with every core, or one process per core?

The 64-dim student of recipes/multi30k/student64.yaml (no teacher) trains on
prepared Multi30k (``python -m data_prep multi30k``) for a few steps, as one
process with ``OMP_NUM_THREADS`` = all cores, and as ``cores`` processes at
once with one thread each (what ``python -m onmt_lma.study.runs study PLAN --parallel N`` does
on CPU).  The speed of each process is the median target tokens/s of its log's
step reports after the first (warm-up); the processes' speeds add up.  The two
layouts alternate, ``--repeats`` times each.  Writes
``results/bench/parallel_training.{json,md}``.

    python -m onmt_lma.study.probes.bench_parallel_training [--data data/multi30k] [--steps 40] [--repeats 2]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from onmt_lma.study.results import target_tokens_per_second

REPO = Path(__file__).resolve().parents[3]
REPORT_EVERY = 10


def train(run_dir, data, steps, threads):
    """Start one student's training; returns the process (its log is ``run_dir/train.log``)."""
    command = [sys.executable, "-m", "onmt_lma.study.recipes", "train", "multi30k", "student64", "--data", str(data),
               "--run-dir", str(run_dir), "--set", f"train_steps={steps}", "--set", f"report_every={REPORT_EVERY}",
               "--set", "valid_steps=100000", "--set", "save_checkpoint_steps=100000", "--set", "seed=1"]
    return subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def speed(train_log):
    """Median target tokens/s of the step reports after the first."""
    speeds = target_tokens_per_second(train_log)
    if len(speeds) < 2:
        raise SystemExit(f"{train_log}: fewer than two step reports; train more --steps")
    return statistics.median(speeds[1:])


def layout(root, data, steps, processes, threads):
    """Total target tokens/s of ``processes`` students trained at once with ``threads`` threads each."""
    runs = [Path(tempfile.mkdtemp(dir=root)) for _ in range(processes)]
    started = [train(run, data, steps, threads) for run in runs]
    for run, process in zip(runs, started):
        _, error = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"training in {run} failed:\n{error[-2000:]}")
    return [speed(run / "train.log") for run in runs]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO / "data" / "multi30k", help="prepared Multi30k")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    args = parser.parse_args(argv)
    if not (args.data / "data.yaml").is_file():
        parser.error(f"--data {args.data}: no prepared corpus (python -m data_prep multi30k --out {args.data})")
    if args.steps < 2 * REPORT_EVERY:
        parser.error(f"--steps {args.steps}: at least {2 * REPORT_EVERY} (two step reports)")
    cores = os.cpu_count() or 1
    layouts = {f"1 process x {cores} threads": (1, cores), f"{cores} processes x 1 thread": (cores, 1)}
    measured = {name: [] for name in layouts}
    with tempfile.TemporaryDirectory() as root:
        for repeat in range(args.repeats):
            for name, (processes, threads) in layouts.items():
                speeds = layout(root, args.data.resolve(), args.steps, processes, threads)
                measured[name].append(sum(speeds))
                print(f"[bench] repeat {repeat + 1}: {name}: {' + '.join(map(str, speeds))} tok/s", flush=True)
    one, many = (statistics.median(measured[name]) for name in layouts)
    result = {"cores": cores, "steps": args.steps, "repeats": args.repeats, "target_tokens_per_s": measured,
              "ratio": many / one}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "parallel_training.json").write_text(json.dumps(result, indent=1) + "\n")
    table = "| layout | target tokens/s (all processes, median of repeats) | ratio |\n| --- | --- | --- |\n"
    table += "".join(f"| {name} | {statistics.median(values):.0f} | {statistics.median(values) / one:.2f}x |\n"
                     for name, values in measured.items())
    (args.out / "parallel_training.md").write_text(
        "# Students trained at once on CPU: threads or processes\n\n"
        "`python -m onmt_lma.study.probes.bench_parallel_training`: recipes/multi30k/student64.yaml without a teacher, "
        f"{args.steps} steps, step reports after the first, {cores} cores, the layouts alternating "
        f"{args.repeats} times. `python -m onmt_lma.study.runs study PLAN --parallel {cores}` uses the second layout.\n\n"
        + table)
    print(table)


if __name__ == "__main__":
    sys.exit(main())
