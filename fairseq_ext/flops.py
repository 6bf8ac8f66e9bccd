"""Analytic training FLOPs per token, for the benchmark harness and the training logs.

A model of this plugin states its own cost with ``flops_per_token(seq_len)``. Stock fairseq
transformers (``roberta*`` encoders, ``transformer_lm*`` decoders) do not, so their cost is read
off their modules with the usual formula (Kaplan et al. 2020, "Scaling Laws for Neural Language
Models", Table 1; Chowdhery et al. 2022, PaLM, Appendix B):

    forward  = 2 · N_matmul                      (every weight matrix: 2·m·n·k per token)
             + 4 · L · T · d                     (scores Q·Kᵀ and weighted sum A·V)
             + output layer                      (2·d·V per predicted token)
    training = 3 · forward                       (backward ≈ 2 × forward)

with N_matmul = L · (4·d² + 2·d·f) (q, k, v, out projections and the two feed-forward
matrices; biases, norms, softmax and embeddings lookups ignored). Causal attention is counted
in full because fairseq computes the whole T × T score matrix and masks it. A masked LM runs its
head (dense d×d, then d×V) only on masked positions, a fraction ``mask_prob`` of the tokens.
"""
from typing import Optional

import torch.nn as nn

TRAINING_FACTOR = 3.0  # forward + backward (≈ 2 × forward)
DEFAULT_MASK_PROB = 0.15  # fairseq's --mask-prob: the share of tokens a masked LM's head scores


def transformer_flops_per_token(layers: int, embed_dim: int, ffn_dim: int, vocab: int,
                                seq_len: int, head_fraction: float = 1.0,
                                head_dense: bool = False) -> float:
    """Training FLOPs per token of a stock transformer stack (see module docstring)."""
    d, f = embed_dim, ffn_dim
    matmul = 2.0 * layers * (4 * d * d + 2 * d * f)
    attention = 4.0 * layers * seq_len * d
    head = 2.0 * head_fraction * ((d * d if head_dense else 0) + d * vocab)
    return TRAINING_FACTOR * (matmul + attention + head)


def _stack_shape(layers: nn.ModuleList):
    """(L, d, f) of a stack of fairseq Transformer{Encoder,Decoder}Layer's."""
    first = layers[0]
    return len(layers), first.fc1.in_features, first.fc1.out_features


def model_flops_per_token(model: nn.Module, seq_len: int, mask_prob: float = DEFAULT_MASK_PROB) -> Optional[float]:
    """Training FLOPs per token of ``model``: its own ``flops_per_token`` if it has one (a masked
    LM's told the share ``mask_prob`` of tokens its head scores), the stock formula for fairseq's
    RoBERTa and transformer LMs, else None (unknown)."""
    from fairseq.models.roberta import RobertaModel

    own = getattr(model, "flops_per_token", None)
    if callable(own):
        return float(own(seq_len, mask_prob) if isinstance(model, RobertaModel) else own(seq_len))
    encoder = getattr(getattr(model, "encoder", None), "sentence_encoder", None)
    if encoder is not None and hasattr(encoder, "layers"):  # RobertaModel
        L, d, f = _stack_shape(encoder.layers)
        vocab = model.encoder.lm_head.weight.shape[0]
        return transformer_flops_per_token(L, d, f, vocab, seq_len, mask_prob, head_dense=True)
    decoder = getattr(model, "decoder", None)
    if decoder is not None and hasattr(decoder, "layers") and hasattr(decoder, "output_projection"):
        L, d, f = _stack_shape(decoder.layers)  # TransformerLanguageModel
        vocab = decoder.output_projection.out_features
        return transformer_flops_per_token(L, d, f, vocab, seq_len)
    return None
