#!/usr/bin/env python
"""Probe of the converged study (READING.md rule 7): is it the jump or the shifted kink that costs frozen LMA-8?

    python -m onmt_lma.study.probes.lma_jump_probe run [--runs runs/lma_jump_probe] [--data data/multi30k] [--steps 1000]
    python -m onmt_lma.study.probes.lma_jump_probe report [--runs ...] [--out results/multi30k_converged/cpu/jump_probe]

With alpha/beta frozen at their start (diagnostic (d), ``-lma_lr_scale 0``) LMA-8 computes ``x`` above the
batch mean and 0 below it: ReLU with its kink moved to the batch mean *and* a jump of the mean's size there.
The continuous variant frozen as well (``-lma_continuous -lma_lr_scale 0``) computes ``relu(x - mean)``:
the moved kink without the jump.  ``run`` trains both, seed 1, on this machine's CPU exactly as the CPU
seed-1 pair of ``results/multi30k_converged/cpu`` was trained (the released teacher, the same recipe, batches
and initial weights, two processes of one thread each), for the first ``--steps`` steps, where frozen LMA-8
fell furthest behind; first it retrains ReLU seed 1 for 40 steps and checks that its step reports equal the
CPU pair's (the same machine conditions, or the pairing means nothing).  Resumable: stopped, the same command
goes on.  ``report`` sets the probes' validation perplexity, training fit and test BLEU at ``--steps`` beside
the CPU pair's (``report.md``, ``results.json``).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

PAIR = REPO / "results" / "multi30k_converged" / "cpu" / "runs"
TEACHER = REPO / "results" / "multi30k_converged" / "models" / "teacher.pt"
#: name -> (what, settings beyond the CPU pair's LMA-8 run)
PROBES = {
    "student64_lma_frozen_seed1": ("LMA-8, alpha/beta frozen: x above the batch mean, 0 below (a jump there)",
                                   [("lma_lr_scale", 0.0)]),
    "student64_lma_frozen_continuous_seed1": ("LMA-8 continuous, frozen: relu(x - batch mean), no jump",
                                              [("lma_continuous", True), ("lma_lr_scale", 0.0)]),
}
AUTHORS_PEAK = 0.224  # the pair's learning rate (the recipe's then; it has twice it since READING's rule 4)
CHECK = "student64_relu_seed1_check"
CHECK_STEPS = 40


def command(run_dir, data, activation, steps, settings):
    """The study's own training command for a student of the CPU pair (onmt_lma.study.budgeted.recipe_command's
    settings, in the order the pair's configs were composed with)."""
    teacher = run_dir.parent / "teacher" / "model_step_3000.pt"
    argv = [sys.executable, "-m", "onmt_lma.study.recipes", "train", "multi30k", "student64", "--data", str(data),
            "--run-dir", str(run_dir)]
    for key, value in [("pos_ffn_activation_fn", activation), ("seed", 1), ("kd_teacher", str(teacher)),
                       ("train_steps", steps), ("learning_rate", AUTHORS_PEAK), *settings]:
        argv += ["--set", f"{key}={json.dumps(value)}"]
    return argv


def step_reports(log, up_to):
    from onmt_lma.study.results import training_reports

    return [(r["step"], r["acc"], r["xent"], r["kd_kl"]) for r in training_reports(log) if r["step"] <= up_to]


def run(args):
    runs = args.runs.resolve()
    teacher = runs / "teacher" / "model_step_3000.pt"
    if not teacher.exists():
        teacher.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(TEACHER, teacher)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # as the pair: two processes of one thread each
    check = runs / CHECK
    if not (check / "DONE").exists():
        print(f"[probe] pairing check: ReLU seed 1, {CHECK_STEPS} steps", flush=True)
        subprocess.run(command(check, args.data.resolve(), "relu", CHECK_STEPS, [("save_checkpoint_steps", CHECK_STEPS)]),
                       env=env, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    mine, theirs = step_reports(check / "train.log", CHECK_STEPS), step_reports(PAIR / "student64_relu_seed1" / "train.log",
                                                                                 CHECK_STEPS)
    if not mine or mine != theirs:
        sys.exit(f"[probe] the check's step reports {mine} differ from the CPU pair's {theirs}: this machine does "
                 "not reproduce the pair, and the probes would not be paired with it")
    print(f"[probe] pairing check passed: steps 1-{CHECK_STEPS} as the CPU pair ({mine[-1]})", flush=True)
    processes = []
    for name, (_, settings) in PROBES.items():
        run_dir = runs / name
        if (run_dir / "DONE").exists():
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        out = open(run_dir / "stdout.log", "a")
        processes.append((name, subprocess.Popen(command(run_dir, args.data.resolve(), "lma", args.steps, settings),
                                                 env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)))
        print(f"[probe] training {name} to step {args.steps}", flush=True)
    failed = [name for name, process in processes if process.wait() != 0]
    if failed:
        sys.exit(f"[probe] {', '.join(failed)} failed: see their stdout.log and train.log")
    print("[probe] done", flush=True)


def run_facts(log, steps, window):
    from onmt_lma.study.paired_report import training_fit
    from onmt_lma.study.results import training_reports, validation_curve

    entry = {"train": training_reports(log), "valid": dict(validation_curve(log, 250)),
             "valid_acc": dict(validation_curve(log, 250, "accuracy"))}
    return {"valid": entry["valid"], **training_fit(entry, steps, window)}


def report(args):
    from onmt_lma.evaluation import evaluate
    from onmt_lma.evaluation.measure import Translation

    rows = {"student64_relu_seed1": ("ReLU (the CPU pair)", PAIR / "student64_relu_seed1"),
            "student64_lma_seed1": ("LMA-8 (the CPU pair)", PAIR / "student64_lma_seed1"),
            **{name: (what, args.runs / name) for name, (what, _) in PROBES.items()}}
    window = args.steps // 2
    results = {}
    for name, (what, folder) in rows.items():
        facts = run_facts(folder / "train.log", args.steps, window)
        if name in PROBES:  # BLEU of the step checkpoint, as the study's BLEU-every-500-steps curve computes it
            out = folder / f"model_step_{args.steps}.eval.json"
            if not out.exists():
                evaluate.evaluate(folder / f"model_step_{args.steps}.pt", args.data, out, Translation(batch_size=100))
            facts["bleu"] = json.loads(out.read_text())["bleu"]["score"]
        else:
            facts["bleu"] = json.loads((folder / "curve.json").read_text()).get(str(args.steps))
        results[name] = {"what": what, **facts}
    steps = sorted(step for step in results["student64_relu_seed1"]["valid"] if step <= args.steps)
    lines = ["# Probe: the jump or the shifted kink? (READING.md rule 7)", "",
             f"Made by `python -m onmt_lma.study.probes.lma_jump_probe report`; seed 1, 2 CPU cores, the first {args.steps:,} "
             "steps, paired with the CPU seed-1 pair (the same teacher, batches and initial weights; the pairing "
             f"check retrained ReLU for {CHECK_STEPS} steps with identical step reports).  Training fit: the step "
             f"reports of steps {args.steps - window + 1:,}–{args.steps:,}; BLEU: test_2016, beam 5, the step-"
             f"{args.steps:,} checkpoint.", "",
             "| run | " + " | ".join(f"valid ppl {s:,}" for s in steps)
             + " | train accuracy % | train NLL | valid accuracy % | BLEU |",
             "| --- | " + " | ".join("---" for _ in steps) + " | --- | --- | --- | --- |"]

    def fmt(value, digits=2):
        return "–" if value is None else f"{value:.{digits}f}"

    for name, r in results.items():
        lines.append(f"| {r['what']} | " + " | ".join(fmt(r["valid"].get(s)) for s in steps)
                     + f" | {fmt(r['acc'])} | {fmt(r['xent'], 3)} | {fmt(r['valid_acc'])} | {fmt(r['bleu'])} |")
    relu = results["student64_relu_seed1"]["valid"].get(args.steps)
    frozen = results["student64_lma_frozen_seed1"]["valid"].get(args.steps)
    shifted = results["student64_lma_frozen_continuous_seed1"]["valid"].get(args.steps)
    if None not in (relu, frozen, shifted):
        closer = "ReLU: the jump" if abs(shifted - relu) < abs(shifted - frozen) else "frozen LMA-8: the shifted kink"
        lines += ["", f"Rule 7: at step {args.steps:,} the kink at the batch mean without the jump ({shifted:.2f}) is "
                  f"closer to {closer} is what costs frozen LMA-8 (ReLU {relu:.2f}, frozen LMA-8 {frozen:.2f})."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("run", "report"))
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "lma_jump_probe")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "multi30k")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "multi30k_converged" / "cpu" / "jump_probe")
    args = parser.parse_args(argv)
    (run if args.action == "run" else report)(args)


if __name__ == "__main__":
    main()
