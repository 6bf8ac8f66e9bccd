"""Golden tensors of the ORIGINAL GLOM for text (ArneBinder/GlomImpl,
src/models/glom/modeling_glom.py) in both aggregation versions, run once at pinned commits:
``paper`` from master and ``tridiagonal`` from branch model_learns_well (ALGORITHMS.md §1.1).

    git --git-dir=/work/.mirror/ArneBinder+GlomImpl/repo archive d7fd9047 | tar -x -C /tmp/glom-paper
    git --git-dir=/work/.mirror/ArneBinder+GlomImpl/repo archive 92067571 | tar -x -C /tmp/glom-tridiagonal
    python scripts/golden/make_glom.py --paper-checkout /tmp/glom-paper --tridiagonal-checkout /tmp/glom-tridiagonal

The model file imports HuggingFace transformers (4.x of March 2021), which is not installed:
``install_transformers_stub`` puts a minimal stand-in for the few names it imports into
sys.modules (docstring decorators that return the function unchanged, a PreTrainedModel that
applies ``_init_weights`` and ties the output embedding as HF's ``init_weights``, a config
that stores its keyword arguments, and HF's ``gelu_new`` formula). Nothing of the GLOM code
itself is replaced. Writes tests/golden/glom.pt: per version the original's state dict, its
config, the inputs and outputs (every hidden state and the MLM logits, batch-first).
"""
import argparse
import importlib
import logging
import math
import sys
import types
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _golden import check_commit, perturb_, provenance, shared_state  # noqa: E402

REPO = "ArneBinder/GlomImpl"
COMMITS = {"paper": "d7fd9047f06b69f44125e86cf1b1502c63e7ef39",  # master tip (aggregation as 9ed8118)
           "tridiagonal": "92067571883256e1a8e0069a02f6b434302eb934"}  # model_learns_well tip
FILES = ["src/models/glom/modeling_glom.py", "src/models/glom/configuration_glom.py"]

# configs/glom/*.json keys, tiny sizes: 4 levels of width 8, 2 time steps, E 16. pad_token_id is
# fairseq's Dictionary.pad(), which the plugin reads. attention_temperature (read by master
# with getattr, default 1) is set to 0.7 so that τ is exercised; model_learns_well has no τ.
CONFIG = dict(vocab_size=40, embedding_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, hidden_act="gelu_new", hidden_dropout_prob=0.0,
              attention_probs_dropout_prob=0.0, max_position_embeddings=16, type_vocab_size=2,
              layer_norm_eps=1e-12, pad_token_id=1)
TEMPERATURE = {"paper": 0.7, "tridiagonal": 1.0}
BATCH, SEQ_LEN = 2, 10


def gelu_new(x):
    """HF transformers.activations.gelu_new (the tanh approximation of GELU)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def install_transformers_stub():
    """Minimal ``transformers`` modules for the names modeling_glom / configuration_glom import."""
    def module(name, **attrs):
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        mod.__path__ = []  # a package, so that submodules import
        sys.modules[name] = mod
        return mod

    def keep_docstring(*args, **kwargs):
        return lambda fn: fn

    class ModelOutput(OrderedDict):
        pass

    class PretrainedConfig:
        def __init__(self, **kwargs):
            self.output_attentions = False
            self.output_hidden_states = False
            self.use_return_dict = False  # tuples out
            self.chunk_size_feed_forward = 0
            self.num_labels = 2
            self.__dict__.update(kwargs)

    class PreTrainedModel(nn.Module):
        def __init__(self, config, *args, **kwargs):
            super().__init__()
            self.config = config

        @property
        def dtype(self):
            return next(self.parameters()).dtype

        def get_output_embeddings(self):
            return None

        def get_head_mask(self, head_mask, num_hidden_layers):
            if head_mask is not None:
                raise NotImplementedError("head_mask is not used by the golden run")
            return [None] * num_hidden_layers

        def init_weights(self):  # HF 4.x: _init_weights everywhere, then tie the output embedding
            self.apply(self._init_weights)
            output = self.get_output_embeddings()
            if output is not None:
                output.weight = self.get_input_embeddings().weight

    def unused(*args, **kwargs):
        raise NotImplementedError("not used by the golden run")

    outputs = {name: type(name, (ModelOutput,), {}) for name in (
        "BaseModelOutput", "BaseModelOutputWithPooling", "MaskedLMOutput", "MultipleChoiceModelOutput",
        "QuestionAnsweringModelOutput", "SequenceClassifierOutput", "TokenClassifierOutput")}
    module("transformers")
    module("transformers.activations", ACT2FN={"gelu_new": gelu_new})
    module("transformers.file_utils", ModelOutput=ModelOutput, add_code_sample_docstrings=keep_docstring,
           add_start_docstrings=keep_docstring, add_start_docstrings_to_model_forward=keep_docstring,
           replace_return_docstrings=keep_docstring)
    module("transformers.modeling_outputs", **outputs)
    module("transformers.modeling_utils", PreTrainedModel=PreTrainedModel, apply_chunking_to_forward=unused,
           find_pruneable_heads_and_indices=unused, prune_linear_layer=unused)
    module("transformers.utils", logging=types.SimpleNamespace(get_logger=logging.getLogger))
    module("transformers.configuration_utils", PretrainedConfig=PretrainedConfig)


def import_glom(checkout: Path, package: str):
    """src/models/glom of a checkout as package ``package`` (modeling_glom imports .configuration_glom)."""
    pkg = types.ModuleType(package)
    pkg.__path__ = [str(Path(checkout) / "src/models/glom")]
    sys.modules[package] = pkg
    return importlib.import_module(f"{package}.modeling_glom")


def inputs():
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(4, CONFIG["vocab_size"], (BATCH, SEQ_LEN), generator=gen)
    tokens[1, 7:] = CONFIG["pad_token_id"]
    return tokens, tokens.ne(CONFIG["pad_token_id"]).long()  # HF attention_mask: 1 = attend


@torch.no_grad()
def run_original(modeling, version, tokens, attention_mask):
    config = modeling.GlomConfig(**CONFIG, attention_temperature=TEMPERATURE[version])
    torch.manual_seed(0)
    model = modeling.GlomForMaskedLM(config)
    perturb_(model, seed=2, matrices=True)  # HF init N(0, 0.02) would make the level projections tiny
    model.eval()
    logits, hidden_states = model(input_ids=tokens, attention_mask=attention_mask, output_hidden_states=True)
    return {"state_dict": model.state_dict(), "temperature": TEMPERATURE[version],
            "hidden_states": list(hidden_states),  # step 0 .. t, each (B, T, d)
            "logits": logits}  # (B, T, V)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paper-checkout", type=Path, required=True, help=f"checkout of {REPO} at {COMMITS['paper']}")
    parser.add_argument("--tridiagonal-checkout", type=Path, required=True,
                        help=f"checkout of {REPO} at {COMMITS['tridiagonal']}")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "tests/golden/glom.pt")
    args = parser.parse_args()
    checkouts = {"paper": args.paper_checkout, "tridiagonal": args.tridiagonal_checkout}
    install_transformers_stub()
    tokens, attention_mask = inputs()
    results, origin = {}, []
    for version, checkout in checkouts.items():
        check_commit(checkout, COMMITS[version])
        results[version] = run_original(import_glom(checkout, f"glom_{version}"), version, tokens, attention_mask)
        origin.append(provenance(REPO, COMMITS[version], checkout, FILES))
    states = shared_state({k: r["state_dict"] for k, r in results.items()})
    for key, result in results.items():
        result["state_dict"] = states[key]
    torch.save({"config": CONFIG, "tokens": tokens, "attention_mask": attention_mask, "versions": results,
                "provenance": origin}, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
