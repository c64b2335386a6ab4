"""A study without budget, run by run: train (the ``DONE`` protocol of :mod:`.recipes`), evaluate on the
corpus's test set, collect into the results folder (and with ``--commit``, commit it), one run after another.
"""

import datetime
import os
import shutil
import subprocess
import sys
from pathlib import Path

from onmt_lma.deploy.decoding import Decoding
from onmt_lma.model.lma import DEFAULT_SEGMENTS
from onmt_lma.study import recipes
from onmt_lma.study.plan import REPO, SHARED_DATA, StudyError, student_name


def log(message):
    print(f"[study] {message}", flush=True)


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
    out.parent.mkdir(parents=True, exist_ok=True)
    # the lock and config beside the cache: its folder is built aside and renamed into place when complete
    with recipes.exclusive_lock(out.with_name(out.name + ".lock"), f"{out} is being built by another process"):
        # the students' data options (corpora, vocabularies, transforms): the same in every student recipe
        config = recipes.compose(corpus, "student64", Path(data_root) / corpus, out)
        config["log_file"] = str(out.with_name(out.name + ".log"))
        config_file = out.with_name(out.name + ".config.yaml")
        recipes.write_config(config, config_file)
        log(f"building the teacher cache {out}")
        cache_cli.main(["-config", str(config_file), "-model", str(kd_teacher), "-out", str(out),
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
    from onmt_lma.evaluation import evaluate, facts, test_sets

    run_dir = Path(runs_root) / study.corpus / run.name
    checkpoint = finished_checkpoint(run_dir)
    out = Path(f"{checkpoint}.eval.json")
    test = test_sets.prepared_test_set(Path(data_root) / study.corpus)
    if not (out.is_file() and facts.kept_result(out, checkpoint, test, Decoding())):
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
