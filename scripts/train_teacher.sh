#!/usr/bin/env bash
# Train the teacher of a corpus with recipes/<corpus>/teacher.yaml (ReLU, no distillation).
# Resumes an interrupted run; a finished run is left as it is.
source "$(dirname "$0")/common.sh"
USAGE="usage: scripts/train_teacher.sh CORPUS   (CORPUS: ${CORPORA// /, })
env: DATA_ROOT (default data/), RUNS_ROOT (default runs/), EXTRA='key=value ...' extra run settings"
[ $# -eq 1 ] || die_usage "expected 1 argument, got $#"
corpus=$1
one_of "$corpus" "$CORPORA" corpus

sets=()
for kv in ${EXTRA:-}; do sets+=(--set "$kv"); done
LMA_DATA=$SHARED_DATA exec "$PYTHON" -m onmt_lma.study.runs --data-root "$DATA_ROOT" --runs-root "$RUNS_ROOT" \
  teacher "$corpus" "${sets[@]}"
