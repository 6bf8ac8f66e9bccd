"""fairseq's contract for ``model(tokens, features_only=True, return_all_hiddens=True)``: the
features are (B, T, C) and ``extra["inner_states"]`` is a list of sequence-first (T, B, C)
tensors, the embedding output first, one per layer after it, the last one what the MLM head
reads. Stock ``roberta`` built tiny is the reference; every plugin family must match it.

ELC-BERT ``weighted_output`` feeds its head a learned mixture of all layers: its states end
with that mixture (as the original's ``Encoder.forward`` returns them), one more than layers + 1.
"""
import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf

from helpers import USER_DIR

STOCK = ("roberta", "--encoder-layers", "2", "--encoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
         "--encoder-attention-heads", "4")
ARCHS = [("roberta_ext_baseline_tiny",), ("glom_tiny",), ("albert_tiny",), ("ltg_bert_tiny",), ("elc_bert_tiny",),
         ("elc_bert_zero_tiny",), ("elc_bert_normalized_tiny",), ("elc_bert_weighted_output_tiny",)]
B, T = 2, 7  # different, so a transposed state cannot pass


def build(tiny_data, arch, *extra):
    argv = [str(tiny_data), "--user-dir", USER_DIR, "--task", "masked_lm", "--tokens-per-sample", "16",
            "--arch", arch, *extra]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    task = tasks.setup_task(cfg.task)
    torch.manual_seed(0)
    return task.build_model(cfg.model).eval(), task


def all_hiddens(tiny_data, spec):
    model, task = build(tiny_data, *spec)
    tokens = torch.randint(4, 100, (B, T))
    tokens[1, 5:] = task.source_dictionary.pad()
    with torch.no_grad():
        features, extra = model(tokens, features_only=True, return_all_hiddens=True)
    return model, tokens, features, extra["inner_states"]


@pytest.fixture(scope="module")
def stock(tiny_data):
    return all_hiddens(tiny_data, STOCK)


def test_stock_reference_layout(stock):
    model, _, features, states = stock
    assert features.shape == (B, T, 32)
    assert len(states) == model.args.encoder_layers + 1
    assert all(s.shape == (T, B, 32) for s in states)
    torch.testing.assert_close(states[-1].transpose(0, 1), features)


@pytest.mark.parametrize("spec", ARCHS, ids=lambda spec: spec[0])
def test_inner_states_have_the_stock_layout(tiny_data, stock, spec):
    model, tokens, features, states = all_hiddens(tiny_data, spec)
    stock_states = stock[3]
    weighted_output = spec[0] == "elc_bert_weighted_output_tiny"
    assert len(states) == model.args.encoder_layers + 1 + weighted_output
    width = features.size(-1)
    assert features.shape == (B, T, width)
    for state in states:
        assert state.shape[:2] == stock_states[0].shape[:2] == (T, B) and state.shape[2] == width
    # the last state is the features, and what the head scores
    torch.testing.assert_close(states[-1].transpose(0, 1), features)
    masked = tokens.ne(model.encoder.dictionary.pad())
    with torch.no_grad():
        logits, _ = model(tokens, masked_tokens=masked)
        torch.testing.assert_close(logits, model.encoder.lm_head(states[-1].transpose(0, 1), masked_tokens=masked))


def test_weighted_output_states_end_with_the_mixture_the_head_reads(tiny_data):
    model, task = build(tiny_data, "elc_bert_weighted_output_tiny")
    encoder = model.encoder.sentence_encoder
    with torch.no_grad():
        encoder.output_mixing.layer_weights.normal_()  # off the uniform init
    tokens = torch.randint(4, 100, (B, T))
    with torch.no_grad():
        features, extra = model(tokens, features_only=True, return_all_hiddens=True)
    *layers, mixture = extra["inner_states"]
    weights = encoder.output_mixing.weights()
    expected = sum(w * h for w, h in zip(weights, layers))  # Σ softmax(α)_i h_i over h_0 .. h_L
    torch.testing.assert_close(mixture, expected)
    torch.testing.assert_close(mixture.transpose(0, 1), features)
    assert not torch.allclose(layers[-1], mixture)  # the head does not read the last layer
