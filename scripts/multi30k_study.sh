#!/usr/bin/env bash
# The Multi30k study (results/multi30k), made with the recipes before commit
# aa0e4cb (no biases, label smoothing 0.1, learning rate 0.45, 800 steps): run
# today it trains with today's recipes; check out 907910b to repeat it as made.
# The converged follow-up is scripts/multi30k_converged.py.  One teacher, 64-dim students with relu,
# prelu, swish, aplu-8 and lma-8 distilled from it (KD weight 0.7, temperature 1)
# over three seeds, and the LMA segment study (4, 8, 12, 16 segments, seed 1).
# Each run is trained (scripts/train_*.sh), evaluated on test_2016
# (scripts/evaluate.sh) and collected into results/multi30k/runs/<run>/ (its
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
RESULTS=${RESULTS:-$REPO/results/multi30k}
corpus=multi30k

# name activation seed segments, in training order ("teacher" first)
plan() {
  local seed act segments
  echo "teacher - 1 -"
  for seed in 1 2; do
    for act in relu lma aplu prelu swish; do echo "student64_${act}_seed${seed} $act $seed 8"; done
  done
  for segments in 4 12 16; do echo "student64_lma${segments}_seed1 lma 1 $segments"; done
  for act in relu lma aplu prelu swish; do echo "student64_${act}_seed3 $act 3 8"; done
}

state() {  # state RUN: collected | trained | started | todo
  local run=$1
  if [ -f "$RESULTS/runs/$run/$run.eval.json" ]; then echo collected
  elif [ -f "$RUNS_ROOT/$corpus/$run/DONE" ]; then echo trained
  elif [ -d "$RUNS_ROOT/$corpus/$run" ]; then echo started
  else echo todo; fi
}

# collect RUN: copy what the results need out of runs/ (which is not committed)
collect() {
  local run=$1 dir=$RUNS_ROOT/$corpus/$1 checkpoint
  checkpoint=$dir/$(cat "$dir/DONE")
  FORCE=0 "$REPO/scripts/evaluate.sh" "$checkpoint" "$corpus"
  mkdir -p "$RESULTS/runs/$run.tmp"
  cp "$dir/config.yaml" "$dir/train.log" "$RESULTS/runs/$run.tmp/"
  if [ -f "$dir/COMMITS" ]; then cp "$dir/COMMITS" "$RESULTS/runs/$run.tmp/"; fi
  cp "$checkpoint.eval.hyp.detok.en" "$RESULTS/runs/$run.tmp/test.hyp.detok.en"
  cp "$checkpoint.eval.json" "$RESULTS/runs/$run.tmp/$run.eval.json"
  rm -rf "${RESULTS:?}/runs/$run"
  mv "$RESULTS/runs/$run.tmp" "$RESULTS/runs/$run"   # whole or not at all
}

report() {
  "$PYTHON" -m onmt_lma.study.report --out "$RESULTS" --reading "$RESULTS/READING.md" "$RESULTS/runs" >/dev/null
  echo "[study] wrote $RESULTS/report.md"
}

# commit_results MESSAGE: the report, plots and collected runs, nothing else of
# the repository (other staged changes stay staged); a failure (say another git
# command holds the index) is a warning: the next commit takes these files too.
commit_results() {
  local message=$1 paths=(. ':(exclude)READING.md' ':(exclude)REPRODUCE.md')
  report
  if (cd "$RESULTS" && git add -A -- "${paths[@]}" && { git diff --cached --quiet -- "${paths[@]}" ||
        git commit -q -m "$message" -- "${paths[@]}"; }); then
    echo "[study] committed $RESULTS: $message"
  else
    echo "[study] warning: could not commit $RESULTS (the next run's commit will include it)" >&2
  fi
}

if [ "$mode" = --plan ]; then
  plan | while read -r run _; do printf '%-28s %s\n' "$run" "$(state "$run")"; done
  exit 0
fi
if [ "$mode" = --report ]; then report; exit 0; fi

mkdir -p "$RUNS_ROOT/$corpus"
exec 9>"$RUNS_ROOT/$corpus/.study.lock"
flock -n 9 || { echo "error: another multi30k_study.sh is running (lock $RUNS_ROOT/$corpus/.study.lock)" >&2; exit 1; }
start=$SECONDS
while read -r run act seed segments; do
  [ "$(state "$run")" = collected ] && continue
  echo "[study] $(date -u +%FT%TZ) $run ($(( (SECONDS - start) / 60 )) min in)"
  # the code each (re)start trains with, kept with the run's results
  mkdir -p "$RUNS_ROOT/$corpus/$run"
  echo "$(date -u +%FT%TZ) $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)" >> "$RUNS_ROOT/$corpus/$run/COMMITS"
  if [ "$run" = teacher ]; then
    "$REPO/scripts/train_teacher.sh" "$corpus" </dev/null
  else
    LMA_SEGMENTS=$segments "$REPO/scripts/train_student.sh" "$corpus" 64 "$act" "$seed" </dev/null
  fi
  collect "$run" </dev/null
  echo "[study] $(date -u +%FT%TZ) $run collected"
  if [ "$mode" = --commit ]; then commit_results "results/multi30k: $run collected"; fi
done < <(plan)
if [ "$mode" = --commit ]; then commit_results "results/multi30k: every run collected"; else report; fi
echo "[study] all runs collected ($(( (SECONDS - start) / 60 )) min)"
