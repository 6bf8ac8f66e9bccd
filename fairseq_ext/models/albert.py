"""ALBERT-style masked LM: factorised embeddings E -> d and one transformer layer shared by all
layers (Lan et al. 2020, arXiv:1909.11942). The baseline GlomImpl compared GLOM with.

    fairseq-train DATA --user-dir fairseq_ext --task masked_lm --criterion masked_lm --arch albert_base
"""
from dataclasses import dataclass, field

import torch.nn as nn
from fairseq.models import register_model
from fairseq.modules import TransformerEncoderLayer

from fairseq_ext.models._common import PluginConfig, register_presets
from fairseq_ext.models._roberta_family import FactorisedRobertaEncoder, PluginRobertaModel, encoder_output
from fairseq_ext.modules.biased_encoder_layer import check_heads_divide_width
from fairseq_ext.modules.factorised import FactorisedEmbedding


# HF ALBERT's layer_norm_eps (albert-base-v2), for the embedding and the MLM head alike.
LAYER_NORM_EPS = 1e-12


@dataclass
class AlbertConfig(PluginConfig):
    """ALBERT options; sizes use fairseq's names (--encoder-layers = times the one layer runs)."""

    embedding_size: int = field(default=128, metadata={
        "help": "width E of the factorised token/position embedding (ALBERT section 3.1)"})


class AlbertSentenceEncoder(nn.Module):
    """Embedding at width E, projection to d, then fairseq's TransformerEncoderLayer applied
    --encoder-layers times with the same weights."""

    def __init__(self, args, dictionary, embed_tokens):
        super().__init__()
        if args.encoder_layers < 1:
            raise ValueError(f"--encoder-layers must be at least 1, got {args.encoder_layers}")
        check_heads_divide_width(args.encoder_embed_dim, args.encoder_attention_heads)
        self.padding_idx = dictionary.pad()
        self.embed_tokens = embed_tokens
        self.embedding = FactorisedEmbedding(embed_tokens, args.max_positions, self.padding_idx, args.dropout,
                                             LAYER_NORM_EPS)
        self.project = nn.Linear(args.embedding_size, args.encoder_embed_dim)
        self.shared_layer = TransformerEncoderLayer(args)
        self.repeats = args.encoder_layers

    def forward(self, src_tokens, return_all_hiddens=False, token_embeddings=None):
        padding_mask = src_tokens.eq(self.padding_idx)
        key_padding = padding_mask if padding_mask.any() else None
        x = self.project(self.embedding(src_tokens)).transpose(0, 1)  # (T, B, d)
        states = [x]
        for _ in range(self.repeats):
            x = self.shared_layer(x, encoder_padding_mask=key_padding)
            states.append(x)
        return encoder_output(x, padding_mask, states if return_all_hiddens else [])

    def flops_per_token(self, seq_len: int) -> float:
        d, f = self.project.out_features, self.shared_layer.fc1.out_features
        layer = 8.0 * d * d + 4.0 * seq_len * d + 4.0 * d * f
        return 2.0 * self.project.in_features * d + self.repeats * layer


class AlbertEncoder(FactorisedRobertaEncoder):
    head_layer_norm_eps = LAYER_NORM_EPS

    def build_encoder(self, args, dictionary, embed_tokens):
        return AlbertSentenceEncoder(args, dictionary, embed_tokens)


@register_model("albert_ext")
class AlbertModel(PluginRobertaModel):
    """ALBERT-style masked LM with RobertaModel's hub, heads and loading."""

    config_class = AlbertConfig
    encoder_class = AlbertEncoder

    @classmethod
    def layer_pruning_refusal(cls, args):
        return "every repeat runs the one shared layer; fewer repeats: --encoder-layers"


# albert-base-v2: no dropout. Positions follow --tokens-per-sample unless --max-positions is set.
PRESETS = {
    "albert_tiny": dict(encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=4,
                        encoder_layers=2, embedding_size=16),
    "albert_small": dict(encoder_embed_dim=256, encoder_ffn_embed_dim=1024, encoder_attention_heads=4,
                         encoder_layers=6, embedding_size=128),
    # albert-base-v2: d 768, 12 layers sharing one, 12 heads, FFN 3072, E 128 (dropout 0 as v2)
    "albert_base": dict(encoder_embed_dim=768, encoder_ffn_embed_dim=3072, encoder_attention_heads=12,
                        encoder_layers=12, embedding_size=128),
}

register_presets("albert_ext", PRESETS, lambda args, **preset: AlbertModel.fill_defaults(
    args, dropout=0.0, attention_dropout=0.0, **preset))
