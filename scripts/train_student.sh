#!/usr/bin/env bash
# Train a student of a corpus: recipes/<corpus>/student<SIZE>.yaml with the given
# activation and seed, distilled from the corpus's teacher (runs/<corpus>/teacher)
# with the paper's KD settings (weight 0.7, temperature 1; recipes/common.yaml).
# KD_TEACHER=none trains without distillation; KD_TEACHER=PATH picks another teacher.
# KD_CACHE=K distils from the teacher's top-K cache (onmt_lma_teacher_cache, built once beside the teacher).
# Resumes an interrupted run; a finished run is left as it is.
source "$(dirname "$0")/common.sh"
ACTIVATIONS=$(registered_activations)
USAGE="usage: scripts/train_student.sh CORPUS SIZE ACTIVATION SEED
  CORPUS: ${CORPORA// /, }   SIZE: ${SIZES// /, }
  ACTIVATION: ${ACTIVATIONS// /, }   SEED: a positive integer
env: KD_TEACHER (default: the corpus's finished teacher; 'none': no distillation),
     KD_CACHE=K (distil from the teacher's top-K cache, built once),
     LMA_SEGMENTS (default 8, for lma and aplu), DATA_ROOT, RUNS_ROOT, EXTRA='key=value ...'"
[ $# -eq 4 ] || die_usage "expected 4 arguments, got $#"
corpus=$1 size=$2 activation=$3 seed=$4
one_of "$corpus" "$CORPORA" corpus
one_of "$size" "$SIZES" size
one_of "$activation" "$ACTIVATIONS" activation
[[ "$seed" =~ ^[1-9][0-9]*$ ]] || die_usage "SEED must be a positive integer, got '$seed'"
segments=${LMA_SEGMENTS:-8}
[[ "$segments" =~ ^[0-9]+$ ]] && [ "$segments" -ge 2 ] || die_usage "LMA_SEGMENTS must be an integer >= 2, got '$segments'"

sets=(--segments "$segments")
[ -z "${KD_TEACHER:-}" ] || sets+=(--kd-teacher "$KD_TEACHER")
if [ -n "${KD_CACHE:-}" ]; then
  [[ "$KD_CACHE" =~ ^[1-9][0-9]*$ ]] || die_usage "KD_CACHE must be a positive integer (K), got '$KD_CACHE'"
  sets+=(--kd-cache "$KD_CACHE")
fi
for kv in ${EXTRA:-}; do sets+=(--set "$kv"); done
LMA_DATA=$SHARED_DATA exec "$PYTHON" -m onmt_lma.study.runs --data-root "$DATA_ROOT" --runs-root "$RUNS_ROOT" \
  student "$corpus" "$size" "$activation" "$seed" "${sets[@]}"
