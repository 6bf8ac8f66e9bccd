"""GLOM masked LM for text: levels = heads, time steps = one shared layer applied t times.

After ArneBinder/GlomImpl (``src/models/glom/modeling_glom.py``), the text port of Hinton's
GLOM (2021, arXiv:2102.12627). A factorised token embedding (size E, as ALBERT) is projected
into level 0 only; the other levels start from a learned, level-dependent bias. Each step
(``fairseq_ext.modules.glom_step``) lets every level attend to itself without Q/K/V
projections and mixes neighbouring levels; there is no MLP. The MLM head reads level 0.

    fairseq-train DATA --user-dir fairseq_ext --task masked_lm --criterion masked_lm --arch glom_base
"""
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from fairseq.models import register_model

from fairseq_ext.models._common import PluginConfig, register_presets
from fairseq_ext.models._roberta_family import FactorisedRobertaEncoder, PluginRobertaModel, encoder_output
from fairseq_ext.modules.factorised import FactorisedEmbedding
from fairseq_ext.modules.glom_step import AGGREGATIONS, LAYOUTS, GlomStep


# GlomImpl's LayerNorm eps: GlomEmbeddings uses config.layer_norm_eps (1e-12 in its configs),
# GlomMLMHead a bare nn.LayerNorm(embedding_size), i.e. torch's 1e-5 (ALGORITHMS.md §1).
EMBEDDING_LAYER_NORM_EPS = 1e-12
HEAD_LAYER_NORM_EPS = 1e-5


@dataclass
class GlomConfig(PluginConfig):
    """GLOM options; sizes use fairseq's names: --encoder-embed-dim d, --encoder-attention-heads
    L (levels), --encoder-layers t (time steps of the one shared layer)."""

    glom_aggregation: str = field(default="paper", metadata={
        "help": f"how levels exchange information, one of {AGGREGATIONS}: 'paper' averages the "
                "attention output, the level's previous state and sine-projected neighbour "
                "levels (GlomImpl master); 'tridiagonal' builds level i from the attention outputs "
                "of levels i-1, i, i+1 through its own projections, no skip (branch model_learns_well)"})
    glom_level_layout: str = field(default="interleaved", metadata={
        "help": f"how a level's features are read from the state, one of {LAYOUTS}: 'interleaved' "
                "(level i = features i, i+L, ...; the original's view(B,T,d/L,L)) or 'contiguous'; "
                "levels are always written contiguously, as the original"})
    embedding_size: int = field(default=128, metadata={
        "help": "width E of the factorised token/position embedding (ALBERT; GlomImpl embedding_size)"})
    attention_temperature: float = field(default=1.0, metadata={
        "help": "tau multiplying the attention scores (GlomImpl attention_temperature)"})


class GlomSentenceEncoder(nn.Module):
    """Embedding into level 0, then the shared GLOM step t times. States are (B, T, d) inside,
    returned in fairseq's (T, B, d)."""

    def __init__(self, args, dictionary, embed_tokens):
        super().__init__()
        if args.encoder_layers < 1:
            raise ValueError(f"GLOM needs at least one time step (--encoder-layers), got {args.encoder_layers}")
        self.padding_idx = dictionary.pad()
        self.embed_tokens = embed_tokens
        self.embedding = FactorisedEmbedding(embed_tokens, args.max_positions, self.padding_idx, args.dropout,
                                             EMBEDDING_LAYER_NORM_EPS)
        self.step = GlomStep(args.encoder_embed_dim, args.encoder_attention_heads, args.glom_aggregation,
                             args.glom_level_layout, args.attention_temperature)
        self.time_steps = args.encoder_layers
        self.to_level0 = nn.Linear(args.embedding_size, self.step.width)
        # levels 1..L-1 start from a learned bias, zero at init (GlomImpl step_zero_bias)
        self.upper_levels_init = nn.Parameter(torch.zeros(args.encoder_embed_dim - self.step.width))

    def initial_state(self, src_tokens):
        level0 = self.to_level0(self.embedding(src_tokens))  # (B, T, d/L)
        upper = self.upper_levels_init.expand(*level0.shape[:2], -1)
        return torch.cat([level0, upper.to(level0.dtype)], dim=-1)  # (B, T, d)

    def forward(self, src_tokens, return_all_hiddens=False, token_embeddings=None, reference=False):
        padding_mask = src_tokens.eq(self.padding_idx)
        key_padding = padding_mask if padding_mask.any() else None
        step = self.step.forward_reference if reference else self.step
        x = self.initial_state(src_tokens)
        states = [x]
        for _ in range(self.time_steps):
            x = step(x, key_padding)
            states.append(x)
        # (B, T, d) -> fairseq's (T, B, d)
        return encoder_output(x.transpose(0, 1), padding_mask,
                              [s.transpose(0, 1) for s in states] if return_all_hiddens else [])

    def flops_per_token(self, seq_len: int) -> float:
        return 2.0 * self.to_level0.in_features * self.to_level0.out_features \
            + self.time_steps * self.step.flops_per_token(seq_len)


class GlomEncoder(FactorisedRobertaEncoder):
    head_layer_norm_eps = HEAD_LAYER_NORM_EPS

    @property
    def head_input_dim(self):
        return self.args.encoder_embed_dim // self.args.encoder_attention_heads  # level 0

    def build_encoder(self, args, dictionary, embed_tokens):
        return GlomSentenceEncoder(args, dictionary, embed_tokens)


@register_model("glom")
class GlomModel(PluginRobertaModel):
    """GLOM masked LM (see the module docstring); RobertaModel's hub and heads work unchanged."""

    config_class = GlomConfig
    encoder_class = GlomEncoder

    @classmethod
    def layer_pruning_refusal(cls, args):
        return "every time step runs the one shared GLOM step; fewer steps: --encoder-layers"


# GlomImpl's configs: no dropout. Positions follow --tokens-per-sample unless --max-positions is set.
PRESETS = {
    "glom_tiny": dict(encoder_embed_dim=32, encoder_attention_heads=4, encoder_layers=2, embedding_size=16),
    "glom_small": dict(encoder_embed_dim=256, encoder_attention_heads=8, encoder_layers=6, embedding_size=128),
    # configs/glom/glom-albert-base-v2.json: d 768, 12 levels, 12 steps, E 128
    "glom_base": dict(encoder_embed_dim=768, encoder_attention_heads=12, encoder_layers=12, embedding_size=128),
    # configs/glom/glom-paper.json: d 4608, 6 levels of 768, 24 steps, E 128
    "glom_paper": dict(encoder_embed_dim=4608, encoder_attention_heads=6, encoder_layers=24, embedding_size=128),
}

register_presets("glom", PRESETS, lambda args, **preset: GlomModel.fill_defaults(
    args, dropout=0.0, attention_dropout=0.0, **preset))
