# Sourced by the scripts in this folder: paths, argument checks, the venv's commands.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA_ROOT=${DATA_ROOT:-$REPO/data}      # prepared corpora: $DATA_ROOT/<corpus>
RUNS_ROOT=${RUNS_ROOT:-$REPO/runs}      # runs: $RUNS_ROOT/<corpus>/<run>
SHARED_DATA=${LMA_DATA:-$REPO/../shared/data}  # local copies of raw corpora, if any
if [ -x "$REPO/.venv/bin/python" ]; then PYTHON=${PYTHON:-$REPO/.venv/bin/python}; else PYTHON=${PYTHON:-python3}; fi

# the lists live in Python, once: data_prep's corpora, onmt_lma's activation registry (which imports
# torch: asked only by the scripts that need it)
CORPORA=$("$PYTHON" -c 'from data_prep.sources import CORPORA; print(*CORPORA)')
registered_activations() { "$PYTHON" -c 'from onmt_lma.model.activations import registered_activations as r; print(*r())'; }
SIZES="256 128 64"

die_usage() { echo "$USAGE" >&2; [ $# -gt 0 ] && echo "error: $*" >&2; exit 2; }
one_of() {  # one_of VALUE "A B C" WHAT
  local value=$1 choices=$2 what=$3
  for c in $choices; do [ "$value" = "$c" ] && return 0; done
  die_usage "unknown $what '$value' (valid: $choices)"
}

# prepare_corpus CORPUS: python -m data_prep into $DATA_ROOT/CORPUS unless done,
# from $SHARED_DATA/CORPUS when that local copy exists (tests and demos), else downloading.
prepare_corpus() {
  LMA_DATA=$SHARED_DATA "$PYTHON" -m onmt_lma.study.runs --data-root "$DATA_ROOT" prepare "$1"
}
