#!/usr/bin/env bash
# `make demo` until the recipes land: a short end-to-end run on real data.
# Trains a 64-dim ReLU and a 64-dim LMA-8 Transformer (2 + 2 layers) on 5,000
# pairs of Ope's tokenized test split (../shared/data/ope, or $LMA_DATA/ope),
# translates 503 held-out sentences with beam 5 and prints tokenized sacreBLEU
# with its signature. Finished steps are skipped on a rerun.
set -euo pipefail

usage() { echo "usage: $0   (env: LMA_DATA=DIR with ope/, DEMO_DIR=runs/demo, DEMO_STEPS=300)"; }
[ $# -eq 0 ] || { usage; exit 2; }

here=$(cd "$(dirname "$0")/.." && pwd)
data=${LMA_DATA:-$here/../shared/data}
out=${DEMO_DIR:-$here/runs/demo}
steps=${DEMO_STEPS:-300}
ope=$data/ope
for f in "$ope/de-val-clean.10K.txt" "$ope/en-val-clean.10K.txt"; do
  [ -f "$f" ] || { echo "demo: missing $f (set LMA_DATA to a folder holding ope/)" >&2; exit 1; }
done
mkdir -p "$out"

echo "== 1/4 data: 5,000 train / 500 valid / 503 test pairs from $ope"
for lang in de en; do
  src=$ope/$lang-val-clean.10K.txt
  [ -s "$out/train.$lang" ] || { head -n 5000 "$src" > "$out/train.$lang.tmp" && mv "$out/train.$lang.tmp" "$out/train.$lang"; }
  [ -s "$out/valid.$lang" ] || { sed -n '5001,5500p' "$src" > "$out/valid.$lang.tmp" && mv "$out/valid.$lang.tmp" "$out/valid.$lang"; }
  [ -s "$out/test.$lang" ] || { sed -n '5501,$p' "$src" > "$out/test.$lang.tmp" && mv "$out/test.$lang.tmp" "$out/test.$lang"; }
done
cat > "$out/data.yaml" <<YAML
save_data: $out/run
src_vocab: $out/vocab.de
tgt_vocab: $out/vocab.en
overwrite: true
data:
  corpus_1: {path_src: $out/train.de, path_tgt: $out/train.en}
  valid: {path_src: $out/valid.de, path_tgt: $out/valid.en}
YAML

echo "== 2/4 vocabulary"
[ -s "$out/vocab.en" ] || onmt_lma_build_vocab -config "$out/data.yaml" -n_sample -1 2>&1 | tail -n 2

for act in relu lma; do
  model=$out/$act
  if [ -f "${model}_step_${steps}.pt" ]; then echo "== 3/4 $act: trained already"; continue; fi
  echo "== 3/4 training the $act student, $steps steps (progress every 50)"
  onmt_lma_train -config "$out/data.yaml" -save_model "$model" \
    -encoder_type transformer -decoder_type transformer -position_encoding \
    -layers 2 -hidden_size 64 -word_vec_size 64 -transformer_ff 256 -heads 4 \
    -pos_ffn_activation_fn "$act" -lma_segments 8 \
    -batch_size 2048 -batch_type tokens -bucket_size 8192 -num_workers 0 \
    -optim adam -adam_beta2 0.998 -decay_method noam -warmup_steps 100 -learning_rate 2.0 \
    -param_init 0 -param_init_glorot -dropout 0.1 -label_smoothing 0.1 -seed 1 \
    -train_steps "$steps" -valid_steps "$steps" -save_checkpoint_steps "$steps" \
    -report_every 50 -log_file "$model.log" 2>&1 | grep --line-buffered -E "Step|Validation" || true
  [ -f "${model}_step_${steps}.pt" ] || { echo "demo: training $act failed, see $model.log" >&2; exit 1; }
done

echo "== 4/4 beam-5 translation of the test set and tokenized BLEU"
for act in relu lma; do
  hyp=$out/test.$act.hyp
  if [ ! -s "$hyp" ]; then
    onmt_lma_translate -model "$out/${act}_step_${steps}.pt" -src "$out/test.de" \
      -output "$hyp.tmp" -beam_size 5 -max_length 100 -batch_size 32 2>"$out/translate.$act.log"
    mv "$hyp.tmp" "$hyp"
  fi
  printf '%-5s ' "$act"
  sacrebleu "$out/test.en" -i "$hyp" --tokenize none --metrics bleu --format text
done
echo "(tiny models and few steps: a check of the pipeline, not of LMA; see README)"
