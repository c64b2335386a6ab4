"""The report of a budgeted study (:mod:`.budgeted`), from its collected results only: the teacher, the budget,
the main comparison paired by seed (differences, their mean, spread, paired t and signs), the diagnostics
against the baseline of their seed, BLEU-over-steps and validation curves, and the learned LMA shapes.

The main comparison's first activation is the baseline (the plan's first ``part: main`` group, e.g. ReLU);
every other main activation is paired with it seed by seed.
"""

import json
import statistics
from pathlib import Path

from onmt_lma.study.budget import window_gain
from onmt_lma.study.plots import lma_shape_plots
from onmt_lma.study.results import training_reports, validation_curve


def load_collected(results, valid_steps):
    """{run name: {"final": eval, "averaged": eval, "curve": {step: BLEU}, "valid": {step: ppl},
    "valid_acc": {step: accuracy}, "train": [step report, ...]}}."""
    runs = {}
    folder_of_runs = Path(results) / "runs"
    for folder in sorted(folder_of_runs.iterdir()) if folder_of_runs.is_dir() else []:
        entry = {"final": None, "averaged": None, "curve": {}, "valid": {}, "valid_acc": {}, "train": []}
        for path in folder.glob("*.eval.json"):
            entry["averaged" if path.name.startswith("model_avg_") else "final"] = json.loads(path.read_text())
        if (folder / "curve.json").exists():
            entry["curve"] = {int(k): v for k, v in json.loads((folder / "curve.json").read_text()).items()}
        if (folder / "train.log").exists():
            entry["valid"] = dict(validation_curve(folder / "train.log", valid_steps))
            entry["valid_acc"] = dict(validation_curve(folder / "train.log", valid_steps, "accuracy"))
            entry["train"] = training_reports(folder / "train.log")
        runs[folder.name] = entry
    return runs


def paired_lines(pairs, label):
    """Paired differences (B - A) over seeds: each, mean, spread, paired t and the sign count."""
    diffs = [b - a for a, b in pairs]
    lines = [f"- {label}: differences by seed " + ", ".join(f"{d:+.2f}" for d in diffs)]
    if len(diffs) >= 2:
        mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
        t = mean / (sd / len(diffs) ** 0.5) if sd > 0 else float("inf") * (1 if mean > 0 else -1)
        lines.append(f"  mean {mean:+.2f}, sample std {sd:.2f}, paired t {t:+.2f} (df {len(diffs) - 1}); "
                     f"above in {sum(d > 0 for d in diffs)} of {len(diffs)} seeds")
    return lines


def score(entry, which, metric="bleu"):
    """A run's score (``bleu`` or ``chrf``) of its ``final`` or ``averaged`` checkpoint; None if not there."""
    return entry[which][metric]["score"] if entry and entry.get(which) and entry[which].get(metric) else None


def fmt(value, digits=2):
    return "–" if value is None else f"{value:.{digits}f}"


def mean_std_text(values):
    """``mean ± sample std`` of a column (``–`` when empty; the mean alone for one value)."""
    if not values:
        return "–"
    if len(values) == 1:
        return fmt(values[0])
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def last_window_gain(entry, n, window):
    """How much a run's validation perplexity fell over the last ``window`` steps up to N, as a fraction of
    where it was (the pilot's rule applied to the run); None without both points."""

    return window_gain(entry["valid"] if entry else {}, n, window)


def verdict(pairs, gains, seeds, tolerance):
    """READING.md's rule 3 for one activation against the baseline: ``helps`` if above it in each paired seed
    (averaged checkpoints), ``hurts`` if below in each and every run's curve is flat at N (gain below
    ``tolerance``), otherwise ``unresolved`` (always with a single seed, which decides nothing); with the
    reason."""
    if len(pairs) < len(seeds):
        return "unresolved", f"{len(pairs)} of {len(seeds)} seeds paired"
    if len(pairs) < 2:
        return "unresolved", "one seed decides nothing"
    above = sum(b > a for a, b in pairs)
    if above == len(pairs):
        return "helps", f"above in each of {len(pairs)} seeds"
    if above or any(b == a for a, b in pairs):
        return "unresolved", f"above in {above} of {len(pairs)} seeds"
    rising = [g for g in gains if g is None or g >= tolerance]
    if rising:
        return "unresolved", (f"below in each of {len(pairs)} seeds, but {len(rising)} of {len(gains)} curves not "
                              f"flat at N (validation perplexity still falling by {tolerance:.0%} or more over the "
                              "last window)")
    return "hurts", f"below in each of {len(pairs)} seeds, every curve flat at N"


def training_fit(entry, n, window):
    """Mean training accuracy, NLL (xent) and KD KL of a run's step reports in ``(n - window, n]``, with its
    validation accuracy and perplexity at ``n``: ``{"acc", "xent", "kd_kl", "valid_acc", "valid_ppl"}``
    (None where the log lacks them)."""
    reports = [r for r in (entry or {}).get("train", []) if n - window < r["step"] <= n]

    def mean(key):
        values = [r[key] for r in reports if r[key] is not None]
        return statistics.fmean(values) if values else None

    return {"acc": mean("acc"), "xent": mean("xent"), "kd_kl": mean("kd_kl"),
            "valid_acc": (entry or {}).get("valid_acc", {}).get(n), "valid_ppl": (entry or {}).get("valid", {}).get(n)}


def fit_lines(study, runs, budget):
    """Does a run fall behind by fitting the training data less, or by generalizing worse?  Each run's fit to
    its training batches over the last window up to N (dropout on, as trained) beside its validation at N,
    and the main comparison's training NLL paired by seed."""
    if not budget:
        return []
    n, window = budget["N"], study.budget["window"]
    baseline, others, seeds, main = main_design(study)
    fits = {run.name: training_fit(runs.get(run.name), n, window) for run in study.students}
    shown = [run for run in study.students if fits[run.name]["acc"] is not None]
    if not shown:
        return []
    lines = [f"## Fit to the training data (steps {n - window + 1:,}–{n:,}) and validation at N", "",
             "Training numbers are the step reports' means (training batches, dropout on; NLL of the gold tokens, "
             "KL to the teacher), as OpenNMT-py logs them (1 decimal; KL 2).", "",
             "| run | train accuracy % | train NLL | KD KL | valid accuracy % | valid ppl | train − valid accuracy |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for run in shown:
        fit = fits[run.name]
        gap = fit["acc"] - fit["valid_acc"] if fit["valid_acc"] is not None else None
        name = (f"{study.run_label(run)} seed {run.seed}" if run.part == "main"
                else f"({run.part}) {study.run_label(run)}, seed {run.seed}")
        lines.append(f"| {name} | {fmt(fit['acc'])} | {fmt(fit['xent'], 3)} | {fmt(fit['kd_kl'], 3)} "
                     f"| {fmt(fit['valid_acc'])} | {fmt(fit['valid_ppl'])} | {fmt(gap)} |")
    lines.append("")
    base_label = study.activation_label(baseline)
    for other in others:
        label = study.activation_label(other)
        for key, what in (("xent", "training NLL"), ("acc", "training accuracy")):
            pairs = [(fits[main[(baseline, seed)].name][key], fits[main[(other, seed)].name][key]) for seed in seeds
                     if (baseline, seed) in main and (other, seed) in main]
            pairs = [pair for pair in pairs if None not in pair]
            if pairs:
                lines += paired_lines(pairs, f"{label} − {base_label}, {what}")
    return lines + [""]


def main_design(study):
    """(baseline activation, the other main activations, seeds, {(activation, seed): run}) of the main part."""
    main = [run for run in study.students if run.part == "main"]
    activations = list(dict.fromkeys(run.activation for run in main))
    seeds = sorted({run.seed for run in main})
    return activations[0], activations[1:], seeds, {(run.activation, run.seed): run for run in main}


def report_lines(study, runs, budget, command):
    baseline, others, seeds, main = main_design(study)
    base_label = study.activation_label(baseline)
    lines = [f"# {study.title}: report", "",
             f"Made by `{command}` from the collected runs; sacreBLEU on the {study.corpus} test set (beam 5), "
             "signature in each run's JSON.", ""]
    teacher = runs.get("teacher", {}).get("final")
    if teacher:
        chrf = teacher.get("chrf") or {}
        lines += ["## Teacher", "", "| BLEU | chrF | tok. BLEU | test ppl | parameters |", "| --- | --- | --- | --- | --- |",
                  f"| {teacher['bleu']['score']:.2f} | {fmt(chrf.get('score'))} | {teacher['bleu_tok']['score']:.2f} "
                  f"| {teacher['ppl']:.2f} | {teacher['params']:,} |", "",
                  f"sacreBLEU signatures: `{teacher['bleu']['signature']}`"
                  + (f"; `{chrf['signature']}`" if chrf else ""), ""]
    if budget:
        lines += [f"## Budget: N = {budget['N']} steps" + (" (capped by a deadline)" if budget["capped_by_deadline"]
                                                          else " (the pilot's rule)"), ""]
    for other in others:
        label = study.activation_label(other)
        window = study.budget["window"]
        lines += [f"## Main comparison: {base_label} and {label}, paired by seed", "",
                  f"| seed | {base_label} final | {base_label} averaged | {label} final | {label} averaged "
                  f"| {label} − {base_label} (averaged) | validation ppl fall over the last {window} steps "
                  f"({base_label} / {label}) |", "| --- | --- | --- | --- | --- | --- | --- |"]
        pairs, gains, columns = {"final": [], "averaged": [], "chrf": []}, [], [[], [], [], [], []]
        for seed in seeds:
            a = runs.get(main[(baseline, seed)].name) if (baseline, seed) in main else None
            b = runs.get(main[(other, seed)].name) if (other, seed) in main else None
            seed_gains = [last_window_gain(entry, budget["N"], window) if budget else None for entry in (a, b)]
            gains += seed_gains
            cells = [score(a, "final"), score(a, "averaged"), score(b, "final"), score(b, "averaged")]
            for which, x, y in (("final", cells[0], cells[2]), ("averaged", cells[1], cells[3]),
                                ("chrf", score(a, "averaged", "chrf"), score(b, "averaged", "chrf"))):
                if x is not None and y is not None:
                    pairs[which].append((x, y))
            diff = cells[3] - cells[1] if None not in (cells[1], cells[3]) else None
            shown = " / ".join("–" if g is None else f"{100 * g:.1f} %" for g in seed_gains)
            lines.append(f"| {seed} | " + " | ".join(fmt(c) for c in cells) + f" | {fmt(diff)} | {shown} |")
            for column, value in zip(columns, [*cells, diff]):
                if value is not None:
                    column.append(value)
        if max(len(column) for column in columns) > 1:
            lines.append("| mean ± std | " + " | ".join(mean_std_text(column) for column in columns) + " | |")
        lines.append("")
        for which, what in (("final", "final checkpoint"), ("averaged", "averaged checkpoint"),
                            ("chrf", "chrF, averaged checkpoint")):
            if pairs[which]:
                lines += paired_lines(pairs[which], f"{label} − {base_label}, {what}")
        outcome, reason = verdict(pairs["averaged"], gains, seeds, study.budget["tolerance"])
        lines += ["", f"**Verdict (READING.md, rule 3): {label} {outcome}** against {base_label}: {reason}.", ""]
    lines += fit_lines(study, runs, budget)
    if all(run.part == "main" for run in study.students):
        return lines
    compared = [baseline, *others]  # a diagnostic against each main activation of its seed
    deltas = " | ".join(f"Δ vs {study.activation_label(a)} (averaged)" for a in compared)
    lines += ["## Diagnostics (against the main runs of the same seed)", "",
              f"| run | what | BLEU final | BLEU averaged | {deltas} | test ppl | valid ppl at N |",
              "| --- " * (6 + len(compared)) + "|"]
    for run in study.students:
        entry = runs.get(run.name)
        if run.part == "main" or not entry:
            continue
        average_bleu = score(entry, "averaged")
        cells = []
        for activation in compared:
            reference = main.get((activation, run.seed))
            reference_bleu = score(runs.get(reference.name), "averaged") if reference else None
            cells.append(average_bleu - reference_bleu if None not in (average_bleu, reference_bleu) else None)
        valid = entry["valid"].get(budget["N"]) if budget else None
        ppl = entry["final"]["ppl"] if entry.get("final") else None
        lines.append(f"| {run.part}: {run.name} | {study.run_label(run)} | {fmt(score(entry, 'final'))} "
                     f"| {fmt(average_bleu)} | " + " | ".join(fmt(c) for c in cells) + f" | {fmt(ppl)} | {fmt(valid)} |")
    return lines + [""]


def report_plots(study, runs, out):
    """``bleu_vs_steps.png`` and ``valid_ppl.png``: every run, main seeds by line style, each diagnostic in a colour
    of its own (its seeds by marker); left the whole run, right its second half, where the runs part."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    baseline, others, _, _ = main_design(study)
    main_colors = {activation: f"C{i}" for i, activation in enumerate([baseline, *others])}
    diagnostic_seeds = {}  # each diagnostic's collected seeds (a planned one is not drawn yet), in plan order
    for run in study.students:
        if run.part != "main":
            diagnostic_seeds.setdefault(study.run_label(run), set()).update([run.seed] * bool(runs.get(run.name)))
    diagnostic_colors = {label: f"C{(len(main_colors) + i) % 10}" for i, label in enumerate(diagnostic_seeds)}
    styles, markers = {1: "-", 2: "--", 3: ":"}, {1: "", 2: "x", 3: "+"}
    written = []
    for key, name, ylabel, log in (("curve", "bleu_vs_steps.png", "test sacreBLEU (beam 5)", False),
                                   ("valid", "valid_ppl.png", "validation perplexity", True)):
        curves = [(run, sorted(runs.get(run.name, {}).get(key, {}).items())) for run in study.students]
        curves = [(run, points) for run, points in curves if points]
        if not curves:
            continue
        last = max(step for _, points in curves for step, _ in points)
        fig, (whole, late) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [3, 2]})
        for ax, first in ((whole, 0), (late, last / 2)):
            for run, points in curves:
                points = [(step, value) for step, value in points if step >= first]
                if not points:
                    continue
                label = study.run_label(run)
                if run.part == "main":
                    ax.plot(*zip(*points), styles.get(run.seed, "-"), color=main_colors[run.activation],
                            label=f"{label} seed {run.seed}")
                else:
                    seeds = f" seed {run.seed}" if len(diagnostic_seeds[label]) > 1 else ""
                    ax.plot(*zip(*points), "-.", marker=markers.get(run.seed, "o"), color=diagnostic_colors[label],
                            label=f"({run.part}) {label}{seeds}")
            ax.set_xlabel("training step")
            ax.set_ylabel(ylabel)
        if log:
            whole.set_yscale("log")
        late.set_title(f"the second half (steps from {last // 2:,})", fontsize=9)
        whole.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(Path(out) / name, dpi=110)
        plt.close(fig)
        written.append(Path(out) / name)
    return written


def write_report(study, command):
    """``report.md`` and the plots in the study's results folder; returns the report's text."""

    runs = load_collected(study.results, study.budget["every"])
    budget_file = study.results / "BUDGET.json"
    budget = json.loads(budget_file.read_text()) if budget_file.exists() else None
    text = "\n".join(report_lines(study, runs, budget, command))
    report_plots(study, runs, study.results)
    labels = {run.name: study.run_label(run) + (f" seed {run.seed}" if run.part == "main"
                                                else f" ({run.part}, seed {run.seed})") for run in study.students}
    evaluations = [dict(entry["averaged"], _file=str(study.results / "runs" / name), _label=labels.get(name, name))
                   for name, entry in runs.items()
                   if entry.get("averaged") and entry["averaged"]["model"].get("learned_lma")]
    if evaluations:
        lma_shape_plots(evaluations, study.results)
    (study.results / "report.md").write_text(text)
    return text
