"""Runs and studies in one place: run names, training (the ``DONE`` protocol of :mod:`.recipes`), collection
of results, study plans with their state, and committing collected results.

    python -m onmt_lma.study.runs prepare CORPUS
    python -m onmt_lma.study.runs teacher CORPUS [--set KEY=VALUE ...]
    python -m onmt_lma.study.runs student CORPUS SIZE ACTIVATION SEED [--segments K] [--kd-teacher PATH|none]
                                  [--kd-cache K] [--set ...]
    python -m onmt_lma.study.runs study PLAN.yaml [--commit | --plan | --report | --collect | --release]
                                  [--kd-cache K] [--parallel N] [--gpu G] [--only RUN ...] [--deadline-min M]

A study is a short plan file (``studies/multi30k.yaml``): the corpus, the results folder and the runs in
training order.  ``study`` trains every run not collected yet (an interrupted one resumes from its latest
checkpoint), evaluates it on the corpus's test set and collects it into ``RESULTS/runs/<run>/`` (evaluation
JSON, hypotheses, config, training log, the commits it trained with) before the next; ``--commit``
rebuilds the report and commits the results folder after each run (not its hand-written READING.md and
REPRODUCE.md, nothing else of the repository).  Folders: ``--data-root`` / ``DATA_ROOT`` (default
``data``), ``--runs-root`` / ``RUNS_ROOT`` (default ``runs``), ``RESULTS`` (default: the plan's).
A plan with a ``budget`` section (``studies/multi30k_converged.yaml``) is a budgeted study
(:mod:`onmt_lma.study.budgeted`): a pilot fixes the step count N, students train ``--parallel`` at once
and stop at N, each is evaluated every few checkpoints and averaged; ``--collect``, ``--release`` and
``--report`` (:mod:`onmt_lma.study.paired_report`) make its results.
``scripts/train_teacher.sh``, ``train_student.sh``, ``multi30k_study.sh`` and ``multi30k_converged.py`` are
thin wrappers.
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
    """One run of a study: the teacher, or a student of ``size`` with ``activation``, ``seed``, ``segments``;
    a diagnostic's ``variant`` names it apart and adds its ``settings`` ((key, value) on top of the recipe)."""

    size: int = 0
    activation: str = "relu"
    seed: int = 1
    segments: int = DEFAULT_SEGMENTS
    teacher: bool = False
    variant: str = ""
    settings: tuple = ()
    part: str = "main"  # "main", or the diagnostic's letter
    what: str = ""  # what the variant changes, for reports

    @property
    def name(self):
        return "teacher" if self.teacher else student_name(self.size, self.activation, self.seed, self.segments,
                                                           variant=self.variant)


def student_name(size, activation, seed, segments=DEFAULT_SEGMENTS, distilled=True, variant=""):
    """``student64_lma_seed1``; other segment counts are named (``student64_lma12_seed1``), variants
    (``student64_lma_continuous_seed1``) and undistilled runs too (``..._nokd``)."""
    name = f"student{size}_{activation}" + ("" if segments == DEFAULT_SEGMENTS else str(segments))
    name += f"_{variant}" if variant else ""
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
                  kd_teacher=None, settings=(), kd_cache_topk=None, variant=""):
    """Distilled from ``kd_teacher`` (default: the corpus's finished teacher; ``"none"``: no distillation),
    through its top-``kd_cache_topk`` cache when given (:func:`teacher_cache`); ``variant`` names a run
    whose ``settings`` differ from the recipe (:func:`student_name`)."""
    if kd_teacher is None:
        kd_teacher = finished_checkpoint(Path(runs_root) / corpus / "teacher")
        if kd_teacher is None:
            raise StudyError(f"no finished teacher at {Path(runs_root) / corpus / 'teacher'}: run "
                             f"scripts/train_teacher.sh {corpus} first, or set KD_TEACHER=none")
    distilled = str(kd_teacher) != "none"
    name = student_name(size, activation, seed, segments, distilled, variant)
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
    runs_folder: str = None  # RUNS_ROOT/<this>/<run> (default: the corpus)
    budget: dict = None  # a budgeted study (onmt_lma.study.budgeted): the pilot's rule, checkpoints, averaging
    title: str = ""
    labels: dict = dataclasses.field(default_factory=dict)  # activation -> its name in reports

    @property
    def students(self):
        return [run for run in self.runs if not run.teacher]

    def runs_dir(self, runs_root):
        return Path(runs_root) / (self.runs_folder or self.corpus)

    def activation_label(self, activation):
        return self.labels.get(activation, activation)

    def run_label(self, run):
        """``ReLU``, ``LMA-8, continuous``: the activation's label and what the variant changes."""
        return self.activation_label(run.activation) + (f", {run.what}" if run.what else "")


BUDGET_KEYS = ("pilot", "min_steps", "max_steps", "window", "tolerance", "every", "bleu_every", "average_last")
PLAN_FORMAT = ("corpus, results, runs (each 'teacher' or a group {size, activations, seeds; optional segments, "
               "part, variant, what, settings}); optional kd_cache, runs_folder, title, labels, budget")


def load_plan(path):
    """A plan file: ``corpus``, ``results`` and ``runs`` in training order, each ``teacher`` or a group
    ``{size, activations, seeds, segments}`` (segments default to the paper's 8; a diagnostic group adds
    ``part``, ``variant``, ``what`` and ``settings``); optional ``kd_cache: K`` (students distil from the
    teacher's top-K cache), ``runs_folder``, ``title``, ``labels`` and ``budget`` (the pilot's rule
    of :mod:`onmt_lma.study.budgeted`, with all of :data:`BUDGET_KEYS`; ``fixed_by``: the repository path of
    another plan's ``BUDGET.json`` whose N this plan's runs take, its pilot being that plan's run)."""
    plan = yaml.safe_load(Path(path).read_text())
    try:
        runs = []
        for entry in plan["runs"]:
            if entry == "teacher":
                runs.append(Run(teacher=True))
                continue
            unknown = set(entry) - {"size", "activations", "seeds", "segments", "part", "variant", "what", "settings"}
            if unknown:
                raise KeyError(f"unknown keys {sorted(unknown)}")
            extra = dict(variant=str(entry.get("variant", "")), settings=tuple((entry.get("settings") or {}).items()),
                         part=str(entry.get("part", "main")), what=str(entry.get("what", "")))
            for seed in entry["seeds"]:
                for segments in entry.get("segments", [DEFAULT_SEGMENTS]):
                    runs.extend(Run(entry["size"], activation, seed, segments, **extra)
                                for activation in entry["activations"])
        budget = plan.get("budget")
        if budget is not None and set(budget) - {"fixed_by"} != set(BUDGET_KEYS):
            raise KeyError(f"budget needs exactly {', '.join(BUDGET_KEYS)} (and optionally fixed_by)")
        study = Study(plan["corpus"], Path(os.environ.get("RESULTS") or REPO / plan["results"]), runs,
                      plan["results"], plan.get("kd_cache"), plan.get("runs_folder"), budget,
                      plan.get("title", plan["results"]), dict(plan.get("labels") or {}))
    except (KeyError, TypeError, AttributeError) as error:
        raise StudyError(f"{path}: not a study plan ({PLAN_FORMAT}): {error!r}") from None
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise StudyError(f"{path}: a run is planned twice ({sorted({n for n in names if names.count(n) > 1})})")
    if study.runs_folder and len(Path(study.runs_folder).parts) != 1:
        raise StudyError(f"{path}: runs_folder {study.runs_folder!r}: expected one folder name (RUNS_ROOT/<it>)")
    if study.runs_folder and budget is None:
        raise StudyError(f"{path}: runs_folder is for a budgeted study (with budget); a study without one trains "
                         f"in RUNS_ROOT/{study.corpus} as scripts/train_student.sh does")
    if budget is not None and budget.get("fixed_by"):
        if not (REPO / budget["fixed_by"]).is_file():
            raise StudyError(f"{path}: budget fixed_by {budget['fixed_by']!r}: no such file in the repository "
                             "(expected another plan's BUDGET.json)")
    elif budget is not None and budget["pilot"] not in names:
        raise StudyError(f"{path}: the budget's pilot {budget['pilot']!r} is not one of the runs (or give fixed_by: "
                         "the BUDGET.json of the plan whose pilot fixed N)")
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
                              settings=run.settings, kd_cache_topk=study.kd_cache_topk, variant=run.variant)
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
def study_command(args):
    """``study PLAN``: a plan without ``budget`` trains in order (:func:`run_study`), one with it through
    :mod:`onmt_lma.study.budgeted`."""
    plan = load_plan(args.plan_file)
    if args.kd_cache:
        plan.kd_cache_topk = args.kd_cache
    if plan.budget is None:
        given = [flag for flag, value in (("--collect", args.collect), ("--release", args.release),
                                          ("--finish", args.finish), ("--gpu", args.gpu != -1),
                                          ("--parallel", args.parallel != 1), ("--deadline-min", args.deadline_min),
                                          ("--only", args.only), ("--set", args.extra),
                                          ("--teacher-set", args.teacher_extra)) if value]
        if given:
            raise StudyError(f"{args.plan_file}: {', '.join(given)} only for a budgeted study (a plan with budget)")
        if args.plan:
            for run in plan.runs:
                print(f"{run.name:<28} {state(run, plan, args.runs_root)}")
        elif args.report:
            write_report(plan)
        else:
            run_study(plan, args.data_root, args.runs_root, commit=args.commit)
        return
    from onmt_lma.study import budgeted, paired_report

    if args.commit:
        raise StudyError(f"{args.plan_file}: --commit is for a study without budget; a budgeted study is "
                         "collected and reported with --collect and --report")
    if args.parallel < 1:
        raise StudyError(f"--parallel {args.parallel}: expected 1 or more")
    execution = budgeted.Execution(
        data=(Path(args.data_root) / plan.corpus).resolve(), runs=plan.runs_dir(args.runs_root).resolve(),
        gpu=args.gpu, parallel=args.parallel, batch_size=args.batch_size, deadline_min=args.deadline_min,
        only=tuple(args.only), kd_cache_topk=plan.kd_cache_topk,
        settings=tuple(recipes.parse_setting(s) for s in args.extra),
        teacher_settings=tuple(recipes.parse_setting(s) for s in args.teacher_extra))
    unknown = sorted(set(execution.only) - {run.name for run in plan.students})
    if unknown:
        raise StudyError(f"--only {' '.join(unknown)}: not a student of {args.plan_file}")
    if args.plan:
        for run in plan.runs:
            settings = " ".join(f"{k}={v}" for k, v in run.settings)
            print(f"{run.name:34s} {'-' if run.teacher else run.part:5s} {budgeted.state(run, plan, execution):9s} "
                  f"{'teacher' if run.teacher else plan.run_label(run)}  {settings}")
    elif args.finish:
        budgeted.finish_run(plan, args.finish, args.steps, execution)
    elif args.collect:
        budgeted.collect(plan, execution)
    elif args.release:
        budgeted.release(plan, execution)
    elif args.report:
        shown = Path(args.plan_file).resolve()
        shown = shown.relative_to(REPO) if shown.is_relative_to(REPO) else shown
        paired_report.write_report(plan, f"python -m onmt_lma.study.runs study {shown} --report")
        log(f"wrote {plan.results / 'report.md'}")
    else:
        if not (execution.data / "data.yaml").is_file():
            raise StudyError(f"{execution.data}: no prepared corpus (python -m onmt_lma.study.runs prepare "
                             f"{plan.corpus})")
        budgeted.run_study(plan, args.plan_file, execution)


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
    for flag, what in (("--commit", "after each run, rebuild the report and commit the results folder"),
                       ("--plan", "list the runs in order with their state, and exit"),
                       ("--report", "rebuild the report and plots from what is collected"),
                       ("--collect", "budgeted study: copy finished runs into the results folder"),
                       ("--release", "budgeted study: write the released models (float16, sha256)")):
        mode.add_argument(flag, action="store_true", help=what)
    mode.add_argument("--finish", metavar="RUN", help=argparse.SUPPRESS)  # a budgeted run's evaluations
    study.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    study.add_argument("--kd-cache", type=int, metavar="K", help="students distil through the teacher's top-K "
                       "cache (built once) instead of the plan's choice")
    budgeted_options = study.add_argument_group("budgeted study (a plan with a budget section)")
    budgeted_options.add_argument("--gpu", type=int, default=-1, help="CUDA device, -1 for CPU")
    budgeted_options.add_argument("--parallel", type=int, default=1, help="students trained at once")
    budgeted_options.add_argument("--batch-size", type=int, default=100,
                                  help="sentences translated at a time in evaluation")
    budgeted_options.add_argument("--deadline-min", type=float, help="fix N from what exists after this many minutes")
    budgeted_options.add_argument("--only", nargs="+", default=(), metavar="RUN", help="train only these students")
    budgeted_options.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                                  help="a setting for the teacher and every student")
    budgeted_options.add_argument("--teacher-set", dest="teacher_extra", action="append", default=[],
                                  metavar="KEY=VALUE", help="a setting for the teacher")
    args = parser.parse_args(argv)
    try:
        if args.command == "study":
            study_command(args)
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
