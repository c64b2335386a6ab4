#!/usr/bin/env python
"""Are LMA's test-time statistics why the converged LMA-8 students fall behind ReLU?

    python -m onmt_lma.study.probes.lma_recalibration [--models results/multi30k_converged/models]
        [--data data/multi30k] [--runs runs/lma_recalibration]
        [--out results/multi30k_converged/recalibration]

At test time an LMA layer cuts its segments with running statistics: moving
averages of the batch statistics seen in training, with dropout on, and for a
released (averaged) student the mean of four checkpoints' averages.  The
translating network sees neither: its weights are the average, its dropout is
off.  For each released LMA-8 student (seeds 1-3) this script writes two
recalibrated copies with ``onmt_lma_recalibrate`` over the training corpus
(the mean batch statistics of the averaged weights, with training's dropout,
and with dropout off, as when translating), evaluates them, the released
LMA-8 and the released ReLU student of the same seed on the test set on this
machine's CPU (beam 5; the same machine and settings for all, so the
differences are paired), and writes ``report.md`` and ``results.json``.

Decision rule (fixed before the runs, READING.md rule 6): a recalibration
*helps* LMA-8 if it is above the released LMA-8 in each seed; it closes the
gap if it is at or above ReLU in each seed, and only then would the product's
recommendation change (READING rule 5).  Otherwise the test-time statistics
are not why LMA-8 is behind.  Reruns reuse what ``--runs`` holds.
"""

import argparse
import json
import statistics
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
from onmt_lma.study.probes.released_models import ReleaseError, verified_models

from onmt_lma.study.paired_report import paired_lines  # noqa: E402

SEEDS = (1, 2, 3)
#: the versions compared, in table order: (key, label, recalibration options or None)
VERSIONS = (
    ("relu", "ReLU (released)", None),
    ("lma", "LMA-8 (released)", None),
    ("lma_recal_dropout", "LMA-8, recalibrated with training's dropout", ["-training_dropout"]),
    ("lma_recal", "LMA-8, recalibrated with dropout off", []),
)


def segment_shift(released, recalibrated, segments=8):
    """How far recalibration moves a layer's cut points, in segment widths (6 std / k) of the released
    statistics: the middle cut point (the mean) by |Δmean|, the outermost (mean ± 3 std) by up to
    |Δmean| + 3 |Δstd|."""
    (mean, std), (new_mean, new_std) = released, recalibrated
    width = 6 * std / segments
    return abs(new_mean - mean) / width, (abs(new_mean - mean) + 3 * abs(new_std - std)) / width


def recalibrate(model, data, out, options):
    from onmt_lma.bin import recalibrate as recal

    if not out.exists():
        print(f"[recalibration] {out.name}", flush=True)
        args = ["-model", str(model), "-src", str(data / "train.de"), "-tgt", str(data / "train.en"),
                "-output", str(out)] + options
        recal.main(args)
    return out


def stored_statistics(path):
    from onmt_lma.base.checkpoint import load

    model = load(path)["model"]
    names = sorted({key.rsplit(".", 1)[0] for key in model if key.endswith(".running_mean")})
    return {name: (float(model[f"{name}.running_mean"]), float(model[f"{name}.running_std"])) for name in names}


def evaluated(model, data, out):
    from onmt_lma.evaluation import evaluate
    from onmt_lma.evaluation.measure import Translation

    if not out.exists():
        print(f"[evaluation] {out.name}", flush=True)
        evaluate.evaluate(model, data, out, Translation(batch_size=32))
    return json.loads(out.read_text())


def verdict(released, recalibrated, relu):
    above = sum(r > l for l, r in zip(released, recalibrated))
    if all(r >= u for r, u in zip(recalibrated, relu)):
        return "closes the gap (at or above ReLU in each seed)"
    if above == len(released):
        return "helps LMA-8 (above the released LMA-8 in each seed), does not close the gap to ReLU"
    return f"does not help (above the released LMA-8 in {above} of {len(released)} seeds)"


def report(results, shifts, command):
    lines = ["# LMA's test-time statistics: recalibrated released students", "",
             f"Made by `{command}` ([onmt_lma/study/probes/lma_recalibration.py](../../../onmt_lma/study/probes/lma_recalibration.py));",
             "every number on this machine's CPU, test_2016, beam 5, 32 sentences at a time, from the released",
             "float16 models (averaged checkpoints of the H200 runs).  Decision rule: READING.md rule 6.", "",
             "| seed | " + " | ".join(label for _, label, _ in VERSIONS) + " |",
             "| --- | " + " | ".join("---" for _ in VERSIONS) + " |"]
    for seed in SEEDS:
        lines.append(f"| {seed} | " + " | ".join(
            f"{results[seed][key]['bleu']:.2f} (ppl {results[seed][key]['ppl']:.2f})" for key, _, _ in VERSIONS) + " |")
    lines += ["", "BLEU, paired by seed:", ""]
    relu = [results[s]["relu"]["bleu"] for s in SEEDS]
    released = [results[s]["lma"]["bleu"] for s in SEEDS]
    for key, label, options in VERSIONS[1:]:
        values = [results[s][key]["bleu"] for s in SEEDS]
        lines += paired_lines(list(zip(relu, values)), f"{label} − ReLU")
        if options is not None:
            lines += paired_lines(list(zip(released, values)), f"{label} − LMA-8 (released)")
            lines.append(f"  Rule 6: {verdict(released, values, relu)}")
    lines += ["", "How far recalibration moves the cut points (each LMA layer of each seed, in segment widths",
              "6σ/8 of the released statistics: the middle cut point / the outermost):", ""]
    for key, label, options in VERSIONS[2:]:
        middle = [m for seed in SEEDS for m, _ in shifts[seed][key].values()]
        outer = [o for seed in SEEDS for _, o in shifts[seed][key].values()]
        lines.append(f"- {label}: middle at most {max(middle):.3f} (mean {statistics.fmean(middle):.3f}), "
                     f"outermost at most {max(outer):.3f} (mean {statistics.fmean(outer):.3f})")
    signature = results[SEEDS[0]]["relu"]["signature"]
    return "\n".join(lines + ["", f"sacreBLEU signature: {signature}", ""])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, default=REPO / "results" / "multi30k_converged" / "models")
    parser.add_argument("--data", type=Path, default=REPO / "data" / "multi30k")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "lma_recalibration")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "multi30k_converged" / "recalibration")
    args = parser.parse_args(argv)
    try:
        models = dict(verified_models(args.models))
    except ReleaseError as error:
        parser.exit(2, f"lma_recalibration: error: {error}\n")
    missing = [name for seed in SEEDS for name in (f"student64_relu_seed{seed}", f"student64_lma_seed{seed}")
               if name not in models]
    if missing:
        parser.exit(2, f"lma_recalibration: error: {args.models} lacks {', '.join(missing)}\n")
    args.runs.mkdir(parents=True, exist_ok=True)
    results, shifts = {}, {}
    for seed in SEEDS:
        lma = models[f"student64_lma_seed{seed}"]
        paths = {"relu": models[f"student64_relu_seed{seed}"], "lma": lma}
        for key, _, options in VERSIONS:
            if options is not None:
                paths[key] = recalibrate(lma, args.data, args.runs / f"{lma.stem}.{key}.pt", options)
        results[seed] = {}
        for key, path in paths.items():
            r = evaluated(path, args.data, args.runs / f"{Path(path).stem}.eval.json")
            results[seed][key] = {"bleu": r["bleu"]["score"], "chrf": r["chrf"]["score"], "ppl": r["ppl"],
                                  "signature": r["bleu"]["signature"]}
        released = stored_statistics(lma)
        shifts[seed] = {key: {layer: segment_shift(released[layer], stats)
                              for layer, stats in stored_statistics(paths[key]).items()}
                        for key, _, options in VERSIONS if options is not None}
        results[seed]["statistics"] = {"released": released, **{key: stored_statistics(paths[key])
                                                                 for key in shifts[seed]}}
    command = "python -m onmt_lma.study.probes.lma_recalibration"
    args.out.mkdir(parents=True, exist_ok=True)
    text = report(results, shifts, command)
    (args.out / "report.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps({str(s): results[s] for s in SEEDS}, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
