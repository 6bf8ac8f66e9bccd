"""Golden tensors of the ORIGINAL ALiBi bias and CLAP head of EIFY/fairseq (a fairseq fork),
run once at a pinned commit.

    git --git-dir=/work/.mirror/EIFY+fairseq/repo archive 5d9ddfe7 | tar -x -C /tmp/eify-fairseq
    python scripts/golden/make_roberta_ext.py --checkout /tmp/eify-fairseq

The fork cannot be imported whole: it would shadow the installed fairseq, and its 2022
dataclass configs do not even import on Python 3.11. So only the two definitions are taken
from its source files: the function ``alibi`` of fairseq/utils.py and the class ``ClapHead`` of
fairseq/models/roberta/model.py are cut out with ``ast`` and executed alone, with torch, math,
nn and F (the names they use) in their namespace. Writes tests/golden/roberta_ext.pt: the bias
for several head counts (powers of two and not), symmetric and asymmetric, and the CLAP head's
logits for given features, tied weight and β.
"""
import argparse
import ast
import math
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _golden import check_commit, provenance  # noqa: E402

REPO, COMMIT = "EIFY/fairseq", "5d9ddfe79cf42fc68aa75089babcef7aa1ade085"
UTILS, ROBERTA = "fairseq/utils.py", "fairseq/models/roberta/model.py"
HEADS = (1, 2, 3, 4, 5, 6, 8, 12, 16)  # 12 (base) and 16 (large) as published; 3, 5, 6, 12 not powers of 2
MAX_POSITIONS = 8
VOCAB, DIM, BATCH, SEQ_LEN = 30, 16, 2, 8


def definition(checkout: Path, relative_path: str, name: str):
    """Execute only the top-level def/class ``name`` of a source file; return the object."""
    source = (Path(checkout) / relative_path).read_text()
    nodes = [n for n in ast.parse(source).body
             if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name]
    if len(nodes) != 1:
        raise ValueError(f"expected one definition of {name} in {relative_path}, found {len(nodes)}")
    namespace = {"torch": torch, "math": math, "nn": nn, "F": F}
    exec(compile(ast.get_source_segment(source, nodes[0]), f"{relative_path}:{name}", "exec"), namespace)
    return namespace[name]


@torch.no_grad()
def clap_case(clap_head_class):
    """Features, masked positions, the tied embedding (rows of different norms) and β != 1."""
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(BATCH, SEQ_LEN, DIM, generator=gen)
    masked = torch.rand(BATCH, SEQ_LEN, generator=gen) < 0.4
    weight = nn.Parameter(torch.randn(VOCAB, DIM, generator=gen) * torch.rand(VOCAB, 1, generator=gen) * 3)
    head = clap_head_class(1.7, weight)  # ClapHead(initial_beta, weight)
    return {"features": features, "masked": masked, "weight": weight.detach(), "beta": head.beta.detach(),
            "logits_masked": head(features, masked), "logits_all": head(features)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkout", type=Path, required=True, help=f"checkout of {REPO} at {COMMIT}")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "tests/golden/roberta_ext.pt")
    args = parser.parse_args()
    check_commit(args.checkout, COMMIT)
    alibi = definition(args.checkout, UTILS, "alibi")
    alibi_cases = {(heads, asymmetrical): alibi(heads, MAX_POSITIONS, asymmetrical)  # (H, P, P)
                   for heads in HEADS for asymmetrical in (False, True)}
    torch.save({"alibi": alibi_cases, "alibi_max_positions": MAX_POSITIONS,
                "clap": clap_case(definition(args.checkout, ROBERTA, "ClapHead")),
                "provenance": [provenance(REPO, COMMIT, args.checkout, [UTILS, ROBERTA])]}, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
