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
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

from onmt_lma.activations import registered_activations  # noqa: E402  (the column order: the one list)
METRICS = [("bleu", "BLEU"), ("chrf", "chrF"), ("bleu_tok", "tok. BLEU"), ("length", "length ratio"), ("ppl", "ppl"),
           ("memory", "mem MB"), ("speed", "sent/s")]


def metric(result, key):
    """One number of an evaluation JSON; None where it does not hold it."""
    if key in ("bleu", "chrf", "bleu_tok"):  # chrF since onmt_lma_evaluate has it; tok. BLEU needs a tok. reference
        return result[key]["score"] if result.get(key) else None
    if key == "length":  # hypothesis / reference length, from sacreBLEU's "... hyp_len = H ref_len = R)"
        lengths = re.search(r"hyp_len = (\d+) ref_len = (\d+)", result["bleu"].get("text", ""))
        return int(lengths[1]) / int(lengths[2]) if lengths else None
    if key == "memory":
        return result["memory"]["peak_mb"]
    if key == "speed":
        return result["speed"]["sentences_per_s"]
    return result[key]


def train_log(result):
    """The run's OpenNMT-py training log: beside its JSON (collected results), else in its run directory."""
    for folder in (Path(result["_file"]).parent, Path(result["run_dir"])):
        if (folder / "train.log").is_file():
            return folder / "train.log"
    return None


def training_seconds(log):
    """Training wall time from a training log: the last ``N sec`` of each process, summed over resumptions."""
    total, last = 0, 0
    for seconds in re.findall(r"Step \d+/ *\d+;.*?(\d+) sec;", Path(log).read_text(encoding="utf-8", errors="replace")):
        seconds = int(seconds)
        if seconds < last:  # a resumed run restarts the clock
            total += last
        last = seconds
    return total + last


def load_results(paths):
    results = []
    for path in map(Path, paths):
        files = sorted(path.rglob("*.eval.json")) if path.is_dir() else [path]
        for file in files:
            data = json.loads(file.read_text())
            data["_file"] = str(file)
            results.append(data)
    if not results:
        raise SystemExit(f"report: no *.eval.json under {', '.join(map(str, paths))}")
    return results


def activation_label(model):
    name = model["activation"]
    if name in ("lma", "aplu"):
        name = f"{name}-{model['lma_segments']}"
    return name


def is_teacher(result):
    return not result["model"].get("kd_teacher") and "teacher" in Path(result["run_dir"]).name


def seed(result):
    """The run's seed (0 where its JSON does not name one), to sort and tell runs apart."""
    return result["model"].get("seed") or 0


def mean_std(values):
    """Mean and sample standard deviation (None for a single value)."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else None
    return mean, std


def group(results):
    """{(corpus, hidden_size): {activation: [results over seeds]}} for students."""
    groups = defaultdict(lambda: defaultdict(list))
    for r in results:
        if not is_teacher(r):
            groups[(r["corpus"], r["model"]["hidden_size"])][activation_label(r["model"])].append(r)
    return groups


def _columns(groups):
    labels = {a for cells in groups.values() for a in cells}
    base = {a.split("-")[0] for a in labels}
    by_segments = sorted(labels, key=lambda a: (a.split("-")[0], int(a.split("-")[1]) if "-" in a else 0))
    ordered = [a for name in registered_activations() if name in base for a in by_segments if a.split("-")[0] == name]
    return ordered + sorted(labels - set(ordered))


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
    columns = _columns(groups)
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
        for label in _columns({(corpus, size): cells}):
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


def segment_groups(results):
    """{(corpus, size): {segments: [lma results]}} where LMA was run with several segment counts."""
    found = defaultdict(lambda: defaultdict(list))
    for r in results:
        if not is_teacher(r) and r["model"]["activation"] == "lma":
            found[(r["corpus"], r["model"]["hidden_size"])][r["model"]["lma_segments"]].append(r)
    return {key: cells for key, cells in found.items() if len(cells) > 1}


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


def validation_curve(train_log, valid_steps=None, metric="perplexity"):
    """(step, validation ``metric``) pairs from an OpenNMT-py training log (``perplexity`` or ``accuracy``).

    OpenNMT-py does not log the step of a validation: it is taken from the last
    ``Step N/`` report before it, exact when ``valid_steps`` is a multiple of
    ``report_every``.  Given ``valid_steps``, the validation is put at the first
    multiple of it from that report on (OpenNMT-py validates at those steps), which
    is exact whatever ``report_every`` (e.g. reports every 20 steps, validation
    every 250: the report before the step-250 validation is step 240).
    """
    points, step = [], None
    for line in Path(train_log).read_text(encoding="utf-8", errors="replace").splitlines():
        match = re.search(r"Step (\d+)/", line)
        if match:
            step = int(match.group(1))
        match = re.search(rf"Validation {metric}: ([0-9.eE+-]+)", line)
        if match and step is not None:
            at = step if valid_steps is None else -(-step // valid_steps) * valid_steps
            points.append((at, float(match.group(1))))
    return points


#: a training step report: ``Step 2720/ 6000; acc: 68.5; ppl:   4.4; xent: 1.5; ...[; kd_kl: 1.0]``
_STEP_REPORT = re.compile(r"Step (\d+)/ *\d+; acc: *([0-9.]+); ppl: *([0-9.]+); xent: *([0-9.]+);"
                          r"(?:.*kd_kl: *([0-9.]+))?")


def training_reports(train_log):
    """Every step report of an OpenNMT-py training log as ``{"step", "acc", "ppl", "xent", "kd_kl"}``: the
    training batches' accuracy (%), perplexity and NLL per target token (with a teacher: of the gold tokens,
    ``kd_kl`` the KL part; without one ``kd_kl`` is None), as logged (1 decimal; 2 for ``kd_kl``)."""
    reports = []
    for match in _STEP_REPORT.finditer(Path(train_log).read_text(encoding="utf-8", errors="replace")):
        step, acc, ppl, xent, kl = match.groups()
        reports.append({"step": int(step), "acc": float(acc), "ppl": float(ppl), "xent": float(xent),
                        "kd_kl": None if kl is None else float(kl)})
    return reports


def target_tokens_per_second(train_log):
    """The target tokens/s of each step report of an OpenNMT-py training log
    (``... bsz: 2420/2770/153; 1440/1648 tok/s; ...``: source/target)."""
    text = Path(train_log).read_text(encoding="utf-8", errors="replace")
    return [int(m.group(1)) for m in re.finditer(r"Step \d+/.*? \d+/ *(\d+) tok/s;", text)]


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
    from onmt_lma.study.plots import plots

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
