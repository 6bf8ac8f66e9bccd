"""Score any masked LM of the plugin on BLiMP minimal pairs by pseudo-log-likelihood.

    python -m fairseq_ext.eval.blimp --checkpoint-dir checkpoints/x --data-dir data-bin/x \
        --blimp ../shared/data/blimp-dev --out blimp.json

PLL(s) = sum_i log p(s_i | s with token i masked) (Salazar et al. 2020, "Masked Language Model
Scoring", arXiv:1910.14659), the BabyLM evaluation of masked LMs. A pair is right when the
grammatical sentence scores higher. All masked copies of several sentences go through one
forward pass; the head scores only the masked position of each copy.
"""
import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Dict, List

import torch

from fairseq_ext import hub


def sentence_ids(lm, sentence: str) -> torch.Tensor:
    return lm.encode(sentence)  # <s> pieces </s>


def masked_copies(ids: torch.Tensor, mask_idx: int):
    """(n, T) copies of ids with token i+1 masked in row i (the n real tokens), and targets."""
    positions = torch.arange(1, len(ids) - 1)
    copies = ids.repeat(len(positions), 1)
    copies[torch.arange(len(positions)), positions] = mask_idx
    return copies, positions, ids[positions]


@torch.no_grad()
def pseudo_log_likelihoods(lm, sentences: List[str], max_rows: int = 256) -> List[float]:
    """PLL of each sentence, batching the masked copies of several sentences per forward."""
    pad, mask_idx = lm.task.source_dictionary.pad(), lm.task.mask_idx
    scores, batch = [], []

    def flush():
        rows = [c for c, _, _ in batch]
        width = max(r.size(1) for r in rows)
        tokens = torch.cat([torch.nn.functional.pad(r, (0, width - r.size(1)), value=pad) for r in rows])
        masked = tokens.eq(mask_idx)
        logits, _ = lm.model(tokens.to(lm.device), features_only=False, masked_tokens=masked.to(lm.device))
        logp = torch.log_softmax(logits.float(), dim=-1).cpu()  # (rows, V), one per masked copy
        start = 0
        for copies, _, targets in batch:
            n = copies.size(0)
            scores.append(float(logp[torch.arange(start, start + n), targets].sum()))
            start += n
        batch.clear()

    for sentence in sentences:
        item = masked_copies(sentence_ids(lm, sentence), mask_idx)
        if batch and sum(c.size(0) for c, _, _ in batch) + item[0].size(0) > max_rows:
            flush()
        batch.append(item)
    if batch:
        flush()
    return scores


@torch.no_grad()
def pseudo_log_likelihood_reference(lm, sentence: str) -> float:
    """One forward per masked token: the slow definition, for tests."""
    ids = sentence_ids(lm, sentence)
    total = 0.0
    for i in range(1, len(ids) - 1):
        tokens = ids.clone()
        tokens[i] = lm.task.mask_idx
        logits, _ = lm.model(tokens.unsqueeze(0).to(lm.device), features_only=False,
                             masked_tokens=tokens.eq(lm.task.mask_idx).unsqueeze(0).to(lm.device))
        total += float(torch.log_softmax(logits.float(), dim=-1)[0, ids[i]])
    return total


def read_pairs(path: Path, limit: int = 0) -> List[dict]:
    pairs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for p in pairs:
        if "sentence_good" not in p or "sentence_bad" not in p:
            raise ValueError(f"{path}: every line needs sentence_good and sentence_bad")
    return pairs[:limit] if limit else pairs


def evaluate(lm, blimp_dir: Path, limit: int = 0, max_rows: int = 256) -> Dict:
    files = sorted(Path(blimp_dir).glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"--blimp: no *.jsonl files in {blimp_dir}")
    paradigms, fields = {}, defaultdict(list)
    for path in files:
        pairs = read_pairs(path, limit)
        good = pseudo_log_likelihoods(lm, [p["sentence_good"] for p in pairs], max_rows)
        bad = pseudo_log_likelihoods(lm, [p["sentence_bad"] for p in pairs], max_rows)
        correct = [g > b for g, b in zip(good, bad)]
        name = pairs[0].get("UID", path.stem)
        paradigms[name] = {"accuracy": sum(correct) / len(correct), "pairs": len(correct),
                           "field": pairs[0].get("field", "unknown")}
        fields[paradigms[name]["field"]] += correct
    all_correct = [c for cs in fields.values() for c in cs]
    return {"paradigms": paradigms,
            "fields": {f: {"accuracy": sum(c) / len(c), "pairs": len(c)} for f, c in sorted(fields.items())},
            "overall": {"accuracy": sum(all_correct) / len(all_correct), "pairs": len(all_correct)}}


def print_table(result: Dict, out=sys.stdout):
    print("| paradigm | field | pairs | accuracy |\n|---|---|---|---|", file=out)
    for name, r in result["paradigms"].items():
        print(f"| {name} | {r['field']} | {r['pairs']} | {100 * r['accuracy']:.1f} |", file=out)
    for name, r in result["fields"].items():
        print(f"| **{name}** (field) | | {r['pairs']} | {100 * r['accuracy']:.1f} |", file=out)
    print(f"| **overall** | | {result['overall']['pairs']} | {100 * result['overall']['accuracy']:.1f} |", file=out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint-dir", required=True)
    p.add_argument("--checkpoint", default="checkpoint_best.pt")
    p.add_argument("--data-dir", help="dir with dict.txt and sentencepiece.bpe.model (default: checkpoint dir)")
    p.add_argument("--blimp", required=True, help="directory of BLiMP *.jsonl files")
    p.add_argument("--out", help="write the accuracies as JSON here")
    p.add_argument("--limit", type=int, default=0, help="score only the first N pairs of each paradigm")
    p.add_argument("--max-rows", type=int, default=256, help="masked copies per forward pass")
    p.add_argument("--cpu", action="store_true", help="stay on CPU even if CUDA is available")
    args = p.parse_args(argv)
    lm = hub.from_pretrained(args.checkpoint_dir, args.checkpoint, args.data_dir)
    if torch.cuda.is_available() and not args.cpu:
        lm.cuda()
    result = evaluate(lm, Path(args.blimp), args.limit, args.max_rows)
    result["checkpoint"] = str(Path(args.checkpoint_dir) / args.checkpoint)
    print_table(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
