#!/usr/bin/env python
"""READING's rule 4 for ReLU at twice the peak learning rate: rule 3's verdict over seeds 1-3.

    python -m onmt_lma.study.probes.lr2x_rule4 [--out results/multi30k_converged]

ReLU at twice the authors' peak (diagnostic (a)) was above ReLU in seed 1, so rule 4 gave it seeds 2
and 3.  Each seed is paired with ReLU at the authors' peak trained on the same machine (the same seed on
another machine is another run): seed 1 on the H200 (``results/multi30k_converged``), seeds 2-3 on 2 CPU
cores through the teacher's top-8 cache (``results/multi30k_converged/cpu_lr2x``,
``studies/multi30k_converged_cpu_lr2x.yaml``).  From the collected runs only, this writes
``rule4_lr2x.md`` and ``rule4_lr2x.json``: the pairs, their differences (averaged and final checkpoints,
chrF), each run's validation perplexity at N and its fall over the last window, and rule 3's verdict
(``onmt_lma.study.paired_report.verdict``).  Only *helps* changes the recipes to twice the peak (rule 4).
"""

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

from onmt_lma.study import plan as study_plan  # noqa: E402
from onmt_lma.study.paired_report import (fmt, last_window_gain, load_collected, paired_lines, score,  # noqa: E402
                                          verdict)

STUDY = REPO / "results" / "multi30k_converged"
#: where each seed's pair was trained: (seed, its plan, the machine)
PAIRS = (
    (1, REPO / "studies" / "multi30k_converged.yaml", "one H200, online teacher"),
    (2, REPO / "studies" / "multi30k_converged_cpu_lr2x.yaml", "2 CPU cores, top-8 teacher cache"),
    (3, REPO / "studies" / "multi30k_converged_cpu_lr2x.yaml", "2 CPU cores, top-8 teacher cache"),
)
BASELINE, VARIANT = "student64_relu_seed{}", "student64_relu_lr2x_seed{}"


def seed_rows(pairs=PAIRS):
    """One row per seed whose pair is collected: scores, validation at N and the fall over the last window."""
    rows, collected = [], {}
    for seed, plan_file, machine in pairs:
        study = study_plan.load_plan(plan_file)
        if study.results not in collected:
            collected[study.results] = load_collected(study.results, study.budget["every"])
        base, variant = (collected[study.results].get(name.format(seed)) for name in (BASELINE, VARIANT))
        if score(base, "averaged") is None or score(variant, "averaged") is None:
            continue  # not collected (yet)
        n, window = json.loads((study.results / "BUDGET.json").read_text())["N"], study.budget["window"]
        rows.append({
            "seed": seed, "machine": machine, "plan": Path(plan_file).name, "N": n,
            **{f"{key}_{what}": value for key, entry in (("relu", base), ("relu_lr2x", variant)) for what, value in (
                ("averaged", score(entry, "averaged")), ("final", score(entry, "final")),
                ("chrf", score(entry, "averaged", "chrf")), ("valid_at_n", entry["valid"].get(n)),
                ("fall", last_window_gain(entry, n, window)))}})
    return rows


def rule4(rows, seeds=(1, 2, 3), tolerance=0.02):
    """Rule 3's verdict and its reason for ReLU at twice the peak against ReLU, over ``seeds``."""
    pairs = [(row["relu_averaged"], row["relu_lr2x_averaged"]) for row in rows]
    gains = [row[key] for row in rows for key in ("relu_fall", "relu_lr2x_fall")]
    return verdict(pairs, gains, list(seeds), tolerance)


def report_lines(rows, outcome, reason):
    percent = lambda gain: "–" if gain is None else f"{100 * gain:.1f} %"  # noqa: E731
    lines = ["# ReLU at twice the peak learning rate over seeds 1–3 (READING rule 4)", "",
             "Made by `python -m onmt_lma.study.probes.lr2x_rule4` from the collected runs. Each seed pairs ReLU at twice the "
             "authors' peak (learning rate 0.447) with ReLU at the authors' peak (0.224), both trained on the same "
             "machine with the same teacher, data order and initial weights, stopped at N and averaged over their "
             "last four checkpoints; test_2016, beam 5, sacreBLEU (signatures in the runs' JSON).", "",
             "| seed | machine | ReLU averaged | twice the peak averaged | difference | final checkpoints | "
             "chrF difference | validation ppl at N (ReLU / twice) | its fall over the last 500 steps |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(
            f"| {row['seed']} | {row['machine']} | {fmt(row['relu_averaged'])} | {fmt(row['relu_lr2x_averaged'])} "
            f"| {row['relu_lr2x_averaged'] - row['relu_averaged']:+.2f} "
            f"| {fmt(row['relu_final'])} / {fmt(row['relu_lr2x_final'])} "
            f"| {row['relu_lr2x_chrf'] - row['relu_chrf']:+.2f} "
            f"| {fmt(row['relu_valid_at_n'])} / {fmt(row['relu_lr2x_valid_at_n'])} "
            f"| {percent(row['relu_fall'])} / {percent(row['relu_lr2x_fall'])} |")
    lines.append("")
    for key, what in (("averaged", "averaged checkpoint"), ("final", "final checkpoint")):
        lines += paired_lines([(r[f"relu_{key}"], r[f"relu_lr2x_{key}"]) for r in rows],
                              f"twice the peak − ReLU, {what}")
    lines += paired_lines([(r["relu_chrf"], r["relu_lr2x_chrf"]) for r in rows], "twice the peak − ReLU, chrF")
    change = ("the recipes change to twice the authors' peak" if outcome == "helps"
              else "the recipes keep the authors' peak")
    lines += ["", f"**Verdict (READING.md, rule 3): ReLU at twice the peak {outcome}** against ReLU: {reason}; "
                  f"by rule 4 {change}.", ""]
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=STUDY, help="folder for rule4_lr2x.md and .json")
    args = parser.parse_args(argv)
    rows = seed_rows()
    if not rows:
        sys.exit("lr2x_rule4: no seed has both ReLU and ReLU at twice the peak collected (run the plans of "
                 "onmt_lma/study/probes/lr2x_rule4.py's PAIRS and collect them first)")
    outcome, reason = rule4(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rule4_lr2x.md").write_text("\n".join(report_lines(rows, outcome, reason)))
    (args.out / "rule4_lr2x.json").write_text(json.dumps({"verdict": outcome, "reason": reason, "seeds": rows},
                                                         indent=1) + "\n")
    print((args.out / "rule4_lr2x.md").read_text())


if __name__ == "__main__":
    main()
