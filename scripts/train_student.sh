#!/usr/bin/env bash
# Train a student of a corpus: recipes/<corpus>/student<SIZE>.yaml with the given
# activation and seed, distilled from the corpus's teacher (runs/<corpus>/teacher)
# with the paper's KD settings (weight 0.7, temperature 1; recipes/common.yaml).
# KD_TEACHER=none trains without distillation; KD_TEACHER=PATH picks another teacher.
# Resumes an interrupted run; a finished run is left as it is.
source "$(dirname "$0")/common.sh"
ACTIVATIONS=$(registered_activations)
USAGE="usage: scripts/train_student.sh CORPUS SIZE ACTIVATION SEED
  CORPUS: ${CORPORA// /, }   SIZE: ${SIZES// /, }
  ACTIVATION: ${ACTIVATIONS// /, }   SEED: a positive integer
env: KD_TEACHER (default: the corpus's finished teacher; 'none': no distillation),
     LMA_SEGMENTS (default 8, for lma and aplu), DATA_ROOT, RUNS_ROOT, EXTRA='key=value ...'"
[ $# -eq 4 ] || die_usage "expected 4 arguments, got $#"
corpus=$1 size=$2 activation=$3 seed=$4
one_of "$corpus" "$CORPORA" corpus
one_of "$size" "$SIZES" size
one_of "$activation" "$ACTIVATIONS" activation
[[ "$seed" =~ ^[1-9][0-9]*$ ]] || die_usage "SEED must be a positive integer, got '$seed'"
segments=${LMA_SEGMENTS:-8}
[[ "$segments" =~ ^[0-9]+$ ]] && [ "$segments" -ge 2 ] || die_usage "LMA_SEGMENTS must be an integer >= 2, got '$segments'"

prepare_corpus "$corpus"
teacher=${KD_TEACHER:-}
if [ -z "$teacher" ]; then
  done_file=$RUNS_ROOT/$corpus/teacher/DONE
  [ -f "$done_file" ] || { echo "error: no finished teacher at $RUNS_ROOT/$corpus/teacher: run scripts/train_teacher.sh $corpus first, or set KD_TEACHER=none" >&2; exit 1; }
  teacher=$RUNS_ROOT/$corpus/teacher/$(cat "$done_file")
fi
name=student${size}_${activation}
[ "$segments" = 8 ] || name=${name}${segments}
name=${name}_seed${seed}
sets=(--set "pos_ffn_activation_fn=$activation" --set "lma_segments=$segments" --set "seed=$seed")
if [ "$teacher" = none ]; then name=${name}_nokd; else sets+=(--set "kd_teacher=$teacher"); fi
for kv in ${EXTRA:-}; do sets+=(--set "$kv"); done
"$PYTHON" -m onmt_lma.study.recipes train "$corpus" "student$size" --data "$DATA_ROOT/$corpus" \
  --run-dir "$RUNS_ROOT/$corpus/$name" "${sets[@]}"
