"""Golden tensors of the ORIGINAL ELC-BERT (ltgoslo/elc-bert, its four model files) and
LTG-BERT (ltgoslo/ltg-bert, babylm/train/model.py), run once at pinned commits.

    git --git-dir=/work/.mirror/ltgoslo+elc-bert/repo archive 3152a70b | tar -x -C /tmp/elc-bert
    git --git-dir=/work/.mirror/ltgoslo+ltg-bert/repo archive 4fe9e6f2 | tar -x -C /tmp/ltg-bert
    python scripts/golden/make_elc_bert.py --elc-checkout /tmp/elc-bert --ltg-checkout /tmp/ltg-bert

The model files are pure torch: each is executed as a module of its own. Writes
tests/golden/elc_bert.pt: per variant the original's state dict, the inputs (batch-first ids,
a padding mask, the masked positions) and its outputs (every hidden state, batch-first, and the
MLM logits of the masked positions in the original's sequence-first order).
"""
import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _golden import check_commit, load_source, perturb_, provenance, shared_state  # noqa: E402

ELC_REPO, ELC_COMMIT = "ltgoslo/elc-bert", "3152a70b3ddd4a93e38ab4c7176e0adf80b4ba89"
LTG_REPO, LTG_COMMIT = "ltgoslo/ltg-bert", "4fe9e6f25a1857551581ea3a823aec703a2b0af6"
ELC_FILES = {v: f"models/model_elc_bert_{v}.py" for v in ("base", "zero", "normalized", "weighted_output")}
LTG_FILE = "babylm/train/model.py"

# configs/*.json keys; tiny sizes. Bucket 8 (exact up to ±4) so a 12-token input reaches the
# log-spaced buckets; max_position_embeddings 512 as both configs.
CONFIG = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=32,
              vocab_size=50, layer_norm_eps=1e-7, hidden_dropout_prob=0.1,
              attention_probs_dropout_prob=0.1, max_position_embeddings=512, position_bucket_size=8)
BATCH, SEQ_LEN, PAD = 2, 12, 1  # PAD: fairseq's Dictionary.pad(), which the plugin reads


def inputs():
    """Batch-first ids (no specials but the pad), the padding mask and the masked positions."""
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(4, CONFIG["vocab_size"], (BATCH, SEQ_LEN), generator=gen)
    tokens[1, 9:] = PAD
    masked = torch.rand(BATCH, SEQ_LEN, generator=gen) < 0.4
    masked &= tokens.ne(PAD)
    return tokens, tokens.eq(PAD), masked


@torch.no_grad()
def run_original(module, tokens, padding, masked):
    torch.manual_seed(0)
    model = module.Bert(SimpleNamespace(**CONFIG))
    perturb_(model, seed=2)
    model.eval()
    ids = tokens.t()  # the original is sequence-first: (T, B)
    states = model.get_contextualized(ids, padding)  # ELC: list of (T, B, d); LTG: the last one
    states = states if isinstance(states, list) else [states]
    labels = torch.where(masked, tokens, torch.full_like(tokens, -100)).t()  # (T, B)
    logits = model.classifier(states[-1], labels)  # (N, V), masked positions in (t, b) order
    # position_indices buffers (512 x 512 ids) are derived from the config: not stored
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("position_indices")}
    return {"state_dict": state,
            "hidden_states": [s.transpose(0, 1).contiguous() for s in states],  # (B, T, d) each
            "logits": logits}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--elc-checkout", type=Path, required=True, help=f"checkout of {ELC_REPO} at {ELC_COMMIT}")
    parser.add_argument("--ltg-checkout", type=Path, required=True, help=f"checkout of {LTG_REPO} at {LTG_COMMIT}")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "tests/golden/elc_bert.pt")
    args = parser.parse_args()
    check_commit(args.elc_checkout, ELC_COMMIT)
    check_commit(args.ltg_checkout, LTG_COMMIT)
    tokens, padding, masked = inputs()
    results = {variant: run_original(load_source(args.elc_checkout, path, f"elc_original_{variant}"),
                                     tokens, padding, masked)
               for variant, path in ELC_FILES.items()}
    results["none"] = run_original(load_source(args.ltg_checkout, LTG_FILE, "ltg_original"), tokens, padding, masked)
    states = shared_state({k: r["state_dict"] for k, r in results.items()})
    for key, result in results.items():
        result["state_dict"] = states[key]
    torch.save({"config": CONFIG, "tokens": tokens, "padding_mask": padding, "masked": masked,
                "variants": results,
                "provenance": [provenance(ELC_REPO, ELC_COMMIT, args.elc_checkout, list(ELC_FILES.values())),
                               provenance(LTG_REPO, LTG_COMMIT, args.ltg_checkout, [LTG_FILE])]}, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
