r"""BLiMP minimal pairs scored by pseudo-log-likelihood, for any masked LM of this project.

Warstadt et al. 2020 (BLiMP, TACL); PLL as Salazar et al. 2020 ("Masked Language Model
Scoring", ACL): mask each real token in turn and sum log p(true token | the rest). A pair is
correct when ``sentence_good`` scores higher. Batched: every masked copy of a sentence is a row,
rows of many sentences share one forward (up to --max-tokens), and the model's head runs on the
masked positions only (``masked_tokens``).

    python -m fairseq_ext.eval.blimp --checkpoint-dir DIR --checkpoint checkpoint_best.pt \
        [--data-dir DICTDIR] --blimp ../shared/data/blimp-dev --out results.json
"""
import argparse
import json
import logging
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import torch
import torch.nn.functional as F

from fairseq_ext import hub

logger = logging.getLogger("fairseq_ext.eval.blimp")


def read_pairs(blimp: Path) -> List[dict]:
    """All pairs of a BLiMP JSON-lines file, or of every ``*.jsonl`` in a directory."""
    files = sorted(blimp.glob("*.jsonl")) if blimp.is_dir() else [blimp]
    if not files:
        raise FileNotFoundError(f"--blimp {blimp}: no .jsonl files")
    return [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]


def mask_id(lm) -> int:
    return getattr(lm.task, "mask_idx", None) or lm.task.source_dictionary.index("<mask>")


def masked_copies(tokens: torch.Tensor, mask: int):
    """(n, T) copies of ``tokens`` (<s> w1..wn </s>), copy i with w_i masked, and the (n, T) mask."""
    n = tokens.numel() - 2
    positions = torch.arange(1, n + 1)
    copies = tokens.repeat(n, 1)
    where = torch.zeros_like(copies, dtype=torch.bool)
    where[torch.arange(n), positions] = True
    return copies.masked_fill(where, mask), where


@torch.no_grad()
def pseudo_log_likelihoods(lm, sentences: List[str], max_tokens: int = 8192) -> List[float]:
    """PLL of each sentence, batching the masked copies of many sentences per forward."""
    encoded = [lm.encode(s) for s in sentences]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    pad, mask = lm.task.source_dictionary.pad(), mask_id(lm)
    scores = [0.0] * len(encoded)
    device = next(lm.model.parameters()).device
    batch: List[int] = []

    def flush():
        rows, wheres, owners = [], [], []
        width = max(len(encoded[i]) for i in batch)
        for i in batch:
            copies, where = masked_copies(encoded[i], mask)
            extra = width - copies.size(1)
            rows.append(F.pad(copies, (0, extra), value=pad))
            wheres.append(F.pad(where, (0, extra), value=False))
            owners += [i] * copies.size(0)
        src, where = torch.cat(rows).to(device), torch.cat(wheres).to(device)  # (R, width)
        logits = lm.model(src, masked_tokens=where)[0]  # (R, V): one masked position per row
        true = torch.cat([encoded[i][1:-1] for i in batch]).to(device)
        logp = logits.float().log_softmax(-1).gather(-1, true.unsqueeze(-1)).squeeze(-1)
        for owner, value in zip(owners, logp.tolist()):
            scores[owner] += value

    for i in order:
        rows_after = sum(len(encoded[j]) - 2 for j in batch) + len(encoded[i]) - 2
        if batch and rows_after * len(encoded[i]) > max_tokens:
            flush()
            batch = []
        batch.append(i)
    if batch:
        flush()
    return scores


@torch.no_grad()
def pseudo_log_likelihood_reference(lm, sentence: str) -> float:
    """One unpadded forward per masked token (slow), for tests of the batched path."""
    tokens = lm.encode(sentence)
    total = 0.0
    for pos in range(1, tokens.numel() - 1):
        src = tokens.clone().unsqueeze(0)  # (1, T)
        src[0, pos] = mask_id(lm)
        logits = lm.model(src, masked_tokens=src.eq(mask_id(lm)))[0]  # (1, V)
        total += logits[0].float().log_softmax(-1)[tokens[pos]].item()
    return total


def first_per_paradigm(pairs: List[dict], limit: int) -> List[dict]:
    seen: Dict[str, int] = defaultdict(int)
    kept = []
    for pair in pairs:
        seen[pair.get("UID")] += 1
        if seen[pair.get("UID")] <= limit:
            kept.append(pair)
    return kept


def field_name(pair: dict) -> str:
    """BLiMP's data spells one field both ``syntax/semantics`` and ``syntax_semantics``: one name."""
    return pair.get("field", "unknown").replace("/", "_")


def accuracies(pairs: List[dict], good: List[float], bad: List[float]) -> Dict:
    """Accuracy per paradigm (UID), per field and overall, with pair counts."""
    per_paradigm, per_field = defaultdict(list), defaultdict(list)
    for pair, g, b in zip(pairs, good, bad):
        hit = float(g > b)
        per_paradigm[pair.get("UID", "unknown")].append(hit)
        per_field[field_name(pair)].append(hit)
    summary = lambda hits: {"accuracy": sum(hits) / len(hits), "pairs": len(hits)}
    paradigms = {k: summary(v) for k, v in sorted(per_paradigm.items())}
    return {"overall": summary([h for v in per_paradigm.values() for h in v]),
            "fields": {k: summary(v) for k, v in sorted(per_field.items())},
            "paradigms": paradigms}


def evaluate(lm, pairs: List[dict], max_tokens: int = 8192) -> Dict:
    good = pseudo_log_likelihoods(lm, [p["sentence_good"] for p in pairs], max_tokens)
    bad = pseudo_log_likelihoods(lm, [p["sentence_bad"] for p in pairs], max_tokens)
    return accuracies(pairs, good, bad)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint-dir", required=True, help="directory of the checkpoint")
    parser.add_argument("--checkpoint", default="checkpoint_best.pt", help="checkpoint file name in --checkpoint-dir")
    parser.add_argument("--data-dir", default=None, help="dir with dict.txt (and sentencepiece.bpe.model); default: --checkpoint-dir")
    parser.add_argument("--blimp", required=True, type=Path, help="a BLiMP .jsonl file or a directory of them")
    parser.add_argument("--out", type=Path, default=None, help="write the accuracies as JSON here")
    parser.add_argument("--user-dir", default=hub.USER_DIR, help="fairseq user dir (default: this plugin)")
    parser.add_argument("--max-tokens", type=int, default=8192, help="tokens per forward (rows x width)")
    parser.add_argument("--limit", type=int, default=None, help="first N pairs of each paradigm (quick runs)")
    parser.add_argument("--cpu", action="store_true", help="stay on CPU even when CUDA is available")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    lm = hub.from_pretrained(args.checkpoint_dir, args.checkpoint, args.data_dir, user_dir=args.user_dir)
    if torch.cuda.is_available() and not args.cpu:
        lm = lm.cuda()
    pairs = read_pairs(args.blimp)
    if args.limit:
        pairs = first_per_paradigm(pairs, args.limit)
    result = evaluate(lm, pairs, args.max_tokens)
    for name, r in result["paradigms"].items():
        print(f"paradigm {name:50s} {100 * r['accuracy']:6.2f}  ({r['pairs']} pairs)")
    for name, r in result["fields"].items():
        print(f"field    {name:50s} {100 * r['accuracy']:6.2f}  ({r['pairs']} pairs)")
    print(f"overall  {'':50s} {100 * result['overall']['accuracy']:6.2f}  ({result['overall']['pairs']} pairs)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
