"""Budgeted studies: a pilot run fixes the step count N, then every student is stopped at N.

A plan with a ``budget`` section (``studies/multi30k_converged.yaml``) is carried out here, called by
``python -m onmt_lma.study.runs study PLAN``.  Its students train with the same schedule cap
(``max_steps``) and are stopped at N; noam decay does not depend on ``train_steps``, so a run stopped at N
is the run of an N-step budget.  N is the first step ``s >= min_steps`` at which the pilot's validation
perplexity improved by less than ``tolerance`` over the last ``window`` steps, at most ``max_steps``
(:func:`pilot_budget`), written to ``RUNS/BUDGET.json`` once and never changed.

``run_study`` trains the teacher (resumable, skipped when finished), starts ``parallel`` students at once
(on a GPU: all of them; on CPU each process gets cores / parallel threads and a run's evaluation holds its
slot: on 2 cores two one-thread students train 1.4x the tokens per second of one two-thread student,
results/bench/parallel_training.md), stops each at N, then per run (:func:`finish_run`): BLEU on the test
set every ``bleu_every`` steps, the average of the last ``average_last`` checkpoints, and a full evaluation
(onmt_lma.evaluation.evaluate) of the final and the averaged checkpoint.  :func:`collect` copies what the results need
out of the runs folder (paths relative), :func:`release` writes the released models.
"""

import concurrent.futures
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from onmt_lma.model.lma import DEFAULT_SEGMENTS
from onmt_lma.study.budget import pilot_budget, read_budget

REPO = Path(__file__).resolve().parents[2]
POLL_SECONDS = 5  # how often the training processes are looked at
SETTLE_SECONDS = 2  # a checkpoint whose size stays the same this long is complete


@dataclasses.dataclass
class Execution:
    """How a budgeted study runs on this machine (nothing of it changes the results)."""

    data: Path  # the prepared corpus
    runs: Path  # the study's runs folder
    gpu: int = -1  # CUDA device, -1 for CPU
    parallel: int = 1  # students trained at once
    batch_size: int = 100  # sentences translated at a time in evaluation
    deadline_min: float = None  # fix N from what exists after this many minutes
    only: tuple = ()  # train only these students
    kd_cache_topk: int = None  # students distil through the teacher's top-K cache instead of online
    settings: tuple = ()  # (key, value) for the teacher and every student
    teacher_settings: tuple = ()  # (key, value) for the teacher only


def log(message):
    print(f"[study {time.strftime('%H:%M:%S')}] {message}", flush=True)


def validation_curve(run_dir, valid_steps):
    """The run's ``{step: validation perplexity}`` from its training log (empty before the first)."""
    from onmt_lma.study.results import validation_curve as from_log

    log_file = Path(run_dir) / "train.log"
    return dict(from_log(log_file, valid_steps)) if log_file.is_file() else {}


def checkpoint(run_dir, step):
    return Path(run_dir) / f"model_step_{step}.pt"


def device_settings(gpu):
    return [("world_size", 1), ("gpu_ranks", [gpu])] if gpu >= 0 else []


def recipe_command(study, model, run_dir, execution, settings):
    """``python -m onmt_lma.study.recipes train ...``, run with this code's repository as its working folder
    (``-m`` puts the working folder first on the import path: a study started from a worktree trains with
    the worktree's code); every path in it is absolute."""
    command = [sys.executable, "-m", "onmt_lma.study.recipes", "train", study.corpus, model,
               "--data", str(execution.data), "--run-dir", str(run_dir)]
    for key, value in settings:
        command += ["--set", f"{key}={json.dumps(value)}"]
    return command


def train_teacher(study, execution):
    run_dir = execution.runs / "teacher"
    if not (run_dir / "DONE").exists():
        log("training the teacher")
        record_commit(run_dir)
        settings = [("seed", 1), *device_settings(execution.gpu), *execution.settings, *execution.teacher_settings]
        with open(execution.runs / "teacher.stdout", "a") as out:
            subprocess.run(recipe_command(study, "teacher", run_dir, execution, settings), check=True,
                           stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    final = run_dir / (run_dir / "DONE").read_text().strip()
    log(f"teacher: {final.name}")
    return final


def student_settings(study, run, teacher, execution):
    """The run's settings, in the order its ``config.yaml`` was composed with (a resumed run must match)."""
    if execution.kd_cache_topk:  # the teacher's top-K cache, built once (onmt_lma_teacher_cache)
        from onmt_lma.study.sequential import teacher_cache

        distil = ("kd_cache", str(teacher_cache(study.corpus, teacher, execution.data.parent, execution.kd_cache_topk)))
    else:
        distil = ("kd_teacher", str(teacher))
    segments = [] if run.segments == DEFAULT_SEGMENTS else [("lma_segments", run.segments)]
    return [("pos_ffn_activation_fn", run.activation), ("seed", run.seed), distil,
            ("train_steps", study.budget["max_steps"]), *segments, *run.settings,
            *device_settings(execution.gpu), *execution.settings]


def process_env(execution):
    """On CPU, ``parallel`` processes share the cores (threads of one process would contend with another's)."""
    if execution.gpu >= 0 or execution.parallel == 1:
        return None
    return {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // execution.parallel))}


def record_commit(run_dir):
    """Append the code's commit to ``RUN/COMMITS`` at each (re)start, as :func:`.runs.run_study` does."""
    from onmt_lma.study.sequential import git_head

    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(run_dir) / "COMMITS", "a") as commits:
        commits.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {git_head()}\n")


def launch(study, run, teacher, execution):
    run_dir = execution.runs / run.name
    run_dir.mkdir(parents=True, exist_ok=True)
    record_commit(run_dir)
    with open(run_dir / "stdout.log", "a") as out:
        command = recipe_command(study, f"student{run.size}", run_dir, execution,
                                 student_settings(study, run, teacher, execution))
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env=process_env(execution), cwd=REPO)


def stop(process):
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def saved(run_dir, step):
    """The checkpoint of ``step`` exists and is complete (its size stays the same for SETTLE_SECONDS)."""
    path = checkpoint(run_dir, step)
    if not path.exists():
        return False
    size = path.stat().st_size
    time.sleep(SETTLE_SECONDS)
    return size > 0 and path.stat().st_size == size


def fix_budget(study, execution, started, running):
    """BUDGET.json from the pilot's curve once the rule decides (or the deadline passes), else None."""
    rule = study.budget
    curve = validation_curve(execution.runs / rule["pilot"], rule["every"])
    n = pilot_budget(curve, rule["min_steps"], rule["max_steps"], rule["window"], rule["tolerance"])
    capped = False
    if n is None and execution.deadline_min and time.time() - started > 60 * execution.deadline_min:
        common = [s for s in sorted(curve) if s % rule["every"] == 0 and all(
            checkpoint(execution.runs / r.name, s).exists() for r in running)]
        n, capped = (common[-1] if common else None), True
    if n is None:
        return None
    budget = {"N": n, "capped_by_deadline": capped, "pilot": rule["pilot"],
              "pilot_curve": {str(s): p for s, p in sorted(curve.items())},
              "rule": {key: rule[key] for key in ("min_steps", "max_steps", "window", "tolerance")}}
    (execution.runs / "BUDGET.json").write_text(json.dumps(budget, indent=2) + "\n")
    log(f"budget fixed: N = {n}" + (" (capped by the deadline)" if capped else ""))
    return budget


def adopt_budget(study, execution):
    """A plan whose N another plan's pilot fixed (``budget: fixed_by``) starts with that BUDGET.json."""
    fixed_by, target = study.budget.get("fixed_by"), execution.runs / "BUDGET.json"
    if not fixed_by or target.exists():
        return
    budget = json.loads((REPO / fixed_by).read_text())
    if not isinstance(budget, dict) or not isinstance(budget.get("N"), int):
        raise ValueError(f"budget fixed_by {fixed_by}: expected a BUDGET.json with an integer N")
    target.write_text(json.dumps(budget, indent=2) + "\n")
    log(f"budget from {fixed_by}: N = {budget['N']}")


def train_students(study, teacher, execution, finish, futures=()):
    """Start every student, fix N from the pilot, stop each at N and hand it to ``finish``; ``futures``: the
    finishes already under way (on CPU each holds a slot until done)."""
    runs = [run for run in study.students if not (execution.runs / run.name / "DONE").exists()
            and (not execution.only or run.name in execution.only)]
    budget = read_budget(execution.runs)
    processes, waiting, futures = {}, list(runs), list(futures)
    started = time.time()
    while waiting or processes:
        finishing = sum(not future.done() for _, future in futures) if execution.gpu < 0 else 0  # CPU: holds a slot
        while waiting and len(processes) + finishing < execution.parallel:
            run = waiting.pop(0)
            processes[run] = launch(study, run, teacher, execution)
            log(f"started {run.name}")
        if budget is None:
            budget = fix_budget(study, execution, started, processes)
        for run, process in list(processes.items()):
            run_dir = execution.runs / run.name
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
        time.sleep(POLL_SECONDS)
    return budget, futures


def finisher(plan_file, execution, pool):
    """``finish(run, n)``: :func:`finish_run` in a subprocess (``runs study PLAN --finish RUN``) on ``pool``."""
    def finish(run, n):
        command = [sys.executable, "-m", "onmt_lma.study.runs", "--data-root", str(execution.data.parent),
                   "--runs-root", str(execution.runs.parent), "study", str(Path(plan_file).resolve()),
                   "--finish", run.name, "--steps", str(n), "--gpu", str(execution.gpu),
                   "--batch-size", str(execution.batch_size)]
        return pool.submit(run_logged, command, execution.runs / run.name / "finish.log", process_env(execution),
                           attempts=FINISH_ATTEMPTS)
    return finish


FINISH_ATTEMPTS = 2  # a finish resumes where it failed: once more before the study reports it failed (the
# converged study's LMA-8 at twice the peak lost its evaluation to one "CUDA error: an illegal memory access"
# while seven other processes shared the GPU)


def run_logged(command, log_path, env, attempts=1):
    """``command`` with its output appended to ``log_path``, run up to ``attempts`` times until it succeeds;
    CalledProcessError when the last fails.  The log is opened here, in the pool's thread: a file opened by
    the submitting thread's ``with`` was closed before the pool ran the command (every seed-1 finish of the
    converged study failed so, at once and silently)."""
    with open(log_path, "a") as out:
        for attempt in range(1, attempts + 1):
            try:
                return subprocess.run(command, check=True, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
            except subprocess.CalledProcessError as error:
                if attempt == attempts:
                    raise
                out.write(f"[attempt {attempt} of {attempts} failed with exit status {error.returncode}: "
                          "running it again]\n")
                out.flush()


def run_study(study, plan_file, execution):
    from onmt_lma.evaluation import evaluate

    execution.runs.mkdir(parents=True, exist_ok=True)
    adopt_budget(study, execution)
    teacher = train_teacher(study, execution)
    teacher_eval = Path(f"{teacher}.eval.json")
    with concurrent.futures.ThreadPoolExecutor(execution.parallel) as pool:
        if not teacher_eval.exists():
            pool.submit(evaluate.evaluate, teacher, execution.data, teacher_eval, beam=5, gpu=execution.gpu,
                        batch_size=execution.batch_size)
        finish, budget = finisher(plan_file, execution, pool), read_budget(execution.runs)
        stopped = [run for run in study.students if budget is not None  # by an earlier call, not finished then:
                   and (execution.runs / run.name / "DONE").exists()  # finished first
                   and not any((execution.runs / run.name).glob("model_avg_*.eval.json"))]
        budget, futures = train_students(study, teacher, execution, finish,
                                         [(run.name, finish(run, budget["N"])) for run in stopped])
        for _, future in futures:
            try:
                future.result()
            except subprocess.CalledProcessError as error:
                log(f"finishing failed: {error}")
    log("study done")


def state(run, study, execution):
    """``collected``, ``finished`` (evaluated, not collected), ``stopped`` (at N), ``started`` or ``todo``."""
    run_dir = execution.runs / run.name
    if run.teacher:
        done = (study.results / "runs" / "teacher").is_dir()
        return "collected" if done else "finished" if (run_dir / "DONE").exists() else (
            "started" if run_dir.exists() else "todo")
    if any((study.results / "runs" / run.name).glob("model_avg_*.eval.json")):
        return "collected"
    if any(run_dir.glob("model_avg_*.eval.json")):
        return "finished"
    if (run_dir / "DONE").exists():
        return "stopped"
    return "started" if run_dir.exists() else "todo"


# --------------------------------------------------------------------------- #
# Collecting results and releasing models (paths relative, nothing of this machine)
# --------------------------------------------------------------------------- #


