#!/usr/bin/env python
"""Does distilling from the teacher's top-K cache train the same students as the online teacher?

64-dim ReLU and LMA-8 students of ``recipes/multi30k/student64.yaml`` (seed 1, the same initial weights
and batch order) trained 800 steps on Multi30k from one teacher three ways: online (``-kd_teacher``), and
from its top-8 and top-32 caches (``-kd_cache``).  Validation every 200 steps, sacreBLEU on test_2016 at
the end, and the training speed from each run's log.

Decision rule, fixed before the runs: a K is recommended when, for both activations, the cached run's
validation perplexity at step 800 is within 2% of the online run's and its test BLEU within 0.5 (below
the seed-to-seed spread of results/multi30k, 0.3-1.0 BLEU).

    python -m onmt_lma.study.probes.kd_cache_equivalence run --teacher T.pt [--data data/multi30k] [--runs runs/kd_cache_equivalence]
                                             [--only student64_relu_online,student64_lma_online]
    python -m onmt_lma.study.probes.kd_cache_equivalence report [--runs ...] [--out results/bench]

``run`` is resumable (each run, cache and evaluation is skipped once finished).  On 2 CPU cores two
``run --only ...`` processes with ``OMP_NUM_THREADS=1`` each train 1.4x more tokens per second together
than one process with two threads (results/bench/parallel_training.md); only one of them should build the caches (give it the cached runs).  Writes
``results/bench/kd_cache_equivalence.{json,md}`` with paths relative to the runs folder.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
STEPS, VALID_EVERY = 800, 200
ACTIVATIONS = ("relu", "lma")
TOPK = (8, 32)
PPL_TOLERANCE, BLEU_TOLERANCE = 0.02, 0.5


def teachers():
    """``{label: settings}``: the online teacher first, then each cache."""
    return {"online": None, **{f"top-{k}": k for k in TOPK}}


def run_name(activation, label):
    return f"student64_{activation}_{label.replace('-', '')}"


def all_runs():
    """``{run name: (activation, teacher label, top-K or None)}`` in the default order."""
    return {run_name(activation, label): (activation, label, topk)
            for activation in ACTIVATIONS for label, topk in teachers().items()}


def train_all(args):
    from onmt_lma.evaluation import evaluate
    from onmt_lma.evaluation.measure import Translation
    from onmt_lma.study import recipes, sequential

    for name in args.only or all_runs():
        activation, label, topk = all_runs()[name]
        distil = (("kd_teacher", str(args.teacher.resolve())) if topk is None else
                  ("kd_cache", str(sequential.teacher_cache("multi30k", args.teacher.resolve(), args.data.parent, topk))))
        settings = [("pos_ffn_activation_fn", activation), ("seed", 1), distil, ("train_steps", STEPS),
                    ("valid_steps", VALID_EVERY), ("save_checkpoint_steps", VALID_EVERY)]  # resumable
        run_dir = args.runs / run_name(activation, label)
        final = recipes.train("multi30k", "student64", args.data, run_dir, settings)
        out = Path(f"{final}.eval.json")
        if not out.is_file():
            evaluate.evaluate(final, args.data, out, Translation(batch_size=32))
        print(f"[equivalence] {run_dir.name}: done", flush=True)


def tokens_per_second(train_log):
    """Median training speed (target tokens/s) of the log's step reports."""
    from onmt_lma.study.results import target_tokens_per_second

    speeds = target_tokens_per_second(train_log)
    return statistics.median(speeds) if speeds else None


def resumptions(train_log):
    """``[(step, exact)]``: where the run was resumed, and whether with onmt_lma's exact resumption (the
    uninterrupted run's batches) or as OpenNMT-py alone resumes (its data from the first batch again)."""
    import re

    text = Path(train_log).read_text(encoding="utf-8", errors="replace")
    found = []
    for match in re.finditer(r"resuming from model_step_(\d+)\.pt", text):
        after = text[match.end():].split("resuming from", 1)[0]
        found.append((int(match.group(1)), "resuming exactly" in after))
    return found


def plot_curves(rows, controls, path):
    """Validation perplexity over steps, one panel per student: each teacher path, the controls dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(ACTIVATIONS), figsize=(5 * len(ACTIVATIONS), 4), sharey=True)
    for ax, activation in zip(axes, ACTIVATIONS):
        for index, (a, label, entry) in enumerate(rows):
            if a == activation:
                ax.plot(*zip(*sorted(entry["curve"].items())), marker="o", color=f"C{index % 3}", label=label)
        for a, label, entry in controls:
            if a == activation:
                ax.plot(*zip(*sorted(entry["curve"].items())), ":", marker="x", color="grey", label=label)
        ax.set_yscale("log")
        ax.set_title({"relu": "ReLU", "lma": "LMA-8"}[activation])
        ax.set_xlabel("training step")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("validation perplexity")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_entry(run_dir, evaluation):
    """A finished run's validation curve, test BLEU/chrF and resumptions."""
    from onmt_lma.study.results import validation_curve

    scores = json.loads(evaluation.read_text())
    return {"curve": dict(validation_curve(run_dir / "train.log", VALID_EVERY)), "bleu": scores["bleu"]["score"],
            "chrf": scores["chrf"]["score"], "resumed": resumptions(run_dir / "train.log")}


def report(args):

    rows, result = [], {"rule": {"steps": STEPS, "ppl_tolerance": PPL_TOLERANCE, "bleu_tolerance": BLEU_TOLERANCE},
                        "runs": {}}
    for activation in ACTIVATIONS:
        online = None
        for label in teachers():
            run_dir = args.runs / run_name(activation, label)
            evaluation = run_dir / f"model_step_{STEPS}.pt.eval.json"
            if not evaluation.is_file():
                continue
            entry = {**run_entry(run_dir, evaluation), "tokens_per_s": tokens_per_second(run_dir / "train.log")}
            result["runs"][run_dir.name] = entry
            if label == "online":
                online = entry
            elif online is not None:
                ppl, ppl_online = entry["curve"].get(STEPS), online["curve"].get(STEPS)
                entry["ppl_ratio"] = ppl / ppl_online
                entry["bleu_difference"] = entry["bleu"] - online["bleu"]
                entry["within"] = (abs(entry["ppl_ratio"] - 1) <= PPL_TOLERANCE
                                   and abs(entry["bleu_difference"]) <= BLEU_TOLERANCE)
            rows.append((activation, label, entry))
    controls = []  # other runs of the folder (e.g. student64_lma_top8_uninterrupted): shown, not in the rule
    for name, (activation, label, _) in all_runs().items():
        for run_dir in sorted(args.runs.glob(f"{name}_*")):
            evaluation = run_dir / f"model_step_{STEPS}.pt.eval.json"
            if evaluation.is_file():
                entry = run_entry(run_dir, evaluation)
                result.setdefault("controls", {})[run_dir.name] = entry
                controls.append((activation, f"{label}, {run_dir.name[len(name) + 1:]}", entry))
    verdict, partial = {}, {}
    for label in list(teachers())[1:]:
        checked = {a: e["within"] for a, l, e in rows if l == label and "within" in e}
        partial[label] = checked
        verdict[label] = (False if not all(checked.values()) else
                          True if len(checked) == len(ACTIVATIONS) else None)  # None: not every student measured
    result["recommended"] = verdict
    steps = sorted({s for _, _, e in rows for s in e["curve"]})
    table = ("| student | teacher | " + " | ".join(f"val ppl {s}" for s in steps)
             + " | BLEU | chrF | ppl vs online | BLEU vs online | resumed at |\n"
             + "| --- " * (len(steps) + 7) + "|\n")
    for activation, label, e in rows:
        table += (f"| {'LMA-8' if activation == 'lma' else 'ReLU'} | {label} | "
                  + " | ".join(f"{e['curve'][s]:.2f}" if s in e["curve"] else "" for s in steps)
                  + f" | {e['bleu']:.2f} | {e['chrf']:.2f} | "
                  + (f"{100 * (e['ppl_ratio'] - 1):+.1f}% | {e['bleu_difference']:+.2f} |" if "within" in e else " | |")
                  + " " + (", ".join(f"{step}{'' if exact else '*'}" for step, exact in e["resumed"]) or "-") + " |\n")
    if controls:
        table += ("\nControls, not part of the rule (the same settings, another run):\n\n"
                  "| student | run | " + " | ".join(f"val ppl {s}" for s in steps) + " | BLEU | chrF | resumed at |\n"
                  + "| --- " * (len(steps) + 5) + "|\n")
        for activation, label, e in controls:
            table += (f"| {'LMA-8' if activation == 'lma' else 'ReLU'} | {label} | "
                      + " | ".join(f"{e['curve'][s]:.2f}" if s in e["curve"] else "" for s in steps)
                      + f" | {e['bleu']:.2f} | {e['chrf']:.2f} | "
                      + (", ".join(f"{step}{'' if exact else '*'}" for step, exact in e["resumed"]) or "-") + " |\n")
    args.out.mkdir(parents=True, exist_ok=True)
    plot_curves(rows, controls, args.out / "kd_cache_equivalence.png")
    (args.out / "kd_cache_equivalence.json").write_text(json.dumps(result, indent=1) + "\n")
    names = {"relu": "ReLU", "lma": "LMA-8"}
    lines = [f"- top-{label[4:]}: " + {True: "recommended (within the rule for both students)",
                                      False: "not recommended (outside the rule)",
                                      None: "not decided yet"}[ok]
             + "".join(f"; {names[a]} {'within' if within else 'outside'}" for a, within in partial[label].items())
             + "".join(f"; {names[a]} not measured yet" for a in ACTIVATIONS if a not in partial[label])
             for label, ok in verdict.items()]
    (args.out / "kd_cache_equivalence.md").write_text(
        "# Distillation from a top-K teacher cache against the online teacher\n\n"
        f"`python -m onmt_lma.study.probes.kd_cache_equivalence`: 64-dim students of recipes/multi30k/student64.yaml, seed 1, "
        f"{STEPS} steps, Multi30k, one teacher used online (`-kd_teacher`) and through its top-K caches "
        "(`-kd_cache`); test_2016, beam 5, sacreBLEU. Training speed is measured in kd_teacher_cost.md, not "
        "here (these runs may train two at a time, one thread each). Rule, fixed before the runs: a K is recommended when for "
        f"both students the cached run's validation perplexity at step {STEPS} is within "
        f"{100 * PPL_TOLERANCE:.0f}% of the online run's and its BLEU within {BLEU_TOLERANCE}.\n\n"
        + table + "\n![validation perplexity](kd_cache_equivalence.png)\n\n" + "\n".join(lines) + "\n\n"
        "Resumed at: the steps a run was interrupted and resumed at; * marks OpenNMT-py's own resumption "
        "(before onmt_lma.training.resume), whose data starts again at the corpus's first batch, so that after it the "
        "run trained on other batches than an uninterrupted one: its differences include that.\n")
    print(table)
    print("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("run", "report"))
    parser.add_argument("--teacher", type=Path, help="teacher checkpoint (run)")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "multi30k")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "kd_cache_equivalence")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    parser.add_argument("--only", type=lambda text: text.split(","),
                        help="comma-separated run names, trained in this order (default: all)")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.only or ()) - set(all_runs()))
    if unknown:
        parser.error(f"--only: unknown runs {', '.join(unknown)}; valid: {', '.join(all_runs())}")
    if args.action == "run":
        if args.teacher is None or not args.teacher.is_file():
            parser.error(f"--teacher: a teacher checkpoint is needed, got {args.teacher}")
        train_all(args)
    report(args)


if __name__ == "__main__":
    sys.exit(main())
