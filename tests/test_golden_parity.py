"""Parity with the ORIGINAL implementations: golden tensors that the original code computed
once at pinned commits (tests/golden/README.md, scripts/golden/make_*.py) are loaded into this
plugin's models, which must reproduce the original's outputs in eval mode.

* ELC-BERT, its four variants (ltgoslo/elc-bert) and LTG-BERT (ltgoslo/ltg-bert): features,
  MLM logits of the masked positions, every hidden state.
* GLOM (ArneBinder/GlomImpl), both aggregation versions: every state and the MLM logits.
* RoBERTa-ext (EIFY/fairseq): the ALiBi bias for several head counts, the CLAP head's logits.
"""
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from fairseq.data import Dictionary
from fairseq.models import ARCH_CONFIG_REGISTRY
from fairseq.tasks.masked_lm import MaskedLMConfig, MaskedLMTask

from fairseq_ext.models.elc_bert import ElcBertModel
from fairseq_ext.models.glom import GlomModel
from fairseq_ext.models.roberta_ext import RobertaExtModel
from fairseq_ext.modules.alibi import alibi_bias, alibi_slopes

GOLDEN = Path(__file__).resolve().parent / "golden"
TOLERANCE = dict(atol=1e-5, rtol=1e-5)
# buffers in the originals' state dicts, not parameters (HF position ids, fairseq's version)
ORIGINAL_BUFFERS = ("position_ids", ".version")


def golden(name: str) -> dict:
    return torch.load(GOLDEN / f"{name}.pt")


def masked_lm_task(vocab_size: int) -> MaskedLMTask:
    """A masked_lm task whose dictionary (4 specials, made-up words, the <mask> the task adds)
    has ``vocab_size`` symbols, so embedding rows = the original's vocabulary."""
    dictionary = Dictionary()
    for i in range(vocab_size - len(dictionary) - 1):
        dictionary.add_symbol(f"word{i}")
    task = MaskedLMTask(MaskedLMConfig(), dictionary)
    assert len(task.source_dictionary) == vocab_size
    return task


def build(model_class, task, arch, **options):
    args = Namespace(arch=arch, **options)
    ARCH_CONFIG_REGISTRY[arch](args)
    return model_class.build_model(args, task)


def load_mapped(model, original: dict, mapping: dict, unused=()) -> None:
    """Set every parameter of ``model`` from the original's state dict; ``mapping`` gives, per
    plugin name, the original's name or a function of the original state dict. Every original
    parameter must be used, except those in ``unused`` (documented as unused by the original)."""
    state = model.state_dict()
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    assert params <= set(mapping), f"unmapped plugin parameters: {sorted(params - set(mapping))}"
    read = set()

    def lookup(name):
        read.add(name)
        return original[name]

    for name, source in mapping.items():
        value = source(lookup) if callable(source) else lookup(source)
        assert state[name].shape == value.shape, f"{name}: plugin {tuple(state[name].shape)}, original {tuple(value.shape)}"
        state[name] = value
    left = {n for n in original if not n.endswith(ORIGINAL_BUFFERS)} - read - set(unused)
    assert not left, f"original parameters not loaded: {sorted(left)}"
    model.load_state_dict(state)
    model.eval()


# ---------------------------------------------------------------- ELC-BERT / LTG-BERT

ELC = golden("elc_bert")
ELC_VARIANTS = list(ELC["variants"])  # base, zero, normalized, weighted_output, none (LTG-BERT)


def elc_mapping(layers: int, variant: str) -> dict:
    """Plugin name -> original name (model_elc_bert_*.py / ltg-bert model.py)."""
    enc = "encoder.sentence_encoder."
    mapping = {
        enc + "embed_tokens.weight": "embedding.word_embedding.weight",
        enc + "relative_table": "embedding.relative_embedding",
        enc + "relative_norm.weight": "embedding.relative_layer_norm.weight",
        enc + "relative_norm.bias": "embedding.relative_layer_norm.bias",
        "encoder.lm_head.dense.weight": "classifier.nonlinearity.1.weight",
        "encoder.lm_head.dense.bias": "classifier.nonlinearity.1.bias",
        "encoder.lm_head.weight": "classifier.nonlinearity.5.weight",  # tied to the embedding in both
        "encoder.lm_head.bias": "classifier.nonlinearity.5.bias",
    }
    for i in range(layers):
        ours, theirs = f"{enc}layers.{i}.", f"transformer.layers.{i}."
        for proj in ("in_proj_qk", "in_proj_v", "out_proj"):
            for kind in ("weight", "bias"):
                mapping[f"{ours}attention.{proj}.{kind}"] = f"{theirs}attention.{proj}.{kind}"
        mapping[ours + "attention.post_norm.weight"] = theirs + "attention.post_layer_norm.weight"
        mapping[ours + "attention.post_norm.bias"] = theirs + "attention.post_layer_norm.bias"
        mapping[ours + "ffn.fc1.weight"] = theirs + "mlp.mlp.1.weight"
        mapping[ours + "ffn.fc2.weight"] = theirs + "mlp.mlp.4.weight"
        if variant != "none":
            mapping[f"{enc}mixings.{i}.layer_weights"] = theirs + "prev_layer_weights"
    if variant == "weighted_output":
        mapping[enc + "output_mixing.layer_weights"] = "transformer.prev_layer_weights"
    return mapping


@pytest.fixture(scope="module")
def elc_task():
    return masked_lm_task(ELC["config"]["vocab_size"])


def elc_model(task, variant):
    c = ELC["config"]
    model = build(ElcBertModel, task, "ltg_bert_tiny", elc_variant=variant, encoder_embed_dim=c["hidden_size"],
                  encoder_layers=c["num_hidden_layers"], encoder_attention_heads=c["num_attention_heads"],
                  encoder_ffn_embed_dim=c["intermediate_size"], position_bucket_size=c["position_bucket_size"],
                  layer_norm_eps=c["layer_norm_eps"])
    load_mapped(model, ELC["variants"][variant]["state_dict"], elc_mapping(c["num_hidden_layers"], variant))
    return model


def original_order_to_batch_first(logits, masked):
    """The original selects masked positions of (T, B) inputs, in (t, b) order; fairseq's head
    selects them from (B, T), in (b, t) order: reorder the original's rows to the latter."""
    full = logits.new_zeros(*masked.t().shape, logits.size(-1))  # (T, B, V)
    full[masked.t()] = logits
    return full.transpose(0, 1)[masked]


@pytest.mark.parametrize("variant", ELC_VARIANTS)
def test_elc_features_and_logits_match_original(elc_task, variant):
    model = elc_model(elc_task, variant)
    expected = ELC["variants"][variant]
    tokens, masked = ELC["tokens"], ELC["masked"]
    assert tokens.eq(elc_task.source_dictionary.pad()).equal(ELC["padding_mask"])
    with torch.no_grad():
        features, _ = model(tokens, features_only=True)  # (B, T, d)
        logits, _ = model(tokens, masked_tokens=masked)  # (N, V)
    torch.testing.assert_close(features, expected["hidden_states"][-1], **TOLERANCE)
    torch.testing.assert_close(logits, original_order_to_batch_first(expected["logits"], masked), **TOLERANCE)


@pytest.mark.parametrize("variant", ELC_VARIANTS)
def test_elc_hidden_states_match_original(elc_task, variant):
    """h_0 (embedding output) .. h_N; weighted_output's final mixture is the features (above).
    LTG-BERT's original returns only the last state."""
    model = elc_model(elc_task, variant)
    expected = ELC["variants"][variant]["hidden_states"]  # (B, T, d) each
    with torch.no_grad():
        _, extra = model(ELC["tokens"], features_only=True, return_all_hiddens=True)
    states = extra["inner_states"]  # fairseq's contract: (T, B, d) each
    if variant == "none":
        states = states[-1:]
    else:
        expected = expected[: len(states)]
    assert len(states) == len(expected)
    for ours, theirs in zip(states, expected):
        # KNOWN MISMATCH (layout, not values): on this branch ElcSentenceEncoder returns its
        # inner states batch-first (B, T, d) instead of fairseq's (T, B, d), because
        # encoder_output() transposes states that are already sequence-first. Being fixed on
        # another branch; this assertion fails until that fix is merged.
        torch.testing.assert_close(ours, theirs.transpose(0, 1), **TOLERANCE)


# ---------------------------------------------------------------- GLOM

GLOM = golden("glom")


def glom_mapping(version: str, levels: int) -> dict:
    """Plugin name -> original name (or function of the original state dict), modeling_glom.py."""
    enc, layer = "encoder.sentence_encoder.", "glom.encoder.albert_layer_groups.0.albert_layers.0.attention."
    per_level = 3 if version == "tridiagonal" else 2

    def projections(kind, index):  # stack aggr_projections[index(j)] over j
        return lambda sd: torch.stack([sd(f"{layer}aggr_projections.{index(j)}.{kind}") for j in range(levels - 1)])

    def positions(sd):
        # fairseq's learned positions start at padding_idx + 1 = 2 (rows 0, 1: before / padding);
        # the original adds token-type embedding 0 (all inputs are type 0) to every position
        table = sd("glom.embeddings.position_embeddings.weight") + sd("glom.embeddings.token_type_embeddings.weight")[0]
        return torch.cat([table[:2] * 0, table])

    if per_level == 2:  # master: level i reads U_i = aggr[2i-1] (from below), D_i = aggr[2i] (from above)
        up, down = (lambda j: 2 * j + 1), (lambda j: 2 * j)
    else:  # model_learns_well: P_ii = aggr[3i], P_i,i-1 = aggr[3i-1], P_i,i+1 = aggr[3i+1]
        up, down = (lambda j: 3 * j + 2), (lambda j: 3 * j + 1)
    mapping = {
        enc + "embed_tokens.weight": "glom.embeddings.word_embeddings.weight",
        enc + "embedding.embed_tokens.weight": "glom.embeddings.word_embeddings.weight",
        enc + "embedding.embed_positions.weight": positions,
        enc + "embedding.layer_norm.weight": "glom.embeddings.LayerNorm.weight",
        enc + "embedding.layer_norm.bias": "glom.embeddings.LayerNorm.bias",
        enc + "to_level0.weight": "glom.encoder.embedding_hidden_mapping_in.weight",
        enc + "to_level0.bias": "glom.encoder.embedding_hidden_mapping_in.bias",
        enc + "upper_levels_init": "glom.encoder.step_zero_bias.bias",
        enc + "step.up_weight": projections("weight", up),
        enc + "step.up_bias": projections("bias", up),
        enc + "step.down_weight": projections("weight", down),
        enc + "step.down_bias": projections("bias", down),
        enc + "step.out_bias": layer + "dense.bias",
        enc + "step.layer_norm.weight": layer + "LayerNorm.weight",
        enc + "step.layer_norm.bias": layer + "LayerNorm.bias",
        "encoder.lm_head.dense.weight": "predictions.dense.weight",
        "encoder.lm_head.dense.bias": "predictions.dense.bias",
        "encoder.lm_head.layer_norm.weight": "predictions.LayerNorm.weight",
        "encoder.lm_head.layer_norm.bias": "predictions.LayerNorm.bias",
        "encoder.lm_head.weight": "predictions.decoder.weight",  # tied to the word embeddings in both
        "encoder.lm_head.bias": "predictions.bias",  # = predictions.decoder.bias (same tensor)
    }
    if per_level == 3:
        mapping[enc + "step.self_weight"] = lambda sd: torch.stack(
            [sd(f"{layer}aggr_projections.{3 * i}.weight") for i in range(levels)])
        mapping[enc + "step.self_bias"] = lambda sd: torch.stack(
            [sd(f"{layer}aggr_projections.{3 * i}.bias") for i in range(levels)])
    return mapping


# Parameters the original builds but never reads (ALGORITHMS.md §1.6).
GLOM_UNUSED = ("glom.encoder.step_zero_bias.weight",
               "glom.encoder.albert_layer_groups.0.albert_layers.0.attention.dense.weight",
               "glom.encoder.albert_layer_groups.0.albert_layers.0.full_layer_layer_norm.weight",
               "glom.encoder.albert_layer_groups.0.albert_layers.0.full_layer_layer_norm.bias",
               "predictions.decoder.bias")  # the same tensor as predictions.bias


@pytest.mark.parametrize("version", list(GLOM["versions"]))
def test_glom_states_and_logits_match_original(version):
    c, expected = GLOM["config"], GLOM["versions"][version]
    task = masked_lm_task(c["vocab_size"])
    model = build(GlomModel, task, "glom_tiny", glom_aggregation=version, glom_level_layout="interleaved",
                  encoder_embed_dim=c["hidden_size"], encoder_attention_heads=c["num_attention_heads"],
                  encoder_layers=c["num_hidden_layers"], embedding_size=c["embedding_size"],
                  max_positions=c["max_position_embeddings"], attention_temperature=expected["temperature"])
    load_mapped(model, expected["state_dict"], glom_mapping(version, c["num_attention_heads"]), GLOM_UNUSED)
    tokens = GLOM["tokens"]
    real = GLOM["attention_mask"].bool()
    assert tokens.ne(task.source_dictionary.pad()).equal(real)
    with torch.no_grad():
        _, extra = model(tokens, features_only=True, return_all_hiddens=True)
        logits, _ = model(tokens, masked_tokens=real)
    # padded positions differ by construction (fairseq gives pads the padding position, the
    # original counts on) and are never attended to: compare the real tokens
    states = extra["inner_states"]  # (T, B, d) each: step 0 .. t
    assert len(states) == len(expected["hidden_states"])
    for step, (ours, theirs) in enumerate(zip(states, expected["hidden_states"])):
        torch.testing.assert_close(ours.transpose(0, 1)[real], theirs[real], **TOLERANCE, msg=f"state {step}")
    torch.testing.assert_close(logits, expected["logits"][real], **TOLERANCE)


# ---------------------------------------------------------------- RoBERTa-ext: ALiBi, CLAP

ROBERTA = golden("roberta_ext")


@pytest.mark.parametrize("heads, asymmetric", list(ROBERTA["alibi"]))
def test_alibi_bias_matches_original(heads, asymmetric):
    """The bias of the model's encoder (its slopes buffer) and of the module, at the fork's
    maximum length and for a shorter input (the fork slices [:, :T, :T])."""
    expected = ROBERTA["alibi"][(heads, asymmetric)]  # (H, P, P)
    task = masked_lm_task(20)
    model = build(RobertaExtModel, task, "roberta_ext_alibi_tiny", encoder_attention_heads=heads,
                  encoder_embed_dim=4 * heads, encoder_ffn_embed_dim=8, alibi_asymmetric=asymmetric,
                  max_positions=ROBERTA["alibi_max_positions"])
    encoder = model.encoder.sentence_encoder
    for length in (expected.size(-1), 5):
        torch.testing.assert_close(encoder.attention_bias(length), expected[:, :length, :length], **TOLERANCE)
        torch.testing.assert_close(alibi_bias(alibi_slopes(heads), length, asymmetric),
                                   expected[:, :length, :length], **TOLERANCE)


def test_clap_head_matches_original():
    case = ROBERTA["clap"]
    vocab, dim = case["weight"].shape
    task = masked_lm_task(vocab)
    model = build(RobertaExtModel, task, "roberta_ext_learned_clap_tiny", encoder_embed_dim=dim,
                  encoder_attention_heads=2, encoder_ffn_embed_dim=2 * dim)
    head = model.encoder.lm_head
    with torch.no_grad():
        head.weight.copy_(case["weight"])
        head.beta.copy_(case["beta"])
    assert head.weight is model.encoder.sentence_encoder.embed_tokens.weight  # tied, as the fork
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(head(case["features"], masked_tokens=case["masked"]), case["logits_masked"], **TOLERANCE)
        torch.testing.assert_close(head(case["features"]), case["logits_all"], **TOLERANCE)


# The fork's recipes as this plugin's presets (same sizes as the golden run).
ROBERTA_ARCHS = {"zero_clap": "roberta_ext_zero_clap_tiny", "learned_clap": "roberta_ext_learned_clap_tiny",
                 "alibi": "roberta_ext_alibi_tiny"}


@pytest.mark.parametrize("variant", list(ROBERTA["models"]))
def test_roberta_ext_model_matches_original(variant):
    """Whole models of the fork (EIFY/fairseq RobertaModel with its encoder and layers), loaded
    under the same parameter names: features, every inner state and the masked-position logits,
    with padding and <mask> inputs (zero vectors under zero masking)."""
    expected, size = ROBERTA["models"][variant], ROBERTA["model_size"]
    vocab = expected["state_dict"]["encoder.sentence_encoder.embed_tokens.weight"].size(0)
    zero_mask = expected["options"].get("zero_masking", False)
    task = masked_lm_task(vocab + 1 if zero_mask else vocab)  # + the <mask> the plugin does not embed
    model = build(RobertaExtModel, task, ROBERTA_ARCHS[variant], **size)
    names = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    load_mapped(model, expected["state_dict"], {name: name for name in names})
    tokens, masked = expected["tokens"], expected["masked"]
    with torch.no_grad():
        features, extra = model(tokens, features_only=True, return_all_hiddens=True)
        logits, _ = model(tokens, masked_tokens=masked)
    torch.testing.assert_close(features, expected["features"], **TOLERANCE)
    assert len(extra["inner_states"]) == len(expected["inner_states"])
    for ours, theirs in zip(extra["inner_states"], expected["inner_states"]):  # (T, B, C) both
        torch.testing.assert_close(ours, theirs, **TOLERANCE)
    torch.testing.assert_close(logits, expected["logits"], **TOLERANCE)
