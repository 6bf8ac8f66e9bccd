"""Golden tensors of the ORIGINAL EIFY/fairseq (a fairseq fork): its ALiBi bias, its CLAP
head and whole RoBERTa models (ALiBi, CLAP, zero masking), run once at a pinned commit.

    git --git-dir=/work/.mirror/EIFY+fairseq/repo archive 5d9ddfe7 | tar -x -C /tmp/eify-fairseq
    python scripts/golden/make_roberta_ext.py --checkout /tmp/eify-fairseq   # needs fairseq installed

The fork cannot be imported whole: it would shadow the installed fairseq, and its 2022
dataclass configs do not import on Python 3.11. So:

* pieces: the function ``alibi`` of fairseq/utils.py and the class ``ClapHead`` of
  fairseq/models/roberta/model.py are cut out with ``ast`` and executed alone, with torch,
  math, nn and F (the names they use) in their namespace;
* whole models (``fork_roberta``): the fork's three patched model files
  (fairseq/modules/transformer_layer.py, fairseq/models/transformer/transformer_encoder.py,
  fairseq/models/roberta/model.py) are executed as modules on top of the installed fairseq
  (upstream code, which the fork did not change for these models: MultiheadAttention, LayerNorm,
  RobertaLMHead's pieces). Three links are redirected to the fork's own code: the encoder's
  ``transformer_layer`` is the fork's module, its ``utils.alibi`` the fork's function, and its
  ``TransformerConfig.from_namespace`` copies the fork's two extra fields (encoder alibi,
  alibi_asymmetrical) from the arguments. The ``register_model*`` decorators are dropped, so
  that the fork's "roberta" does not clash with the installed one.

Writes tests/golden/roberta_ext.pt.
"""
import argparse
import ast
import importlib.util
import math
import sys
import types
from argparse import Namespace
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _golden import check_commit, perturb_, provenance  # noqa: E402

REPO, COMMIT = "EIFY/fairseq", "5d9ddfe79cf42fc68aa75089babcef7aa1ade085"
UTILS, ROBERTA = "fairseq/utils.py", "fairseq/models/roberta/model.py"
LAYER, ENCODER = "fairseq/modules/transformer_layer.py", "fairseq/models/transformer/transformer_encoder.py"
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


REGISTRATION = ("register_model", "register_model_architecture")


def exec_fork_file(checkout: Path, relative_path: str, module_name: str, package: str):
    """Execute one fork file as module ``module_name`` (relative imports resolve in the installed
    ``package``), without its model registration decorators."""
    path = Path(checkout) / relative_path
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            node.decorator_list = [d for d in node.decorator_list
                                   if not (isinstance(d, ast.Call) and getattr(d.func, "id", None) in REGISTRATION)]
    module = types.ModuleType(module_name)
    module.__file__, module.__package__ = str(path), package
    sys.modules[module_name] = module
    exec(compile(tree, str(path), "exec"), module.__dict__)
    return module


def fork_roberta(checkout: Path):
    """The fork's RoBERTa model module, wired to the fork's encoder and layer (see the docstring)."""
    from fairseq import utils as installed_utils
    from fairseq.models.transformer import TransformerConfig

    layer = exec_fork_file(checkout, LAYER, "eify_transformer_layer", "fairseq.modules")
    encoder = exec_fork_file(checkout, ENCODER, "eify_transformer_encoder", "fairseq.models.transformer")
    roberta = exec_fork_file(checkout, ROBERTA, "eify_roberta", "fairseq.models.roberta")

    class ForkConfig:
        @staticmethod
        def from_namespace(args):
            cfg = TransformerConfig.from_namespace(args)
            cfg.encoder.alibi = args.encoder_alibi  # fields of the fork's EncDecBaseConfig
            cfg.encoder.alibi_asymmetrical = args.encoder_alibi_asymmetrical
            return cfg

    utils = types.ModuleType("eify_utils")
    utils.__dict__.update(installed_utils.__dict__)
    utils.alibi = definition(checkout, UTILS, "alibi")
    encoder.transformer_layer, encoder.utils, encoder.TransformerConfig = layer, utils, ForkConfig
    roberta.TransformerEncoder = encoder.TransformerEncoder
    return roberta


# The fork's recipes (examples/roberta/config/pretraining/*.yaml) in its own flag names, tiny.
FORK_VARIANTS = {
    "zero_clap": dict(encoder_alibi=True, encoder_alibi_asymmetrical=True, no_token_positional_embeddings=True,
                      contrastive_pretraining=True, zero_masking=True, layernorm_embedding=False,
                      no_scale_embedding=False),
    "learned_clap": dict(contrastive_pretraining=True, layernorm_embedding=False),
    "alibi": dict(encoder_alibi=True, encoder_alibi_asymmetrical=True, no_token_positional_embeddings=True,
                  layernorm_embedding=True),
}
FORK_SIZE = dict(encoder_layers=2, encoder_embed_dim=16, encoder_ffn_embed_dim=32, encoder_attention_heads=4,
                 max_positions=12, dropout=0.0, attention_dropout=0.0)
FORK_VOCAB, FORK_SEQ_LEN = 24, 10  # dictionary size without <mask>


def fork_dictionary(zero_masking: bool):
    """FORK_VOCAB symbols, then the <mask> that the masked_lm task adds, except under zero
    masking (the fork's omit_mask: the mask id is len(dictionary), no row)."""
    from fairseq.data import Dictionary

    dictionary = Dictionary()
    for i in range(FORK_VOCAB - len(dictionary)):
        dictionary.add_symbol(f"word{i}")
    if not zero_masking:
        dictionary.add_symbol("<mask>")
    return dictionary


@torch.no_grad()
def fork_case(roberta, variant):
    """Inputs with padding (and mask ids = len(dict) for zero masking), the state dict, features,
    every inner state (T, B, C) and the logits of the masked positions."""
    dictionary = fork_dictionary(FORK_VARIANTS[variant].get("zero_masking", False))
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(4, FORK_VOCAB, (BATCH, FORK_SEQ_LEN), generator=gen)
    masked = torch.rand(BATCH, FORK_SEQ_LEN, generator=gen) < 0.3
    tokens[1, 7:] = dictionary.pad()
    masked[1, 7:] = False
    tokens[masked] = FORK_VOCAB  # <mask>: its row, or under zero masking the id len(dictionary)
    args = Namespace(**FORK_SIZE, **FORK_VARIANTS[variant])
    torch.manual_seed(0)
    model = roberta.RobertaModel.build_model(args, Namespace(source_dictionary=dictionary))
    perturb_(model, seed=2)
    model.eval()
    features, extra = model(tokens, features_only=True, return_all_hiddens=True)
    logits, _ = model(tokens, masked_tokens=masked)
    return {"options": FORK_VARIANTS[variant], "state_dict": model.state_dict(), "tokens": tokens,
            "masked": masked, "features": features, "inner_states": extra["inner_states"], "logits": logits}


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
    roberta = fork_roberta(args.checkout)
    alibi_cases = {(heads, asymmetrical): alibi(heads, MAX_POSITIONS, asymmetrical)  # (H, P, P)
                   for heads in HEADS for asymmetrical in (False, True)}
    torch.save({"alibi": alibi_cases, "alibi_max_positions": MAX_POSITIONS,
                "clap": clap_case(definition(args.checkout, ROBERTA, "ClapHead")),
                "models": {variant: fork_case(roberta, variant) for variant in FORK_VARIANTS},
                "model_size": FORK_SIZE,
                "provenance": [provenance(REPO, COMMIT, args.checkout, [UTILS, ROBERTA, LAYER, ENCODER])]}, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
