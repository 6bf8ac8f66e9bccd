#!/usr/bin/env bash
# The memorizing_lm speed benchmarks (docs/families/memorizing_lm.md, "Benchmarks"), one command each,
# on the CPU or a GPU; each writes benchmarks/results/<device>_<name>.json and regenerates docs/RESULTS.md:
#
#   bash benchmarks/memorizing.sh peer cpu|cuda     # ours (txl_lm, memorizing_lm) vs memorizing-transformers-pytorch
#   bash benchmarks/memorizing.sh recurrent cpu|cuda  # txl_lm (and block_recurrent_lm) vs block-recurrent-transformer-pytorch
#   bash benchmarks/memorizing.sh sweep cpu|cuda    # memorizing_lm at D 8k..262k vs its TXL without memory, + plot
#   bash benchmarks/memorizing.sh smoke             # all three at toy sizes, 1 update each (checks, not figures)
#
# Peers need .venv-peers (bash scripts/setup_peers.sh; on a machine without a package index:
# `bash scripts/setup_peers.sh download .peer-wheels` here, then PEER_WHEELS=.peer-wheels there).
# PY is the plugin's interpreter (default .venv/bin/python; on the GPU machine: PY=python3 with
# fairseq installed from shared/gpu-wheels, see docs/families/memorizing_lm.md).
# PEER_SWEEP=1 adds memorizing-transformers-pytorch to the sweep at every D. Extra arguments go to
# benchmarks/throughput.py (e.g. --note "..."). Shapes: Meliad small_37M (12 layers, d 512, 8 heads of
# 64, d_ff 2048), segments of 512 = W with the XL cache (Meliad seq_512.gin), vocabulary 32000, dropout 0
# for ours and the peers alike; GPU: batch 8, bf16 autocast (ours and the peers); CPU: batch 1, fp32.
set -euo pipefail
cd "$(dirname "$0")/.."
WHAT=${1:?usage: benchmarks/memorizing.sh peer|recurrent|sweep|smoke [cpu|cuda] [throughput.py args]}
DEVICE=${2:-cpu}
shift $(( $# >= 2 ? 2 : 1 ))
PY=${PY:-.venv/bin/python}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

if [ "$DEVICE" = cuda ]; then
  RUN=(--device cuda --precision bf16 --batch-size 8 --steps 10 --warmup 3 --repeats 3)
  FILL=segments
else
  RUN=(--device cpu --precision fp32 --batch-size 1 --steps 2 --warmup 1 --repeats 3)
  FILL=direct  # streaming 512 segments to fill D = 262k takes too long on a CPU; the search costs the same
fi
SMALL=(--task language_modeling --layers 12 --embed-dim 512 --ffn-dim 2048 --heads 8 --seq-len 512 --vocab-size 32000)
no_dropout() { for a in "$@"; do echo "--set $a:dropout=0 --set $a:attention_dropout=0"; done; }
has_arch() { $PY -c "import sys, fairseq_ext; from fairseq.models import ARCH_MODEL_REGISTRY as R; sys.exit('$1' not in R)"; }
SIZES=8192,32768,65536,131072,262144

case "$WHAT" in
  peer)  # the issue's shapes, the peer filled by streaming segments. GPU: Meliad small, batch 8 x 512,
         # D 65,536 (the FAIRSEQ_NOTES peer figure); CPU: 4 layers, d 256, 4 heads of 64, batch 2 x 256,
         # D 32,768 (where the peer runs 1.0k tokens/s at 8k entries), window = segment
    if [ "$DEVICE" = cuda ]; then
      SHAPE=("${SMALL[@]}"); BATCH=8; D=65536; W=512
    else
      SHAPE=(--task language_modeling --layers 4 --embed-dim 256 --ffn-dim 1024 --heads 4 --seq-len 256
             --vocab-size 32000); BATCH=2; D=32768; W=256
    fi
    $PY benchmarks/throughput.py "${SHAPE[@]}" "${RUN[@]}" --batch-size $BATCH \
      --archs txl_sliding_window_small,memorizing_small,peer.memorizing_transformers \
      $(no_dropout txl_sliding_window_small memorizing_small) \
      --set txl_sliding_window_small:window_length=$W --set memorizing_small:window_length=$W \
      --set memorizing_small:memory_size=$D --set peer.memorizing_transformers:memory_size=$D \
      --memory-fill segments --name "${DEVICE}_memorizing_vs_peer" "$@" ;;
  recurrent)  # 4 layers, d 256, 4 heads of 64, batch 2 x 512, window 256, 256 states, recurrent layer -3
    ARCHS=txl_sliding_window_small
    SETS=(--set txl_sliding_window_small:window_length=256)
    if has_arch block_recurrent_small; then
      ARCHS+=,block_recurrent_small
      SETS+=(--set block_recurrent_small:window_length=256 --set block_recurrent_small:num_states=256)
    fi
    $PY benchmarks/throughput.py --task language_modeling --layers 4 --embed-dim 256 --ffn-dim 1024 --heads 4 \
      --seq-len 512 --vocab-size 32000 "${RUN[@]}" --batch-size 2 --archs "$ARCHS,peer.block_recurrent" \
      "${SETS[@]}" $(no_dropout ${ARCHS//,/ }) --set peer.block_recurrent:window_length=256 \
      --set peer.block_recurrent:num_states=256 --name "${DEVICE}_recurrent_vs_peer" "$@" ;;
  sweep)
    PEER=()
    if [ "${PEER_SWEEP:-0}" = 1 ]; then
      PEER=(--sweep "peer.memorizing_transformers:memory_size=$SIZES")
    fi
    $PY benchmarks/throughput.py "${SMALL[@]}" "${RUN[@]}" \
      --archs "txl_sliding_window_small,memorizing_small${PEER:+,peer.memorizing_transformers}" \
      $(no_dropout txl_sliding_window_small memorizing_small) \
      --sweep "memorizing_small:memory_size=$SIZES" "${PEER[@]}" --memory-fill $FILL \
      --name "${DEVICE}_memorizing_sweep" "$@" ;;
  smoke)  # toy sizes into a temp dir: the three commands' code paths, no figures
    OUT=$(mktemp -d)
    TOY=(--task language_modeling --layers 2 --embed-dim 32 --ffn-dim 64 --heads 2 --seq-len 64 --vocab-size 100
         --batch-size 2 --steps 1 --warmup 1 --repeats 1 --device "$DEVICE" --results-dir "$OUT" --no-docs)
    $PY benchmarks/throughput.py "${TOY[@]}" --archs txl_sliding_window_tiny,memorizing_tiny,peer.memorizing_transformers \
      --set memorizing_tiny:memory_size=256 --set peer.memorizing_transformers:memory_size=256 \
      --set peer.memorizing_transformers:attention_head_dim=16 --set peer.memorizing_transformers:memory_layers=-1 \
      --name peer "$@"
    $PY benchmarks/throughput.py "${TOY[@]}" --archs txl_sliding_window_tiny,peer.block_recurrent \
      --set peer.block_recurrent:window_length=32 --set peer.block_recurrent:attention_head_dim=16 \
      --set peer.block_recurrent:recurrent_layers=-1 --name recurrent "$@"
    $PY benchmarks/throughput.py "${TOY[@]}" --archs txl_sliding_window_tiny,memorizing_tiny \
      --sweep memorizing_tiny:memory_size=64,128 --name sweep "$@"
    ls "$OUT" ;;
  *) echo "unknown benchmark $WHAT (peer, recurrent, sweep, smoke)" >&2; exit 2 ;;
esac
