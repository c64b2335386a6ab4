"""Tables and plots from evaluation JSON files (``python -m onmt_lma.evaluate``).

    python -m onmt_lma.report RESULTS... [--out DIR]

RESULTS are JSON files or directories searched for ``*.eval.json``.  Writes
``DIR/report.md``: a table shaped like the paper's Table 3 (corpus x student x
metric rows, one column per activation, mean +- sample standard deviation over
seeds, change relative to ReLU) and the teachers' figures; and PNG plots:
``bleu_vs_size.png`` (BLEU against student size per activation) and
``valid_ppl_<corpus>_<size>.png`` (validation perplexity over training steps
per activation, from each run's ``train.log``).
"""

import argparse
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

ACTIVATION_ORDER = ["relu", "prelu", "swish", "aplu", "lma"]
METRICS = [("bleu", "BLEU"), ("bleu_tok", "tok. BLEU"), ("ppl", "ppl"), ("memory", "mem MB"), ("speed", "sent/s")]


def metric(result, key):
    if key in ("bleu", "bleu_tok"):
        return result[key]["score"]
    if key == "memory":
        return result["memory"]["peak_mb"]
    if key == "speed":
        return result["speed"]["sentences_per_s"]
    return result[key]


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
    ordered = [a for name in ACTIVATION_ORDER if name in base for a in sorted(labels) if a.split("-")[0] == name]
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
    columns = _columns(groups)
    lines = [
        "| corpus | student | metric | " + " | ".join(columns) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in columns) + " |",
    ]
    for corpus, size in sorted(groups, key=lambda k: (k[0], -k[1])):
        cells = groups[(corpus, size)]
        for key, label in METRICS:
            reference = None
            if "relu" in cells:
                reference = mean_std([metric(r, key) for r in cells["relu"]])[0]
            row = []
            for column in columns:
                if column not in cells:
                    row.append("—")
                    continue
                values = [metric(r, key) for r in cells[column]]
                row.append(_cell(values, None if column == "relu" else reference))
            lines.append(f"| {corpus} | {size} | {label} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def teacher_lines(results):
    rows = [r for r in results if is_teacher(r)]
    if not rows:
        return ""
    out = ["| corpus | teacher | BLEU | tok. BLEU | ppl | params |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        out.append(
            f"| {r['corpus']} | {r['model']['hidden_size']}-dim {r['model']['enc_layers']}+{r['model']['dec_layers']} "
            f"| {r['bleu']['score']:.2f} | {r['bleu_tok']['score']:.2f} | {r['ppl']:.2f} | {r['params'] / 1e6:.1f} M |"
        )
    return "\n".join(out) + "\n"


def validation_curve(train_log):
    """(step, validation perplexity) pairs from an OpenNMT-py training log.

    OpenNMT-py does not log the step of a validation: it is taken from the last
    ``Step N/`` report before it, exact when ``valid_steps`` is a multiple of
    ``report_every`` (as in every recipe).
    """
    points, step = [], None
    for line in Path(train_log).read_text(encoding="utf-8", errors="replace").splitlines():
        match = re.search(r"Step (\d+)/", line)
        if match:
            step = int(match.group(1))
        match = re.search(r"Validation perplexity: ([0-9.eE+-]+)", line)
        if match and step is not None:
            points.append((step, float(match.group(1))))
    return points


def _finish(fig, ax, path, title, xlabel, ylabel):
    import matplotlib.pyplot as plt

    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plots(results, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    groups = group(results)
    by_corpus = defaultdict(dict)
    for (corpus, size), cells in groups.items():
        by_corpus[corpus][size] = cells
    for corpus, sizes in by_corpus.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        for activation in _columns(groups):
            xs = [s for s in sorted(sizes) if activation in sizes[s]]
            if not xs:
                continue
            stats = [mean_std([r["bleu"]["score"] for r in sizes[s][activation]]) for s in xs]
            ax.errorbar(xs, [m for m, _ in stats], yerr=[s or 0 for _, s in stats], marker="o",
                        capsize=3, label=activation)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(sizes), [str(s) for s in sorted(sizes)])
        written.append(_finish(
            fig, ax, Path(out_dir) / f"bleu_vs_size_{corpus}.png",
            f"{corpus}: BLEU against student size (mean ± std over seeds)",
            "student size (embedding / hidden dimension)", "sacreBLEU (test)",
        ))
        for size, cells in sizes.items():
            fig, ax = plt.subplots(figsize=(6, 4))
            drawn = False
            for activation, runs in sorted(cells.items()):
                for i, r in enumerate(runs):
                    log = Path(r["run_dir"]) / "train.log"
                    curve = validation_curve(log) if log.exists() else []
                    if curve:
                        ax.plot(*zip(*curve), marker=".", alpha=0.8, color=f"C{_columns(groups).index(activation)}",
                                label=activation if i == 0 else None)
                        drawn = True
            if not drawn:
                plt.close(fig)
                continue
            written.append(_finish(
                fig, ax, Path(out_dir) / f"valid_ppl_{corpus}_{size}.png",
                f"{corpus}, {size}-dim students: validation perplexity",
                "training step", "validation perplexity",
            ))
    return written


def write_report(paths, out_dir):
    results = load_results(paths)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = "# Results\n\n"
    teachers = teacher_lines(results)
    if teachers:
        text += "## Teachers\n\n" + teachers + "\n"
    text += (
        "## Students\n\n"
        "Mean ± sample standard deviation over seeds [n = seeds]; in parentheses the change relative "
        "to the ReLU student's mean. BLEU: sacreBLEU on detokenized text; tok. BLEU: tokenized, as "
        "Moses multi-bleu.perl; mem: inference memory translating one sentence at a time; sent/s: "
        "beam-5 translation one sentence at a time.\n\n" + table(results)
    )
    signatures = sorted({r["bleu"]["signature"] for r in results})
    text += "\nsacreBLEU signature: " + "; ".join(f"`{s}`" for s in signatures) + "\n"
    images = plots(results, out_dir)
    if images:
        text += "\n" + "\n".join(f"![{p.stem}]({p.name})" for p in images) + "\n"
    (out_dir / "report.md").write_text(text, encoding="utf-8")
    return out_dir / "report.md", text


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m onmt_lma.report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", help="*.eval.json files or directories holding them")
    parser.add_argument("--out", default="results", help="output directory (default: results)")
    args = parser.parse_args(argv)
    path, text = write_report(args.results, args.out)
    print(text)
    print(f"[report] wrote {path}")


if __name__ == "__main__":
    main()
