#!/usr/bin/env bash
# README command 1: install, prepare the bundled sample, train a small masked LM of this plugin
# through stock fairseq-train on CPU (a few minutes), then fill masks from the checkpoint.
# Re-running reuses the environment, the prepared data and the finished checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY=.venv/bin/python
DATA=data-bin/pg-sample
SAVE=checkpoints/quickstart
UPDATES=${QUICKSTART_UPDATES:-400}

echo "== 1/3 prepare examples/data/pg-sample -> $DATA"
$PY -m fairseq_ext.data.prepare --input examples/data/pg-sample --out $DATA --vocab-size 4000

echo "== 2/3 train roberta_ext_baseline_small for $UPDATES updates -> $SAVE"
.venv/bin/fairseq-train $DATA --user-dir fairseq_ext \
  --task masked_lm --criterion masked_lm --arch roberta_ext_baseline_small \
  --tokens-per-sample 128 --sample-break-mode none --batch-size 16 \
  --optimizer adam --adam-betas '(0.9,0.98)' --adam-eps 1e-6 --weight-decay 0.01 --clip-norm 1.0 \
  --lr 1e-3 --lr-scheduler polynomial_decay --warmup-updates 40 --total-num-update "$UPDATES" \
  --max-update "$UPDATES" --cpu --num-workers 0 --log-interval 25 --validate-interval-updates 200 \
  --save-dir $SAVE --no-epoch-checkpoints --seed 1

echo "== 3/3 fill_mask from $SAVE/checkpoint_best.pt"
$PY examples/fill_mask.py $SAVE --data $DATA \
  "The man walked into the <mask>." \
  "She opened the <mask> and looked out." \
  "It was a dark and <mask> night."
