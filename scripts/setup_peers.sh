#!/usr/bin/env bash
# Create (or reuse) .venv-peers: the peer PyTorch implementations that benchmarks/peers.py times
# (memorizing-transformers-pytorch, block-recurrent-transformer-pytorch; benchmark-only, never
# plugin dependencies), in a venv of their own so they cannot change the plugin's .venv.
#
#   bash scripts/setup_peers.sh                  # here: Python 3.11, CPU torch 2.13.0, package index
#   bash scripts/setup_peers.sh download DIR     # here: fetch Python 3.12 wheels into DIR for a
#                                                #   machine without an index (the GPU machine)
#   PEER_WHEELS=DIR bash scripts/setup_peers.sh  # there: offline from DIR, with the machine's own
#                                                #   (CUDA) torch through --system-site-packages
set -euo pipefail
cd "$(dirname "$0")/.."
REQ=benchmarks/requirements-peers.txt
NODEPS=benchmarks/requirements-peers-nodeps.txt
if [ "${1:-}" = download ]; then
  DIR=${2:?usage: setup_peers.sh download DIR}
  PYV=${PEER_PYTHON_VERSION:-3.12}
  # every requirement but torch (the GPU machine has its own CUDA build)
  grep -v -e '^torch' -e '^#' -e '^$' $REQ > "$DIR.req" || true
  python3.11 -m pip download -q --only-binary :all: --python-version "$PYV" \
    --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d "$DIR" -r "$DIR.req"
  python3.11 -m pip download -q --no-deps -d "$DIR" -r $NODEPS
  rm "$DIR.req"
  ls -l "$DIR"
  exit 0
fi
VENV=${PEER_VENV:-.venv-peers}
if [ -n "${PEER_WHEELS:-}" ]; then  # offline, keeping the machine's torch
  [ -x "$VENV/bin/python" ] || python3 -m venv --system-site-packages "$VENV"
  grep -v -e '^torch' -e '^#' -e '^$' $REQ | "$VENV/bin/python" -m pip install -q --no-index \
    --find-links "$PEER_WHEELS" -r /dev/stdin
  "$VENV/bin/python" -m pip install -q --no-index --no-deps --find-links "$PEER_WHEELS" -r $NODEPS
else
  [ -x "$VENV/bin/python" ] || "${PYTHON:-python3.11}" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q -r $REQ
  "$VENV/bin/python" -m pip install -q --no-deps -r $NODEPS
fi
"$VENV/bin/python" -c "
import torch, faiss, memorizing_transformers_pytorch, block_recurrent_transformer_pytorch
from importlib.metadata import version
print('peers ready:', ', '.join(f'{p} {version(p)}' for p in ('torch', 'faiss-cpu',
      'memorizing-transformers-pytorch', 'block-recurrent-transformer-pytorch')))"
