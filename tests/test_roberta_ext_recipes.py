"""The hydra recipes of roberta_ext keep the EIFY/fairseq fork's hyper-parameters.

The tables below are data copied from the fork at commit
5d9ddfe79cf42fc68aa75089babcef7aa1ade085 (github.com/EIFY/fairseq):
examples/roberta/config/pretraining/{baseline,alibi,learned_clap,sinusoidal,zero_clap}_pile.yaml,
zero_clap_self_masking.yaml, and the defaults of fairseq/models/roberta/model.py
``base_architecture`` for the model options a file leaves unset. A recipe that drifts from them
fails here; the plugin's option names are mapped from the fork's by ``plugin_model_options``.
"""
from argparse import Namespace
from pathlib import Path

import pytest
from fairseq.models import ARCH_CONFIG_REGISTRY
from omegaconf import OmegaConf

import fairseq_ext  # noqa: F401  (registers the archs)

RECIPES = Path(__file__).resolve().parents[1] / "hydra_configs" / "roberta_ext"

# optimisation and data of the fork's Pile recipes (*_pile.yaml), identical in the five files
FORK_PILE = {
    "task.tokens_per_sample": 2048, "model.max_positions": 2048,
    "dataset.batch_size": 4, "optimization.update_freq": [16], "optimization.lr": [0.0006],
    "optimization.max_update": 133082, "optimization.max_epoch": 1, "optimization.clip_norm": 0,
    "lr_scheduler._name": "cosine", "lr_scheduler.warmup_updates": 10000,
    "lr_scheduler.lr_period_updates": 146390, "lr_scheduler.lr_shrink": 1.0, "lr_scheduler.min_lr": 0.00006,
    "optimizer._name": "adam", "optimizer.weight_decay": 0.01, "optimizer.adam_betas": "(0.9,0.98)",
    "optimizer.adam_eps": 1e-06,
    "dataset.skip_invalid_size_inputs_valid_test": True, "checkpoint.save_interval_updates": 5000,
    "common.log_interval": 500, "criterion": "masked_lm",
}
# zero_clap_self_masking.yaml (the WikiText-103 recipes of base.yaml); total_num_update is
# fairseq's default, optimization.max_update
FORK_WIKITEXT = {
    "task.tokens_per_sample": 512, "model.max_positions": 512,
    "dataset.batch_size": 16, "optimization.update_freq": [16], "optimization.lr": [0.0005],
    "optimization.max_update": 125000, "optimization.clip_norm": 0,
    "lr_scheduler._name": "polynomial_decay", "lr_scheduler.warmup_updates": 10000,
    "lr_scheduler.total_num_update": 125000,
    "optimizer._name": "adam", "optimizer.weight_decay": 0.01, "optimizer.adam_betas": "(0.9,0.98)",
    "optimizer.adam_eps": 1e-06, "common.log_interval": 200, "criterion": "masked_lm",
}
# the fork's roberta base_architecture for what a file leaves unset
FORK_MODEL_DEFAULTS = {
    "encoder_layers": 12, "encoder_embed_dim": 768, "encoder_ffn_embed_dim": 3072, "encoder_attention_heads": 12,
    "dropout": 0.1, "attention_dropout": 0.1, "no_token_positional_embeddings": False, "encoder_learned_pos": True,
    "encoder_alibi": False, "encoder_alibi_asymmetrical": False, "layernorm_embedding": True,
    "no_scale_embedding": True, "contrastive_pretraining": False, "initial_beta": 1.0, "zero_masking": False,
    "mask_prob": 0.0, "l2norm_embedding": True,
}
# per recipe: (fork file, its data/optimisation table, its model section, its task options)
FORK = {
    "baseline": ("baseline_pile.yaml", FORK_PILE, {}, {}),
    "alibi": ("alibi_pile.yaml", FORK_PILE,
              {"no_token_positional_embeddings": True, "encoder_alibi": True, "encoder_alibi_asymmetrical": True}, {}),
    "learned_clap": ("learned_clap_pile.yaml", FORK_PILE,
                     {"dropout": 0.0, "attention_dropout": 0.1, "layernorm_embedding": False,
                      "contrastive_pretraining": True, "initial_beta": 1.0}, {}),
    "sinusoidal": ("sinusoidal_pile.yaml", FORK_PILE, {"encoder_learned_pos": False}, {}),
    "zero_clap": ("zero_clap_pile.yaml", FORK_PILE,
                  {"dropout": 0.0, "attention_dropout": 0.1, "no_token_positional_embeddings": True,
                   "encoder_alibi": True, "encoder_alibi_asymmetrical": True, "layernorm_embedding": False,
                   "contrastive_pretraining": True, "initial_beta": 1.0, "zero_masking": True,
                   "no_scale_embedding": False}, {"omit_mask": True}),
    "zero_clap_self_masking": ("zero_clap_self_masking.yaml", FORK_WIKITEXT,
                               {"dropout": 0.0, "attention_dropout": 0.0, "no_token_positional_embeddings": True,
                                "encoder_alibi": True, "encoder_alibi_asymmetrical": True,
                                "layernorm_embedding": False, "contrastive_pretraining": True, "initial_beta": 1.0,
                                "zero_masking": True, "mask_prob": 0.15}, {"omit_mask": True, "mask_prob": 0.0}),
}


def plugin_model_options(fork_model: dict) -> dict:
    """The fork's model flags (over its defaults) as roberta_ext options."""
    m = {**FORK_MODEL_DEFAULTS, **fork_model}
    positions = "none" if m["no_token_positional_embeddings"] else "learned" if m["encoder_learned_pos"] else "sinusoidal"
    options = {key: m[key] for key in ("encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim",
                                       "encoder_attention_heads", "dropout", "attention_dropout", "initial_beta")}
    options.update(positions=positions, alibi=m["encoder_alibi"], clap_head=m["contrastive_pretraining"],
                   zero_mask=m["zero_masking"], self_mask_prob=m["mask_prob"], embed_layernorm=m["layernorm_embedding"],
                   scale_embedding=not m["no_scale_embedding"],
                   # the fork normalises the input embeddings only with its CLAP head
                   l2norm_embedding=m["contrastive_pretraining"] and m["l2norm_embedding"])
    if m["encoder_alibi"]:
        options["alibi_asymmetric"] = m["encoder_alibi_asymmetrical"]
    return options


def _recipe(name):
    return OmegaConf.to_container(OmegaConf.load(RECIPES / f"{name}.yaml"))


def _value(recipe, dotted):
    node = recipe
    for key in dotted.split("."):
        if key not in node:
            return f"<{dotted} unset>"
        node = node[key]
    return node


def test_every_recipe_has_a_fork_table():
    assert sorted(p.stem for p in RECIPES.glob("*.yaml")) == sorted(FORK)


@pytest.mark.parametrize("name", list(FORK))
def test_recipe_states_the_fork_files_hyper_parameters(name):
    fork_file, table, _, task = FORK[name]
    recipe = _recipe(name)
    assert fork_file in (RECIPES / f"{name}.yaml").read_text()  # the provenance comment
    expected = {**table, **{f"task.{key}": value for key, value in task.items()}}
    found = {key: _value(recipe, key) for key in expected}
    assert found == expected
    # the two deliberate differences: blocks across lines, bf16 autocast instead of fp16
    assert recipe["task"]["sample_break_mode"] == "none" and "fp16" not in recipe["common"]
    assert recipe["model"]["bf16_autocast"] is True


@pytest.mark.parametrize("name", list(FORK))
def test_recipe_model_is_the_fork_model(name):
    """The recipe's model section over its arch preset gives the fork's effective model."""
    _, _, fork_model, _ = FORK[name]
    model = dict(_recipe(name)["model"])
    arch = model.pop("_name")
    args = Namespace(**model)
    ARCH_CONFIG_REGISTRY[arch](args)
    expected = plugin_model_options(fork_model)
    assert {key: getattr(args, key) for key in expected} == expected
