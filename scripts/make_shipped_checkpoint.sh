#!/usr/bin/env bash
# Rebuild checkpoints/pg-sample-zero-clap-small, the checkpoint shipped with the repository: the
# quickstart (400 updates), then the quickstart again with more updates in the same save dir for
# each later stage, which fairseq-train resumes from checkpoint_last.pt (Adam state kept; the
# polynomial decay restarts and ends at the stage's last update). Only what fill_mask needs is
# kept: fp16 weights (no optimizer state), dict.txt and the sentencepiece model.
set -euo pipefail
cd "$(dirname "$0")/.."
STAGES=${STAGES:-"400 800 1200 1800 2400"}
WORK=${WORK:-checkpoints/pg-sample-zero-clap-small-train}
OUT=checkpoints/pg-sample-zero-clap-small
for updates in $STAGES; do
  QUICKSTART_UPDATES=$updates QUICKSTART_SAVE=$WORK bash scripts/quickstart.sh
done
mkdir -p $OUT
cp data-bin/pg-sample/dict.txt data-bin/pg-sample/sentencepiece.bpe.model $OUT/
.venv/bin/python - "$WORK/checkpoint_best.pt" "$OUT/model.pt" <<'PY'
import sys

import torch

state = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
state.pop("last_optimizer_state")  # Adam's moments: twice the weights, not needed to fill masks
halves = {}  # one fp16 copy per storage: the tied embedding and CLAP-head weight stay one tensor
state["model"] = {k: halves.setdefault(v.data_ptr(), v.half()) if v.is_floating_point() else v
                  for k, v in state["model"].items()}
torch.save(state, sys.argv[2])  # loads into the fp32 model unchanged (load_state_dict casts)
PY
ls -l $OUT
