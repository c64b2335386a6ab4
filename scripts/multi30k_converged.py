#!/usr/bin/env python
"""The converged, paper-faithful Multi30k study (results/multi30k_converged).

Recipes of recipes/multi30k with the settings of the authors' code (biases in
every linear layer, plain NLL, peak learning rate of learning rate 1.0 /
warm-up 8000): a new teacher, then 64-dim students distilled from it (KD
weight 0.7, temperature 1).  Every student trains with the same schedule cap
(MAX_STEPS) and is stopped at the budget N that the pilot fixes; noam decay
does not depend on ``train_steps``, so a run stopped at N is the run of an
N-step budget.

Decision rule of the budget, fixed before any run (:func:`pilot_budget`): the
pilot (ReLU, seed 1, distilled; the main comparison's ReLU seed 1) is
validated every 250 steps; N is the first step >= MIN_STEPS at which its
validation perplexity improved by less than TOLERANCE over the last WINDOW
steps, at most MAX_STEPS.

    python scripts/multi30k_converged.py plan
    python scripts/multi30k_converged.py run [--gpu 0] [--parallel 12] [--deadline-min M]
    python scripts/multi30k_converged.py collect --results results/multi30k_converged
    python scripts/multi30k_converged.py release --results results/multi30k_converged
    python scripts/multi30k_converged.py report --results results/multi30k_converged

``run`` trains the teacher (resumable, skipped when finished), starts
``--parallel`` students at once (on a GPU: all of them; on CPU each process
gets cores / parallel threads, and a run's evaluation holds its slot until it
is done: on 2 cores ``--parallel 2`` trains 1.4x the tokens per second of
``--parallel 1``: results/bench/parallel_training.md), stops each at N, then
per run: BLEU on test_2016 every 500 steps, the average of the
last AVERAGE_LAST checkpoints, and a full evaluation of the final and the
averaged checkpoint (onmt_lma.evaluate).  ``collect`` copies what the
results need out of the runs folder, paths relative.
"""

import argparse
import concurrent.futures
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORPUS = "multi30k"
MIN_STEPS, MAX_STEPS, WINDOW, TOLERANCE = 2000, 6000, 500, 0.02
CHECKPOINT_EVERY, AVERAGE_LAST = 250, 4  # BLEU on the test set every second checkpoint
PILOT = "student64_relu_seed1"
TWICE_THE_PEAK = 0.447  # recipes/multi30k's 0.224 doubled: the peak of the paper's text (learning rate 2.0)


@dataclasses.dataclass(frozen=True)
class Run:
    name: str
    activation: str
    seed: int
    part: str  # "main" or the diagnostic's letter in the order
    settings: tuple = ()
    what: str = ""


#: every student of the study, in launch order: the main comparison, then the diagnostics (seed 1)
RUNS = [Run(f"student64_{act}_seed{seed}", act, seed, "main", what=f"{act.upper() if act == 'lma' else 'ReLU'}"
            + ("-8" if act == "lma" else "")) for seed in (1, 2, 3) for act in ("relu", "lma")] + [
    Run("student64_relu_lr2x_seed1", "relu", 1, "a", (("learning_rate", TWICE_THE_PEAK),), "ReLU, twice the peak"),
    Run("student64_lma_lr2x_seed1", "lma", 1, "a", (("learning_rate", TWICE_THE_PEAK),), "LMA-8, twice the peak"),
    Run("student64_lma_continuous_seed1", "lma", 1, "b", (("lma_continuous", True),), "LMA-8 continuous"),
    Run("student64_lma_actlr0.1_seed1", "lma", 1, "c", (("lma_lr_scale", 0.1),), "LMA-8, alpha/beta at 0.1x lr"),
    Run("student64_lma_frozen_seed1", "lma", 1, "d", (("lma_lr_scale", 0.0),), "LMA-8, alpha/beta frozen"),
    Run("student64_gelu_seed1", "gelu", 1, "e", (), "GELU"),
]


def log(message):
    print(f"[study {time.strftime('%H:%M:%S')}] {message}", flush=True)


def pilot_budget(curve, min_steps=MIN_STEPS, max_steps=MAX_STEPS, window=WINDOW, tolerance=TOLERANCE):
    """The budget N from the pilot's validation curve ``{step: perplexity}``, or None (not yet).

    N is the first step ``s >= min_steps`` with
    ``(ppl[s - window] - ppl[s]) / ppl[s - window] < tolerance``; ``max_steps``
    once the curve reaches it without that.
    """
    for step in sorted(curve):
        if step > max_steps:
            break
        if step >= min_steps and step - window in curve:
            before = curve[step - window]
            if (before - curve[step]) / before < tolerance:
                return step
        if step == max_steps:
            return step
    return None


def validation_curve(run_dir, valid_steps=CHECKPOINT_EVERY):
    """The run's ``{step: validation perplexity}`` (the student recipe validates every 250 steps, reports every 20)."""
    from onmt_lma.study.report import validation_curve as from_log

    log_file = Path(run_dir) / "train.log"
    return dict(from_log(log_file, valid_steps)) if log_file.is_file() else {}


def checkpoint(run_dir, step):
    return Path(run_dir) / f"model_step_{step}.pt"


def device_settings(gpu):
    return [("world_size", 1), ("gpu_ranks", [gpu])] if gpu >= 0 else []


def recipe_command(model, run_dir, args, settings):
    command = [sys.executable, "-m", "onmt_lma.study.recipes", "train", CORPUS, model, "--data", str(args.data),
               "--run-dir", str(run_dir)]
    for key, value in settings:
        command += ["--set", f"{key}={json.dumps(value)}"]
    return command


def train_teacher(args):
    run_dir = args.runs / "teacher"
    if not (run_dir / "DONE").exists():
        log("training the teacher")
        subprocess.run(recipe_command("teacher", run_dir, args, [("seed", 1)] + device_settings(args.gpu)
                                       + args.extra + args.teacher_extra),
                       check=True, stdout=open(args.runs / "teacher.stdout", "a"), stderr=subprocess.STDOUT)
    final = run_dir / (run_dir / "DONE").read_text().strip()
    log(f"teacher: {final.name}")
    return final


def student_settings(run, teacher, args):
    if args.kd_cache:  # the teacher's top-K cache, built once (onmt_lma_teacher_cache)
        from onmt_lma.study.runs import teacher_cache

        distil = ("kd_cache", str(teacher_cache(CORPUS, teacher, args.data.parent, args.kd_cache)))
    else:
        distil = ("kd_teacher", str(teacher))
    return [("pos_ffn_activation_fn", run.activation), ("seed", run.seed), distil,
            ("train_steps", args.max_steps), *run.settings, *device_settings(args.gpu), *args.extra]


def process_env(args):
    """On CPU, ``--parallel`` processes share the cores (threads of one process would contend with another's)."""
    if args.gpu >= 0 or args.parallel == 1:
        return None
    return {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.parallel))}


def launch(run, teacher, args):
    run_dir = args.runs / run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    out = open(run_dir / "stdout.log", "a")
    command = recipe_command("student64", run_dir, args, student_settings(run, teacher, args))
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            env=process_env(args))


def stop(process):
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def saved(run_dir, step):
    """The checkpoint of ``step`` exists and is complete (training logged past it, or ended)."""
    path = checkpoint(run_dir, step)
    if not path.exists():
        return False
    size = path.stat().st_size
    time.sleep(2)
    return size > 0 and path.stat().st_size == size


def train_students(teacher, args, finish):
    """Start every student, fix N from the pilot, stop each at N and hand it to ``finish``."""
    runs = [run for run in RUNS if not (args.runs / run.name / "DONE").exists()
            and (not args.only or run.name in args.only)]
    budget_file = args.runs / "BUDGET.json"
    budget = json.loads(budget_file.read_text()) if budget_file.exists() else None
    processes, running = {}, list(runs)
    futures = []
    started = time.time()
    while running or processes:
        finishing = sum(not future.done() for _, future in futures) if args.gpu < 0 else 0  # CPU: holds a slot
        while running and len(processes) + finishing < args.parallel:
            run = running.pop(0)
            processes[run] = launch(run, teacher, args)
            log(f"started {run.name}")
        if budget is None:
            curve = validation_curve(args.runs / PILOT)
            n = pilot_budget(curve, args.min_steps, args.max_steps, args.window)
            capped = False
            if n is None and args.deadline_min and time.time() - started > 60 * args.deadline_min:
                common = [s for s in sorted(curve) if s % args.every == 0 and all(
                    checkpoint(args.runs / r.name, s).exists() for r in processes)]
                n, capped = (common[-1] if common else None), True
            if n is not None:
                budget = {"N": n, "capped_by_deadline": capped, "pilot": PILOT,
                          "pilot_curve": {str(s): p for s, p in sorted(curve.items())},
                          "rule": {"min_steps": args.min_steps, "max_steps": args.max_steps,
                                   "window": args.window, "tolerance": TOLERANCE}}
                budget_file.write_text(json.dumps(budget, indent=2) + "\n")
                log(f"budget fixed: N = {n}" + (" (capped by the deadline)" if capped else ""))
        for run, process in list(processes.items()):
            run_dir = args.runs / run.name
            if budget is not None and saved(run_dir, budget["N"]):
                stop(process)
                (run_dir / "DONE").write_text(checkpoint(run_dir, budget["N"]).name + "\n")
                del processes[run]
                log(f"{run.name}: stopped at {budget['N']}")
                futures.append((run.name, finish(run, budget["N"])))
            elif process.poll() is not None:
                del processes[run]
                if process.returncode != 0:
                    log(f"{run.name}: FAILED (exit {process.returncode}); see {run_dir / 'stdout.log'}")
        time.sleep(5)
    return budget, futures


def translate_bleu(path, corpus_dir, gpu, batch_size):
    """sacreBLEU of a checkpoint's beam-5 translation of the test set (batched)."""
    import sacrebleu
    from onmt.inference_engine import InferenceEnginePY

    from onmt_lma import plugin  # noqa: F401
    from onmt_lma.evaluate import _translate_opts, postprocess

    hyp = Path(str(path) + ".curve.hyp")
    opt = _translate_opts(path, corpus_dir / "test.de", hyp, 5, gpu, batch_size)
    engine = InferenceEnginePY(opt)
    engine.infer_file()
    engine.terminate()
    _, detok = postprocess(hyp.read_text(encoding="utf-8").splitlines(), corpus_dir)
    refs = (corpus_dir / "test.ref.detok.en").read_text(encoding="utf-8").splitlines()
    return sacrebleu.corpus_bleu(detok, [refs]).score


def finish_run(name, n, args):
    """Curve, average, evaluations of one stopped run (in its own process)."""
    from onmt_lma import average, evaluate

    run_dir = args.runs / name
    curve_file = run_dir / "curve.json"
    curve = json.loads(curve_file.read_text()) if curve_file.exists() else {}
    for step in range(2 * args.every, n + 1, 2 * args.every):
        if str(step) not in curve:
            curve[str(step)] = translate_bleu(checkpoint(run_dir, step), args.data, args.gpu, args.batch_size)
            curve_file.write_text(json.dumps(curve, indent=1) + "\n")
    last = [checkpoint(run_dir, s) for s in range(n - args.every * (AVERAGE_LAST - 1), n + 1, args.every)]
    averaged = run_dir / f"model_avg_{last[0].stem.split('_')[-1]}-{n}.pt"
    if not averaged.exists():
        average.save(average.average(last), averaged)
    for path in (checkpoint(run_dir, n), averaged):
        out = Path(f"{path}.eval.json")
        if not out.exists():
            evaluate.evaluate(path, args.data, out, beam=5, gpu=args.gpu, batch_size=args.batch_size)
    log(f"{name}: finished (curve {', '.join(f'{s}: {b:.1f}' for s, b in curve.items())})")


def finisher(args, pool):
    def finish(run, n):
        command = [sys.executable, __file__, "finish", run.name, "--steps", str(n), "--runs", str(args.runs),
                   "--data", str(args.data), "--gpu", str(args.gpu), "--batch-size", str(args.batch_size),
                   "--every", str(args.every)]
        return pool.submit(subprocess.run, command, check=True, stdout=open(args.runs / run.name / "finish.log", "a"),
                           stderr=subprocess.STDOUT, env=process_env(args))
    return finish


def run_study(args):
    from onmt_lma import evaluate

    args.runs.mkdir(parents=True, exist_ok=True)
    teacher = train_teacher(args)
    teacher_eval = Path(f"{teacher}.eval.json")
    with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
        if not teacher_eval.exists():
            pool.submit(evaluate.evaluate, teacher, args.data, teacher_eval, beam=5, gpu=args.gpu,
                        batch_size=args.batch_size)
        budget, futures = train_students(teacher, args, finisher(args, pool))
        submitted = {name for name, _ in futures}
        for run in RUNS:  # runs stopped by an earlier call of this script, not finished then
            if (budget is not None and run.name not in submitted and (args.runs / run.name / "DONE").exists()
                    and not any((args.runs / run.name).glob("model_avg_*.eval.json"))):
                futures.append((run.name, finisher(args, pool)(run, budget["N"])))
        for _, future in futures:
            try:
                future.result()
            except subprocess.CalledProcessError as error:
                log(f"finishing failed: {error}")
    log("study done")


# --------------------------------------------------------------------------- #
# Collecting results (paths relative, nothing of this machine)
# --------------------------------------------------------------------------- #
def relative_text(text, args):
    for root, name in ((args.runs.resolve(), "runs"), (args.data.resolve(), "data/multi30k"), (REPO, ".")):
        text = text.replace(str(root), name)
    return text


def copy_relative(source, target, args):
    target.write_text(relative_text(source.read_text(encoding="utf-8", errors="replace"), args), encoding="utf-8")


def collect(args):
    out = args.results / "runs"
    out.mkdir(parents=True, exist_ok=True)
    for budget in [args.runs / "BUDGET.json"]:
        if budget.exists():
            shutil.copy(budget, args.results / "BUDGET.json")
    for run_name in ["teacher"] + [run.name for run in RUNS]:
        if run_name == "teacher" and (out / "teacher").is_dir():
            continue  # collected on the machine that trained it (its paths made relative there)
        run_dir = args.runs / run_name
        evals = sorted(run_dir.glob("*.eval.json"))
        if not evals:
            continue
        target = out / run_name
        target.mkdir(exist_ok=True)
        for name in ("config.yaml", "train.log", "curve.json", "COMMITS"):
            if (run_dir / name).exists():
                copy_relative(run_dir / name, target / name, args)
        for path in evals:
            copy_relative(path, target / path.name.replace(".pt.eval", ".eval"), args)
            hyp = path.with_name(path.name.replace(".json", ".hyp.detok.en"))
            if hyp.exists():
                shutil.copy(hyp, target / hyp.name.replace(".pt.eval", ".eval"))
    log(f"collected into {args.results}")


def averaged_result(run_dir):
    """(averaged checkpoint, its evaluation) of a finished run, or (None, None)."""
    for path in sorted(Path(run_dir).glob("model_avg_*.pt.eval.json")):
        return path.with_name(path.name[: -len(".eval.json")]), json.loads(path.read_text())
    return None, None


def release(args):
    """Released models: the averaged main students, the best diagnostic's, and the teacher, float16."""
    from onmt_lma import average
    from onmt_lma.files import sha256_of

    chosen = {}
    for run in RUNS:
        path, result = averaged_result(args.runs / run.name)
        if path is not None:
            chosen.setdefault(run.part == "main" and "main" or "variant", []).append((result["bleu"]["score"], run, path))
    picks = [(run.name, path) for _, run, path in chosen.get("main", [])]
    if chosen.get("variant"):
        _, best, path = max(chosen["variant"], key=lambda item: item[0])
        picks.append((best.name, path))
    teacher_dir = args.runs / "teacher"
    picks.append(("teacher", teacher_dir / (teacher_dir / "DONE").read_text().strip()))
    out = args.results / "models"
    out.mkdir(parents=True, exist_ok=True)
    sums = []
    for name, path in picks:
        target = out / f"{name}.pt"
        average.save(average.average([path], release=True), target)
        sums.append(f"{sha256_of(target)}  {target.name}")
        log(f"released {target.name} from {relative_text(str(path), args)}")
    (out / "SHA256SUMS").write_text("\n".join(sums) + "\n")



# --------------------------------------------------------------------------- #
# Report (from the collected results only)
# --------------------------------------------------------------------------- #
def load_collected(results):
    """{run name: {"final": eval, "averaged": eval, "curve": {step: BLEU}, "valid": {step: ppl}}}."""
    from onmt_lma.study.report import validation_curve as from_log

    runs = {}
    for folder in sorted((Path(results) / "runs").iterdir()):
        entry = {"final": None, "averaged": None, "curve": {}, "valid": {}}
        for path in folder.glob("*.eval.json"):
            entry["averaged" if path.name.startswith("model_avg_") else "final"] = json.loads(path.read_text())
        if (folder / "curve.json").exists():
            entry["curve"] = {int(k): v for k, v in json.loads((folder / "curve.json").read_text()).items()}
        if (folder / "train.log").exists():
            entry["valid"] = dict(from_log(folder / "train.log", CHECKPOINT_EVERY))
        runs[folder.name] = entry
    return runs


def paired_lines(pairs, label):
    """Paired differences (B - A) over seeds: each, mean, spread, paired t and the sign count."""
    import statistics

    diffs = [b - a for a, b in pairs]
    lines = [f"- {label}: differences by seed " + ", ".join(f"{d:+.2f}" for d in diffs)]
    if len(diffs) >= 2:
        mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
        t = mean / (sd / len(diffs) ** 0.5) if sd > 0 else float("inf") * (1 if mean > 0 else -1)
        lines.append(f"  mean {mean:+.2f}, sample std {sd:.2f}, paired t {t:+.2f} (df {len(diffs) - 1}); "
                     f"above in {sum(d > 0 for d in diffs)} of {len(diffs)} seeds")
    return lines


def bleu(entry, which, metric="bleu"):
    """A run's score (``bleu`` or ``chrf``) of its ``final`` or ``averaged`` checkpoint; None if not there."""
    return entry[which][metric]["score"] if entry and entry.get(which) and entry[which].get(metric) else None


def fmt(value, digits=2):
    return "–" if value is None else f"{value:.{digits}f}"


def report_lines(runs, budget):
    lines = ["# Converged Multi30k study: report", "",
             "Made by `python scripts/multi30k_converged.py report` from the collected runs; "
             "sacreBLEU on test_2016 (beam 5), signature in each run's JSON.", ""]
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
    lines += ["## Main comparison: ReLU and LMA-8, paired by seed", "",
              "| seed | ReLU final | ReLU averaged | LMA-8 final | LMA-8 averaged | LMA − ReLU (averaged) |",
              "| --- | --- | --- | --- | --- | --- |"]
    pairs = {"final": [], "averaged": []}
    for seed in (1, 2, 3):
        relu, lma = runs.get(f"student64_relu_seed{seed}"), runs.get(f"student64_lma_seed{seed}")
        cells = [bleu(relu, "final"), bleu(relu, "averaged"), bleu(lma, "final"), bleu(lma, "averaged")]
        for which, (a, b) in (("final", (cells[0], cells[2])), ("averaged", (cells[1], cells[3]))):
            if a is not None and b is not None:
                pairs[which].append((a, b))
        diff = cells[3] - cells[1] if None not in (cells[1], cells[3]) else None
        lines.append(f"| {seed} | " + " | ".join(fmt(c) for c in cells) + f" | {fmt(diff)} |")
    lines.append("")
    for which in ("final", "averaged"):
        if pairs[which]:
            lines += paired_lines(pairs[which], f"LMA-8 − ReLU, {which} checkpoint")
    chrf_pairs = [(a, b) for seed in (1, 2, 3) if None not in (
        a := bleu(runs.get(f"student64_relu_seed{seed}"), "averaged", "chrf"),
        b := bleu(runs.get(f"student64_lma_seed{seed}"), "averaged", "chrf"))]
    if chrf_pairs:
        lines += paired_lines(chrf_pairs, "chrF, LMA-8 − ReLU, averaged checkpoint")
    lines += ["", "## Diagnostics (seed 1; against ReLU seed 1)", "",
              "| run | what | BLEU final | BLEU averaged | Δ vs ReLU (averaged) | test ppl | valid ppl at N |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    relu1 = bleu(runs.get(PILOT), "averaged")
    for run in RUNS:
        entry = runs.get(run.name)
        if run.part == "main" or not entry:
            continue
        average_bleu = bleu(entry, "averaged")
        delta = average_bleu - relu1 if None not in (average_bleu, relu1) else None
        valid = entry["valid"].get(budget["N"]) if budget else None
        ppl = entry["final"]["ppl"] if entry.get("final") else None
        lines.append(f"| {run.part}: {run.name} | {run.what} | {fmt(bleu(entry, 'final'))} | {fmt(average_bleu)} "
                     f"| {fmt(delta)} | {fmt(ppl)} | {fmt(valid)} |")
    return lines + [""]


def report_plots(runs, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {1: "-", 2: "--", 3: ":"}
    written = []
    for key, name, ylabel, log in (("curve", "bleu_vs_steps.png", "test_2016 sacreBLEU (beam 5)", False),
                                   ("valid", "valid_ppl.png", "validation perplexity (plain NLL)", True)):
        if not any(runs.get(run.name, {}).get(key) for run in RUNS):
            continue
        fig, ax = plt.subplots(figsize=(8, 5))
        for index, run in enumerate(RUNS):
            points = sorted(runs.get(run.name, {}).get(key, {}).items())
            if points:
                color = {"relu": "C0", "lma": "C1"}.get(run.activation, "C2") if run.part == "main" else f"C{index}"
                ax.plot(*zip(*points), styles.get(run.seed, "-") if run.part == "main" else "-.", color=color,
                        label=f"{run.what} seed {run.seed}" if run.part == "main" else f"({run.part}) {run.what}")
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(Path(out) / name, dpi=110)
        plt.close(fig)
        written.append(Path(out) / name)
    return written


def write_study_report(args):
    from onmt_lma.study.plots import lma_shape_plots

    runs = load_collected(args.results)
    budget_file = args.results / "BUDGET.json"
    budget = json.loads(budget_file.read_text()) if budget_file.exists() else None
    text = "\n".join(report_lines(runs, budget))
    report_plots(runs, args.results)
    evaluations = [dict(entry["averaged"], _file=str(args.results / "runs" / name)) for name, entry in runs.items()
                   if entry.get("averaged") and entry["averaged"]["model"].get("learned_lma")]
    if evaluations:
        lma_shape_plots(evaluations, args.results)
    (args.results / "report.md").write_text(text)
    log(f"wrote {args.results / 'report.md'}")
    return text


def plan(args):
    for run in RUNS:
        state = "done" if (args.runs / run.name / "DONE").exists() else (
            "started" if (args.runs / run.name).exists() else "todo")
        settings = " ".join(f"{k}={v}" for k, v in run.settings)
        print(f"{run.name:34s} {run.part:5s} {state:8s} {run.what}  {settings}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("plan", "run", "finish", "collect", "release", "report"))
    parser.add_argument("run", nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "multi30k_converged")
    parser.add_argument("--data", type=Path, default=REPO / "data" / CORPUS, help="prepared Multi30k")
    parser.add_argument("--results", type=Path, default=REPO / "results" / "multi30k_converged")
    parser.add_argument("--gpu", type=int, default=-1, help="CUDA device, -1 for CPU")
    parser.add_argument("--parallel", type=int, default=1, help="students trained at once")
    parser.add_argument("--batch-size", type=int, default=100, help="sentences translated at a time in evaluation")
    parser.add_argument("--deadline-min", type=float, help="fix N from what exists after this many minutes")
    parser.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    # smaller budgets for a quick check of the machinery (the study uses the defaults)
    parser.add_argument("--min-steps", type=int, default=MIN_STEPS)
    parser.add_argument("--max-steps", type=int, default=MAX_STEPS)
    parser.add_argument("--window", type=int, default=WINDOW)
    parser.add_argument("--every", type=int, default=CHECKPOINT_EVERY,
                        help="the recipes' checkpoint interval; BLEU is measured every second one")
    parser.add_argument("--only", nargs="+", help="train only these students")
    parser.add_argument("--kd-cache", type=int, metavar="K",
                        help="students distil from the teacher's top-K cache (built once) instead of online")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for the teacher and every student")
    parser.add_argument("--teacher-set", dest="teacher_extra", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    args.runs, args.data = args.runs.resolve(), args.data.resolve()
    from onmt_lma.study.recipes import parse_setting

    args.extra = [parse_setting(s) for s in args.extra]
    args.teacher_extra = [parse_setting(s) for s in args.teacher_extra]
    if args.action == "plan":
        plan(args)
    elif args.action == "run":
        if not (args.data / "data.yaml").is_file():
            parser.error(f"--data {args.data}: no prepared corpus (python -m data_prep multi30k --out {args.data})")
        run_study(args)
    elif args.action == "finish":
        finish_run(args.run, args.steps, args)
    elif args.action == "release":
        release(args)
    elif args.action == "report":
        write_study_report(args)
    else:
        collect(args)


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
