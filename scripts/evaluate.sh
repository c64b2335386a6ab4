#!/usr/bin/env bash
# Evaluate a checkpoint on the test set of a prepared corpus ($DATA_ROOT/CORPUS):
# beam-5 translation one sentence at a time, sacreBLEU (detokenized, with its
# signature), chrF and tokenized BLEU (as multi-bleu.perl), test perplexity, parameters,
# size on disk, speed, inference memory. Writes CHECKPOINT.eval.json (kept if it
# exists: FORCE=1 replaces it). GPU=0 evaluates on CUDA device 0.
source "$(dirname "$0")/common.sh"
USAGE="usage: scripts/evaluate.sh CHECKPOINT CORPUS   (CORPUS: ${CORPORA// /, })
env: DATA_ROOT (default data/), GPU (default -1: CPU), FORCE=1 to replace an existing result"
[ $# -eq 2 ] || die_usage "expected 2 arguments, got $#"
checkpoint=$1 corpus=$2
one_of "$corpus" "$CORPORA" corpus
[ -f "$checkpoint" ] || die_usage "no checkpoint at '$checkpoint'"
[ -f "$DATA_ROOT/$corpus/manifest.json" ] || die_usage "corpus not prepared at $DATA_ROOT/$corpus (python -m data_prep $corpus --out $DATA_ROOT/$corpus)"
force=()
[ "${FORCE:-0}" = 1 ] && force=(-force)
"$PYTHON" -m onmt_lma.bin.evaluate -model "$checkpoint" -corpus "$DATA_ROOT/$corpus" -gpu "${GPU:--1}" "${force[@]}"
