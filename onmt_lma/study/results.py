"""Reading collected results: evaluation JSON files, their training logs (validation curves, step reports),
and grouping them by corpus, size and activation for :mod:`.report` and :mod:`.plots`.
"""

import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

from onmt_lma.model.activations import registered_activations  # the column order: the one list


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


def activation_columns(groups):
    labels = {a for cells in groups.values() for a in cells}
    base = {a.split("-")[0] for a in labels}
    by_segments = sorted(labels, key=lambda a: (a.split("-")[0], int(a.split("-")[1]) if "-" in a else 0))
    ordered = [a for name in registered_activations() if name in base for a in by_segments if a.split("-")[0] == name]
    return ordered + sorted(labels - set(ordered))


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


def segment_groups(results):
    """{(corpus, size): {segments: [lma results]}} where LMA was run with several segment counts."""
    found = defaultdict(lambda: defaultdict(list))
    for r in results:
        if not is_teacher(r) and r["model"]["activation"] == "lma":
            found[(r["corpus"], r["model"]["hidden_size"])][r["model"]["lma_segments"]].append(r)
    return {key: cells for key, cells in found.items() if len(cells) > 1}
