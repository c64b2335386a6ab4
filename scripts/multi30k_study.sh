#!/usr/bin/env bash
# The Multi30k study (results/multi30k): its plan is studies/multi30k.yaml, carried
# out by python -m onmt_lma.study.runs study (this script is a wrapper with the
# same options).  The converged follow-up is scripts/multi30k_converged.py.
# Each run is trained (as scripts/train_*.sh trains), evaluated on test_2016
# (as scripts/evaluate.sh) and collected into results/multi30k/runs/<run>/ (its
# evaluation JSON, hypotheses, config and training log) before the next starts,
# in an order that gives a first full comparison early and the spread over
# seeds next: seed 1 of every activation, seed 2 of every activation, the
# segment study, seed 3.
#
# Safe to stop at any time (kill, end of session) and to run again: finished
# runs are skipped, an interrupted one resumes from its latest checkpoint.
# Run it in the background with a log, e.g.
#   setsid nohup scripts/multi30k_study.sh > runs/multi30k/study.log 2>&1 &
# Then: scripts/multi30k_study.sh --report  (results/multi30k/report.md, plots).
# With --commit, every collected run is committed at once (with the rebuilt
# report), so a session or machine that stops mid-way loses no finished run.
USAGE="usage: scripts/multi30k_study.sh [--commit | --plan | --report]
  (no option) train, evaluate and collect every run not collected yet
  --commit    the same, and after each run rebuild the report and commit RESULTS
              (only that folder, less the hand-written READING.md and REPRODUCE.md)
              to the branch checked out there
  --plan      list the runs in order with their state, and exit
  --report    rebuild results/multi30k/report.md and its plots from what is collected
env: DATA_ROOT, RUNS_ROOT (as the other scripts), RESULTS (default results/multi30k)"
source "$(dirname "$0")/common.sh"
[ $# -le 1 ] || die_usage "expected at most one option"
mode=${1:-run}
case $mode in run|--commit|--plan|--report) ;; *) die_usage "unknown option '$mode'";; esac
case $mode in run) flag=();; *) flag=("$mode");; esac
LMA_DATA=$SHARED_DATA exec "$PYTHON" -m onmt_lma.study.runs --data-root "$DATA_ROOT" --runs-root "$RUNS_ROOT" \
  study "$REPO/studies/multi30k.yaml" "${flag[@]}"
