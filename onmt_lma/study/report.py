"""Tables and plots from evaluation JSON files (``onmt_lma_evaluate``).

    python -m onmt_lma.study.report RESULTS... [--out DIR]

RESULTS are JSON files or directories searched for ``*.eval.json``.  Writes
``DIR/report.md``: a table shaped like the paper's Table 3 (corpus x student x
metric rows, one column per activation, mean +- sample standard deviation over
seeds, change relative to ReLU), each activation's BLEU difference to ReLU
against the spread over seeds, the LMA segment study where several segment
counts were run, the teachers' figures and every run's wall time; and PNG
plots: ``bleu_vs_size_<corpus>.png`` (BLEU against student size per
activation), ``valid_ppl_<corpus>_<size>.png`` (validation perplexity over
training steps, from each run's ``train.log``) and
``segments_<corpus>_<size>.png`` (the segment study) and
``lma_shapes_<corpus>_<size>.png`` (the function each LMA layer learned).  A run's ``train.log``
is looked for beside its JSON first, then in its run directory.  ``--reading
FILE`` puts a hand-written reading of the results at the top.
"""

import argparse
import statistics
from pathlib import Path

from onmt_lma.study.plots import plots
from onmt_lma.study.results import (METRICS, activation_columns, activation_label, group, is_teacher, load_results, mean_std, metric, segment_groups,
                                    seed, train_log, training_seconds)


def _cell(values, reference):
    mean, std = mean_std(values)
    text = f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"
    if reference is not None and reference != 0:
        change = 100.0 * (mean - reference) / abs(reference)
        text += f" ({change:+.1f}%)"
    return text + f" [n={len(values)}]"


def table(results):
    groups = group(results)
    if not groups:
        return "No student runs yet.\n"
    columns = activation_columns(groups)
    lines = [
        "| corpus | student | metric | " + " | ".join(columns) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in columns) + " |",
    ]
    for corpus, size in sorted(groups, key=lambda k: (k[0], -k[1])):
        cells = groups[(corpus, size)]
        for key, label in METRICS:
            values = {column: [v for v in (metric(r, key) for r in cells.get(column, [])) if v is not None]
                      for column in columns}
            reference = mean_std(values["relu"])[0] if values.get("relu") else None
            row = [_cell(values[column], None if column == "relu" else reference) if values[column] else "—"
                   for column in columns]
            lines.append(f"| {corpus} | {size} | {label} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def teacher_lines(results):
    rows = [r for r in results if is_teacher(r)]
    if not rows:
        return ""
    out = ["| corpus | teacher | BLEU | chrF | tok. BLEU | ppl | params |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        chrf, tok = (f"{v:.2f}" if v is not None else "—" for v in (metric(r, "chrf"), metric(r, "bleu_tok")))
        out.append(
            f"| {r['corpus']} | {r['model']['hidden_size']}-dim {r['model']['enc_layers']}+{r['model']['dec_layers']} "
            f"| {r['bleu']['score']:.2f} | {chrf} | {tok} | {r['ppl']:.2f} | {r['params'] / 1e6:.1f} M |"
        )
    return "\n".join(out) + "\n"


def comparison_lines(results):
    """Each activation's BLEU difference to ReLU, next to the spread over seeds (Welch's t)."""
    out = []
    for (corpus, size), cells in sorted(group(results).items(), key=lambda kv: (kv[0][0], -kv[0][1])):
        if "relu" not in cells:
            continue
        relu = [r["bleu"]["score"] for r in cells["relu"]]
        for label in activation_columns({(corpus, size): cells}):
            if label == "relu":
                continue
            other = [r["bleu"]["score"] for r in cells[label]]
            difference = statistics.fmean(other) - statistics.fmean(relu)
            spread = f"{min(other):.2f} to {max(other):.2f} vs {min(relu):.2f} to {max(relu):.2f}"
            t = "—"
            if len(other) > 1 and len(relu) > 1:
                standard_error = (statistics.variance(other) / len(other) + statistics.variance(relu) / len(relu)) ** 0.5
                t = f"{difference / standard_error:+.2f}" if standard_error > 0 else "—"
            out.append(f"| {corpus} | {size} | {label} | {difference:+.2f} | {spread} | {t} | {len(other)} / {len(relu)} |")
    if not out:
        return ""
    header = ["| corpus | student | activation | BLEU − ReLU | BLEU range over seeds (activation vs ReLU) "
              "| Welch's t | seeds |", "| --- | --- | --- | --- | --- | --- | --- |"]
    return "\n".join(header + out) + "\n"


def segment_lines(results):
    out = []
    for (corpus, size), cells in sorted(segment_groups(results).items()):
        out.append(f"\n{corpus}, {size}-dim LMA students (mean over the seeds run [n]; BLEU by seed "
                   f"compares like with like where segment counts were run with different seeds):\n")
        out.append("| segments | BLEU | BLEU by seed | tok. BLEU | ppl | params | mem MB | sent/s | n |")
        out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for segments in sorted(cells):
            runs = cells[segments]
            mean = {key: statistics.fmean(metric(r, key) for r in runs) for key in ("bleu", "bleu_tok", "ppl",
                                                                                     "memory", "speed")}
            by_seed = ", ".join(f"s{seed(r)} {metric(r, 'bleu'):.2f}" for r in sorted(runs, key=seed))
            params = statistics.fmean(r["params"] for r in runs)
            out.append(f"| {segments} | {mean['bleu']:.2f} | {by_seed} | {mean['bleu_tok']:.2f} | {mean['ppl']:.2f} "
                       f"| {params:,.0f} | {mean['memory']:.0f} | {mean['speed']:.2f} | {len(runs)} |")
    return "\n".join(out) + "\n" if out else ""


def runs_lines(results):
    """One row per run: what it is, its commit and its wall times."""
    out = ["| run | activation | seed | steps | training | evaluation | commit | evaluated |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(results, key=lambda r: (not is_teacher(r), Path(r["run_dir"]).name)):
        log = train_log(r)
        training = f"{training_seconds(log) / 60:.1f} min" if log else "—"
        out.append(
            f"| {Path(r['run_dir']).name} "
            f"| {activation_label(r['model'])} | {r['model'].get('seed')} | {r['model'].get('train_steps')} "
            f"| {training} | {r.get('evaluation_seconds', 0) / 60:.1f} min | {str(r.get('commit'))[:10]} "
            f"| {r.get('evaluated_at', '—')} |"
        )
    return "\n".join(out) + "\n"


def write_report(paths, out_dir, reading=None):
    results = load_results(paths)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = "# Results\n\n"
    if reading is not None:
        text += "## Reading\n\n" + Path(reading).read_text(encoding="utf-8").strip() + "\n\n"
    teachers = teacher_lines(results)
    if teachers:
        text += "## Teachers\n\n" + teachers + "\n"
    text += (
        "## Students\n\n"
        "Mean ± sample standard deviation over seeds [n = seeds]; in parentheses the change relative "
        "to the ReLU student's mean. BLEU: sacreBLEU on detokenized text; chrF: sacreBLEU's chrF (runs "
        "evaluated before it was added show —); tok. BLEU: tokenized, as "
        "Moses multi-bleu.perl; length ratio: hypothesis over reference length in sacreBLEU's count (below 1, "
        "BLEU's brevity penalty applies); mem: inference memory translating one sentence at a time; sent/s: "
        "beam-5 translation one sentence at a time, measured once per run at the end of its evaluation (runs "
        "measured at different times on a shared machine differ by tens of percent: compare speeds with a "
        "side-by-side benchmark, scripts/bench_students.py).\n\n" + table(results)
    )
    signatures = sorted({r[key]["signature"] for r in results for key in ("bleu", "chrf") if r.get(key)})
    text += "\nsacreBLEU signature: " + "; ".join(f"`{s}`" for s in signatures) + "\n"
    comparison = comparison_lines(results)
    if comparison:
        text += ("\n## Against ReLU, with the spread over seeds\n\nBLEU difference of the means; the range of "
                 "the seeds' scores; Welch's t (difference over its standard error; |t| well below 2 is within "
                 "seed noise, and with 3 seeds a side even |t| near 3 is weak evidence).\n\n" + comparison)
    segments = segment_lines(results)
    if segments:
        text += "\n## LMA segment study\n" + segments
    images = plots(results, out_dir)
    if images:
        text += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in images) + "\n"
    text += "\n## Runs\n\nTraining: wall time from the run's training log, summed over resumptions; " \
            "evaluation: translation, scoring and perplexity.\n\n" + runs_lines(results)
    (out_dir / "report.md").write_text(text, encoding="utf-8")
    return out_dir / "report.md", text


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m onmt_lma.study.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="*.eval.json files or directories holding them")
    parser.add_argument("--out", default="results", help="output directory (default: results)")
    parser.add_argument("--reading", help="Markdown file with a reading of the results, put at the top if it exists")
    args = parser.parse_args(argv)
    reading = args.reading if args.reading and Path(args.reading).is_file() else None
    path, text = write_report(args.results, args.out, reading)
    print(text)
    print(f"[report] wrote {path}")


if __name__ == "__main__":
    main()
