"""Runs and studies in one place: run names, training (the ``DONE`` protocol of :mod:`.recipes`), collection
of results, study plans with their state, and committing collected results.

    python -m onmt_lma.study.runs prepare CORPUS
    python -m onmt_lma.study.runs teacher CORPUS [--set KEY=VALUE ...]
    python -m onmt_lma.study.runs student CORPUS SIZE ACTIVATION SEED [--segments K] [--kd-teacher PATH|none]
                                  [--kd-cache K] [--set ...]
    python -m onmt_lma.study.runs study PLAN.yaml [--commit | --plan | --report]

A study is a short plan file (``studies/multi30k.yaml``): the corpus, the results folder and the runs in
training order.  ``study`` trains every run not collected yet (an interrupted one resumes from its latest
checkpoint), evaluates it on the corpus's test set and collects it into ``RESULTS/runs/<run>/`` (evaluation
JSON, hypotheses, config, training log, the commits it trained with) before the next; ``--commit``
rebuilds the report and commits the results folder after each run (not its hand-written READING.md and
REPRODUCE.md, nothing else of the repository).  Folders: ``--data-root`` / ``DATA_ROOT`` (default
``data``), ``--runs-root`` / ``RUNS_ROOT`` (default ``runs``), ``RESULTS`` (default: the plan's).
``scripts/train_teacher.sh``, ``train_student.sh`` and ``multi30k_study.sh`` are thin wrappers.
"""

import argparse
import dataclasses
import datetime
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from onmt_lma.activations import DEFAULT_SEGMENTS
from onmt_lma.study import recipes

REPO = Path(__file__).resolve().parents[2]
#: local copies of raw corpora (tests, demos), else the corpus is downloaded
SHARED_DATA = Path(os.environ.get("LMA_DATA", REPO.parent / "shared" / "data"))


class StudyError(ValueError):
    """A plan or run that cannot be carried out (the message says which and why)."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One run of a study: the teacher, or a student of ``size`` with ``activation``, ``seed``, ``segments``."""

    size: int = 0
    activation: str = "relu"
    seed: int = 1
    segments: int = DEFAULT_SEGMENTS
    teacher: bool = False

    @property
    def name(self):
        return "teacher" if self.teacher else student_name(self.size, self.activation, self.seed, self.segments)


def student_name(size, activation, seed, segments=DEFAULT_SEGMENTS, distilled=True):
    """``student64_lma_seed1``; other segment counts are named (``student64_lma12_seed1``), undistilled
    runs too (``..._nokd``)."""
    name = f"student{size}_{activation}" + ("" if segments == DEFAULT_SEGMENTS else str(segments))
    return f"{name}_seed{seed}" + ("" if distilled else "_nokd")


def log(message):
    print(f"[study] {message}", flush=True)


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #
def prepare_corpus(corpus, data_root):
    """``python -m data_prep`` into DATA_ROOT/CORPUS unless done; Multi30k from ``../shared/data`` when there."""
    from data_prep.__main__ import main as data_prep_main

    source = ["--source", str(SHARED_DATA / corpus)] if corpus == "multi30k" and (SHARED_DATA / corpus).is_dir() else []
    data_prep_main([corpus, "--out", str(Path(data_root) / corpus), *source])


def finished_checkpoint(run_dir):
    done = Path(run_dir) / "DONE"
    return Path(run_dir) / done.read_text().strip() if done.is_file() else None


def train_teacher(corpus, data_root, runs_root, settings=()):
    return recipes.train(corpus, "teacher", Path(data_root) / corpus, Path(runs_root) / corpus / "teacher",
                         [("seed", 1), *settings])


def teacher_cache(corpus, kd_teacher, data_root, topk):
    """The top-``topk`` cache of ``kd_teacher`` for the corpus's training data, built once beside the teacher
    (``TEACHER.top32/``) and reused by every student; an interrupted build resumes."""
    from onmt_lma.bin import teacher_cache as cache_cli

    out = Path(f"{Path(kd_teacher).with_suffix('')}.top{topk}")
    manifest = out / "manifest.json"
    if manifest.is_file() and '"complete": true' in manifest.read_text():
        return out
    out.mkdir(parents=True, exist_ok=True)
    with recipes.exclusive_lock(out / ".lock", f"{out} is being built by another process"):
        # the students' data options (corpora, vocabularies, transforms): the same in every student recipe
        config = recipes.compose(corpus, "student64", Path(data_root) / corpus, out)
        recipes.write_config(config, out / "config.yaml")
        log(f"building the teacher cache {out}")
        cache_cli.main(["-config", str(out / "config.yaml"), "-model", str(kd_teacher), "-out", str(out),
                        "-topk", str(topk)])
    return out


def train_student(corpus, size, activation, seed, data_root, runs_root, segments=DEFAULT_SEGMENTS,
                  kd_teacher=None, settings=(), kd_cache_topk=None):
    """Distilled from ``kd_teacher`` (default: the corpus's finished teacher; ``"none"``: no distillation),
    through its top-``kd_cache_topk`` cache when given (:func:`teacher_cache`)."""
    if kd_teacher is None:
        kd_teacher = finished_checkpoint(Path(runs_root) / corpus / "teacher")
        if kd_teacher is None:
            raise StudyError(f"no finished teacher at {Path(runs_root) / corpus / 'teacher'}: run "
                             f"scripts/train_teacher.sh {corpus} first, or set KD_TEACHER=none")
    distilled = str(kd_teacher) != "none"
    name = student_name(size, activation, seed, segments, distilled)
    run_settings = [("pos_ffn_activation_fn", activation), ("lma_segments", segments), ("seed", seed)]
    if distilled and kd_cache_topk:
        run_settings.append(("kd_cache", str(teacher_cache(corpus, kd_teacher, data_root, kd_cache_topk))))
    elif distilled:
        run_settings.append(("kd_teacher", str(kd_teacher)))
    return recipes.train(corpus, f"student{size}", Path(data_root) / corpus, Path(runs_root) / corpus / name,
                         run_settings + list(settings))


# --------------------------------------------------------------------------- #
# Studies: plan files, state, collection, commits
# --------------------------------------------------------------------------- #
@dataclasses.dataclass
class Study:
    corpus: str
    results: Path
    runs: list
    label: str  # the plan's results folder, as commit messages name it
    kd_cache_topk: int = None  # students distil through the teacher's top-K cache (built once)


def load_plan(path):
    """A plan file: ``corpus``, ``results`` and ``runs`` in training order, each ``teacher`` or a group
    ``{size, activations, seeds, segments}`` (segments default to the paper's 8); optional ``kd_cache: K``
    (students distil from the teacher's top-K cache)."""
    plan = yaml.safe_load(Path(path).read_text())
    try:
        runs = []
        for entry in plan["runs"]:
            if entry == "teacher":
                runs.append(Run(teacher=True))
                continue
            for seed in entry["seeds"]:
                for segments in entry.get("segments", [DEFAULT_SEGMENTS]):
                    runs.extend(Run(entry["size"], activation, seed, segments) for activation in entry["activations"])
        study = Study(plan["corpus"], Path(os.environ.get("RESULTS") or REPO / plan["results"]), runs,
                      plan["results"], plan.get("kd_cache"))
    except (KeyError, TypeError) as error:
        raise StudyError(f"{path}: not a study plan (corpus, results, runs of 'teacher' or "
                         f"{{size, activations, seeds, segments}}): {error!r}") from None
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise StudyError(f"{path}: a run is planned twice ({sorted({n for n in names if names.count(n) > 1})})")
    return study


def state(run, study, runs_root):
    """``collected`` (its results are in the results folder), ``trained``, ``started`` or ``todo``."""
    run_dir = Path(runs_root) / study.corpus / run.name
    if (study.results / "runs" / run.name / f"{run.name}.eval.json").is_file():
        return "collected"
    if (run_dir / "DONE").is_file():
        return "trained"
    return "started" if run_dir.is_dir() else "todo"


def collect(run, study, data_root, runs_root):
    """Evaluate the run's final checkpoint and copy what the results need, whole or not at all."""
    from onmt_lma import evaluate

    run_dir = Path(runs_root) / study.corpus / run.name
    checkpoint = finished_checkpoint(run_dir)
    out = Path(f"{checkpoint}.eval.json")
    test = evaluate.prepared_test_set(Path(data_root) / study.corpus)
    if not (out.is_file() and evaluate.kept_result(out, checkpoint, test)):
        evaluate.evaluate(checkpoint, Path(data_root) / study.corpus, out)
    partial = study.results / "runs" / f"{run.name}.tmp"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name in ("config.yaml", "train.log", "COMMITS"):
        if (run_dir / name).is_file():
            shutil.copy(run_dir / name, partial / name)
    shutil.copy(f"{checkpoint}.eval.hyp.detok.en", partial / "test.hyp.detok.en")
    shutil.copy(out, partial / f"{run.name}.eval.json")
    final = study.results / "runs" / run.name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)


def write_report(study):
    from onmt_lma.study.report import write_report as report

    reading = study.results / "READING.md"
    report([study.results / "runs"], study.results, reading=reading if reading.is_file() else None)
    log(f"wrote {study.results / 'report.md'}")


def commit_results(study, message):
    """The report, plots and collected runs, nothing else (other staged changes stay staged); a failure
    is a warning: the next commit takes these files too."""
    write_report(study)
    paths = [".", ":(exclude)READING.md", ":(exclude)REPRODUCE.md"]

    def git(*args):
        return subprocess.run(["git", *args], cwd=study.results, capture_output=True, text=True)

    added = git("add", "-A", "--", *paths)
    if added.returncode == 0 and git("diff", "--cached", "--quiet", "--", *paths).returncode == 0:
        return
    if added.returncode == 0 and git("commit", "-q", "-m", message, "--", *paths).returncode == 0:
        log(f"committed {study.results}: {message}")
    else:
        print(f"[study] warning: could not commit {study.results} (the next run's commit will include it)",
              file=sys.stderr)


def study_lock(study, runs_root):
    folder = Path(runs_root) / study.corpus
    folder.mkdir(parents=True, exist_ok=True)
    return recipes.exclusive_lock(folder / ".study.lock", f"another study is running (lock {folder / '.study.lock'})")


def run_study(study, data_root, runs_root, commit=False):
    with study_lock(study, runs_root):
        for run in study.runs:
            if state(run, study, runs_root) == "collected":
                continue
            log(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%SZ} {run.name}")
            run_dir = Path(runs_root) / study.corpus / run.name
            run_dir.mkdir(parents=True, exist_ok=True)
            with open(run_dir / "COMMITS", "a") as commits:  # the code each (re)start trains with
                commits.write(f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%SZ} {git_head()}\n")
            prepare_corpus(study.corpus, data_root)
            if run.teacher:
                train_teacher(study.corpus, data_root, runs_root)
            else:
                train_student(study.corpus, run.size, run.activation, run.seed, data_root, runs_root, run.segments,
                              kd_cache_topk=study.kd_cache_topk)
            collect(run, study, data_root, runs_root)
            log(f"{run.name} collected")
            if commit:
                commit_results(study, f"{study.label}: {run.name} collected")
    log("all runs collected")
    if commit:
        commit_results(study, f"{study.label}: every run collected")


def git_head():
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    return head.stdout.strip() or "unknown"


# --------------------------------------------------------------------------- #
# The command
# --------------------------------------------------------------------------- #
def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m onmt_lma.study.runs", description=__doc__, allow_abbrev=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.environ.get("DATA_ROOT", "data"))
    parser.add_argument("--runs-root", default=os.environ.get("RUNS_ROOT", "runs"))
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="prepare a corpus unless done (python -m data_prep)")
    prepare.add_argument("corpus", choices=recipes.CORPORA)
    teacher = commands.add_parser("teacher", help="train the corpus's teacher")
    teacher.add_argument("corpus", choices=recipes.CORPORA)
    student = commands.add_parser("student", help="train a student")
    student.add_argument("corpus", choices=recipes.CORPORA)
    student.add_argument("size", type=int)
    student.add_argument("activation")
    student.add_argument("seed", type=int)
    student.add_argument("--segments", type=int, default=DEFAULT_SEGMENTS)
    student.add_argument("--kd-teacher", help="teacher checkpoint, or 'none' (default: the corpus's teacher)")
    student.add_argument("--kd-cache", type=int, metavar="K",
                         help="distil through the teacher's top-K cache (built once beside the teacher)")
    for sub in (teacher, student):
        sub.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a run setting")
    study = commands.add_parser("study", help="train, evaluate and collect a study's runs")
    study.add_argument("plan_file", help="plan file (studies/*.yaml)")
    mode = study.add_mutually_exclusive_group()
    for flag in ("--commit", "--plan", "--report"):
        mode.add_argument(flag, action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.command == "study":
            plan = load_plan(args.plan_file)
            if args.plan:
                for run in plan.runs:
                    print(f"{run.name:<28} {state(run, plan, args.runs_root)}")
            elif args.report:
                write_report(plan)
            else:
                run_study(plan, args.data_root, args.runs_root, commit=args.commit)
        elif args.command == "prepare":
            prepare_corpus(args.corpus, args.data_root)
        elif args.command == "teacher":
            prepare_corpus(args.corpus, args.data_root)
            print(train_teacher(args.corpus, args.data_root, args.runs_root, [recipes.parse_setting(s) for s in args.set]))
        else:
            prepare_corpus(args.corpus, args.data_root)
            print(train_student(args.corpus, args.size, args.activation, args.seed, args.data_root, args.runs_root,
                                args.segments, args.kd_teacher, [recipes.parse_setting(s) for s in args.set],
                                args.kd_cache))
    except (StudyError, recipes.RecipeError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")


if __name__ == "__main__":
    main()
