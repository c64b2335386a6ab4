#!/usr/bin/env bash
# `make demo`: compress a Multi30k teacher into 64-dim ReLU and LMA-8 students on
# 2 CPU cores in about 12 minutes, evaluate all three and print the table; then
# evaluate the released models of results/multi30k_converged (trained for real)
# and show their table and example translations side by side.
# Steps are cut to demo size (DEMO_TEACHER_STEPS, DEMO_STUDENT_STEPS); the full
# CPU budgets are in recipes/multi30k. A rerun skips finished steps.
USAGE="usage: scripts/demo.sh   (env: LMA_DATA=DIR holding multi30k/, else ../shared/data or a download;
       RUNS_ROOT (default runs/demo), DEMO_TEACHER_STEPS=120, DEMO_STUDENT_STEPS=100)"
RUNS_ROOT=${RUNS_ROOT:-$(cd "$(dirname "$0")/.." && pwd)/runs/demo}
source "$(dirname "$0")/common.sh"
[ $# -eq 0 ] || die_usage "no arguments expected"
export RUNS_ROOT DATA_ROOT
teacher_steps=${DEMO_TEACHER_STEPS:-120}
student_steps=${DEMO_STUDENT_STEPS:-100}
mkdir -p "$RUNS_ROOT"
log=$RUNS_ROOT/demo.log
start=$SECONDS

step() {  # step "what" command...: run, keep the full log, show progress lines
  local what=$1 status
  shift
  echo "== $what ($(( (SECONDS - start) / 60 )) min in)"
  set +e
  "$@" 2>&1 | tee -a "$log" | grep --line-buffered -E "Step [0-9]+/|Validation perplexity|: training |resuming from|finished already|up to date|BLEU|\[released\]|^\| |error"
  status=${PIPESTATUS[0]}
  set -e
  [ "$status" = 0 ] || { echo "demo: '$*' failed (exit $status); full log: $log" >&2; exit 1; }
}
demo_settings="train_steps=$teacher_steps valid_steps=40 save_checkpoint_steps=$teacher_steps batch_size=1536 warmup_steps=100 report_every=20"

step "1/5 data: Multi30k (29,000 / 1,014 / 1,000 pairs)" prepare_corpus multi30k
EXTRA="$demo_settings" step "2/5 teacher: 256-dim, 3 + 3 layers, $teacher_steps steps" \
  "$REPO/scripts/train_teacher.sh" multi30k
student_settings="train_steps=$student_steps valid_steps=20 save_checkpoint_steps=$student_steps batch_size=1536 warmup_steps=100 report_every=20"
for act in relu lma; do
  EXTRA="$student_settings" step "3/5 $act student: 64-dim, 3 + 3 layers, distilled, $student_steps steps" \
    "$REPO/scripts/train_student.sh" multi30k 64 "$act" 1
done
for run in teacher student64_relu_seed1 student64_lma_seed1; do
  checkpoint=$RUNS_ROOT/multi30k/$run/$(cat "$RUNS_ROOT/multi30k/$run/DONE")
  step "4/5 evaluating $run (beam 5, one sentence at a time)" "$REPO/scripts/evaluate.sh" "$checkpoint" multi30k
done
"$PYTHON" -m onmt_lma.study.report --out "$RUNS_ROOT/report" "$RUNS_ROOT/multi30k" 2>>"$log" | sed -n '/^## Teachers/,/^sacreBLEU signature/p'
echo "(above: demo-sized training, $teacher_steps + $student_steps steps: a check of the pipeline, not of quality)"
# the released models of the converged study: what trained models score (sha256 checked first)
released=$REPO/results/multi30k_converged/models
step "5/5 released models ($released): evaluating" \
  "$PYTHON" -m onmt_lma.study.probes.released_models --models "$released" --data "$DATA_ROOT/multi30k" --out "$RUNS_ROOT/released"
"$PYTHON" -m onmt_lma.study.probes.released_models --models "$released" --data "$DATA_ROOT/multi30k" --out "$RUNS_ROOT/released" 2>>"$log"
echo "demo: done in $(( (SECONDS - start) / 60 )) min; report and plots in $RUNS_ROOT/report, logs in $log"
