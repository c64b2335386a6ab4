#!/usr/bin/env bash
# Table (paper's Table 3 shape: mean ± std over seeds, change relative to ReLU)
# and plots from the evaluation JSON files under the given folders.
USAGE="usage: scripts/report.sh OUT_DIR RESULTS_DIR_OR_JSON...   (e.g. scripts/report.sh results/multi30k runs/multi30k)"
source "$(dirname "$0")/common.sh"
[ $# -ge 2 ] || die_usage "expected an output folder and at least one results folder"
out=$1; shift
for p in "$@"; do [ -e "$p" ] || die_usage "no such file or folder: $p"; done
"$PYTHON" -m onmt_lma.study.report --out "$out" "$@"
