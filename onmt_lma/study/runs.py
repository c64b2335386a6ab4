"""Runs and studies in one place: run names, training (the ``DONE`` protocol of :mod:`.recipes`), collection
of results, study plans with their state, and committing collected results.

    python -m onmt_lma.study.runs prepare CORPUS
    python -m onmt_lma.study.runs teacher CORPUS [--set KEY=VALUE ...]
    python -m onmt_lma.study.runs student CORPUS SIZE ACTIVATION SEED [--segments K] [--kd-teacher PATH|none]
                                  [--kd-cache K] [--set ...]
    python -m onmt_lma.study.runs study PLAN.yaml [--commit | --plan | --report | --collect | --release]
                                  [--kd-cache K] [--parallel N] [--gpu G] [--only RUN ...] [--deadline-min M]
    python -m onmt_lma.study.runs study PLAN.yaml --step NAME [-- ARGS ...]

A study is a short plan file (``studies/multi30k.yaml``): the corpus, the results folder, the runs in
training order, and the study's own steps (probes, rule checks, tables: ``--step NAME`` runs one,
``--plan`` lists them).  ``study`` trains every run not collected yet (an interrupted one resumes from its latest
checkpoint), evaluates it on the corpus's test set and collects it into ``RESULTS/runs/<run>/`` (evaluation
JSON, hypotheses, config, training log, the commits it trained with) before the next; ``--commit``
rebuilds the report and commits the results folder after each run (not its hand-written READING.md and
REPRODUCE.md, nothing else of the repository).  Folders: ``--data-root`` / ``DATA_ROOT`` (default
``data``), ``--runs-root`` / ``RUNS_ROOT`` (default ``runs``), ``RESULTS`` (default: the plan's).
A plan with a ``budget`` section (``studies/multi30k_converged.yaml``) is a budgeted study
(:mod:`onmt_lma.study.budgeted`): a pilot fixes the step count N, students train ``--parallel`` at once
and stop at N, each is evaluated every few checkpoints and averaged; ``--collect``, ``--release`` and
``--report`` (:mod:`onmt_lma.study.paired_report`) make its results.
``scripts/train_teacher.sh`` and ``train_student.sh`` are
thin wrappers.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path


from onmt_lma.model.lma import DEFAULT_SEGMENTS
from onmt_lma.study import recipes
from onmt_lma.study.plan import REPO, StudyError, load_plan
from onmt_lma.study.sequential import log, prepare_corpus, run_study, state, train_student, train_teacher, write_report


# --------------------------------------------------------------------------- #
# Training
# --------------------------------------------------------------------------- #


# --------------------------------------------------------------------------- #
# Studies: plan files, state, collection, commits
# --------------------------------------------------------------------------- #


# --------------------------------------------------------------------------- #
# The command
# --------------------------------------------------------------------------- #
def run_step(plan, plan_file, name, extra=()):
    """``--step NAME [-- ARGS]``: one of the plan's steps, from the repository root; its exit status."""
    if name not in plan.steps:
        raise StudyError(f"--step {name}: {plan_file} has " + (f"the steps {', '.join(plan.steps)}" if plan.steps
                                                                  else "no steps"))
    step = plan.steps[name]
    command = step.command(extra)
    log(f"step {name}: python -m onmt_lma.study.probes.{step.module} {' '.join(command[3:])}")
    return subprocess.run(command, cwd=REPO).returncode


def list_steps(plan):
    for step in plan.steps.values():
        print(f"step {step.name:<29} python -m onmt_lma.study.probes.{step.module} {' '.join(step.args)}"
              + (f"  # {step.what}" if step.what else ""))


def study_command(args):
    """``study PLAN``: a plan without ``budget`` trains in order (:func:`run_study`), one with it through
    :mod:`onmt_lma.study.budgeted`."""
    plan = load_plan(args.plan_file)
    if args.step:
        return run_step(plan, args.plan_file, args.step, args.step_args)
    if args.step_args:
        raise StudyError(f"arguments after --: {' '.join(args.step_args)}; they are for a --step")
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
            list_steps(plan)
        elif args.report:
            write_report(plan)
        else:
            run_study(plan, args.data_root, args.runs_root, commit=args.commit)
        return
    from onmt_lma.study import budgeted, finish, paired_report

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
        list_steps(plan)
    elif args.finish:
        finish.finish_run(plan, args.finish, args.steps, execution)
    elif args.collect:
        finish.collect(plan, execution)
    elif args.release:
        finish.release(plan, execution)
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
    mode.add_argument("--step", metavar="NAME", help="run one of the plan's steps (its own scripts: probes, rule checks, "
                      "tables); arguments after -- go to it")
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
    argv = list(sys.argv[1:] if argv is None else argv)
    step_args = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[: len(argv) - len(step_args) - (1 if "--" in argv else 0)])
    args.step_args = step_args
    status = 0
    try:
        if args.command == "study":
            status = study_command(args) or 0
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
    return status


if __name__ == "__main__":
    sys.exit(main())
