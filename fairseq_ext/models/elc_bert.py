"""ELC-BERT: LTG-BERT whose layers read a learned mix of all earlier layers' outputs
(Charpentier & Samuel 2023, arXiv:2311.02265; ltgoslo/elc-bert, the BabyLM 2023 winner).

The LTG-BERT backbone (Samuel et al. 2023, arXiv:2303.09859): no absolute positions;
disentangled attention with log-bucketed relative positions (``modules.relative_attention``);
a GeGLU feed-forward; LayerNorms without affine parameters where the original has them; and
truncated-normal init with the FFN scaled by depth. ``--elc-variant``:

| variant | alpha init | layer output f(x), a = Attn(x) | head reads |
|---|---|---|---|
| none (LTG-BERT) | - | x + a + FFN(x + a) | h_N |
| base | last entry 1 | a + FFN(a) | h_N |
| zero | zeros | a + FFN(x + a) | h_N |
| normalized | zeros | LN(a + FFN(x + a)) | h_N |
| weighted_output | zeros | a + FFN(x + a) | sum_i softmax(gamma)_i h_i |

with x_l = sum_i softmax(alpha_l)_i h_i (``modules.layer_mixing``) for every variant but none.
"""
import functools
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.dataclass import FairseqDataclass
from fairseq.models import register_model, register_model_architecture
from fairseq.models.roberta import RobertaEncoder
from fairseq.utils import safe_getattr

from fairseq_ext.models._roberta_family import PluginRobertaModel, encoder_output
from fairseq_ext.modules.autocast import BF16_AUTOCAST_HELP
from fairseq_ext.modules.layer_mixing import LayerWeights, mix, mix_reference
from fairseq_ext.modules.relative_attention import DisentangledSelfAttention, relative_index

VARIANTS = ("none", "base", "zero", "normalized", "weighted_output")
# Parameter names the original trains without weight decay (train_elc_bert_*.py).
NO_DECAY_NAMES = ("bias", "norm", "embed", "layer_weights", "output_weights")


@dataclass
class ElcBertConfig(FairseqDataclass):
    """ELC-BERT / LTG-BERT options; sizes use fairseq's names (--encoder-layers, ...)."""

    elc_variant: str = field(default="zero", metadata={
        "help": f"layer weighting, one of {VARIANTS}: 'none' is plain LTG-BERT (residual layers); "
                "the others are the four ELC-BERT variants of ltgoslo/elc-bert (models/model_elc_bert_*.py)"})
    position_bucket_size: int = field(default=32, metadata={
        "help": "K: relative offsets fall into 2K-1 log buckets, exact up to K/2 (LTG-BERT position_bucket_size)"})
    max_relative_position: int = field(default=512, metadata={
        "help": "offsets beyond this share the outermost bucket (LTG-BERT max_position_embeddings)"})
    layer_norm_eps: float = field(default=1e-7, metadata={"help": "LayerNorm epsilon (LTG-BERT config)"})
    bf16_autocast: bool = field(default=False, metadata={"help": BF16_AUTOCAST_HELP})


class GeGLU(nn.Module):
    """FFN(x) = Dropout(W2 LN(a * gelu(g))), [a | g] = W1 LN(x); no biases, no affine LNs."""

    def __init__(self, embed_dim: int, ffn_dim: int, dropout: float, eps: float):
        super().__init__()
        self.pre_norm = nn.LayerNorm(embed_dim, eps=eps, elementwise_affine=False)
        self.fc1 = nn.Linear(embed_dim, 2 * ffn_dim, bias=False)
        self.mid_norm = nn.LayerNorm(ffn_dim, eps=eps, elementwise_affine=False)
        self.fc2 = nn.Linear(ffn_dim, embed_dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        a, g = self.fc1(self.pre_norm(x)).chunk(2, dim=-1)
        return self.dropout(self.fc2(self.mid_norm(a * F.gelu(g, approximate="tanh"))))


class LtgLayer(nn.Module):
    def __init__(self, args):
        super().__init__()
        eps = args.layer_norm_eps
        self.variant = args.elc_variant
        self.attention = DisentangledSelfAttention(args.encoder_embed_dim, args.encoder_attention_heads,
                                                   args.dropout, args.attention_dropout, eps)
        self.ffn = GeGLU(args.encoder_embed_dim, args.encoder_ffn_embed_dim, args.dropout, eps)
        self.out_norm = nn.LayerNorm(args.encoder_embed_dim, eps=eps, elementwise_affine=False)

    def forward(self, x, positions, index, key_padding_mask, reference=False):
        a = self.attention(x, positions, index, key_padding_mask, reference)
        if self.variant == "base":
            return a + self.ffn(a)
        out = a + self.ffn(x + a)
        if self.variant == "none":
            return x + out
        return self.out_norm(out) if self.variant == "normalized" else out


class LtgSentenceEncoder(nn.Module):
    """Embedding (LN without affine), relative-position table, layers, ELC mixing. (B, T, d)."""

    def __init__(self, args, dictionary, embed_tokens):
        super().__init__()
        if args.elc_variant not in VARIANTS:
            raise ValueError(f"--elc-variant must be one of {VARIANTS}, got {args.elc_variant!r}")
        if args.encoder_layers < 1:
            raise ValueError(f"--encoder-layers must be at least 1, got {args.encoder_layers}")
        d, eps = args.encoder_embed_dim, args.layer_norm_eps
        self.variant = args.elc_variant
        self.padding_idx = dictionary.pad()
        self.embed_tokens = embed_tokens
        self.embed_norm = nn.LayerNorm(d, eps=eps, elementwise_affine=False)
        self.dropout = nn.Dropout(args.dropout)
        self.bucket_size, self.max_relative_position = args.position_bucket_size, args.max_relative_position
        self.relative_embedding = nn.Parameter(torch.empty(2 * self.bucket_size - 1, d))
        self.relative_norm = nn.LayerNorm(d, eps=eps)
        self.layers = nn.ModuleList(LtgLayer(args) for _ in range(args.encoder_layers))
        self.layer_weights = None if self.variant == "none" else LayerWeights(args.encoder_layers, self.variant)
        self.output_weights = nn.Parameter(torch.zeros(args.encoder_layers + 1)) if self.variant == "weighted_output" else None
        self.reset_parameters()

    def reset_parameters(self):
        """Truncated normal (sigma = sqrt(2/(5d)), cut at 2 sigma) for every weight, zero biases,
        then the FFN of layer l scaled by sqrt(1/(2(l+1))) (ltgoslo/elc-bert)."""
        std = math.sqrt(2.0 / (5.0 * self.embed_tokens.embedding_dim))
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        nn.init.trunc_normal_(self.relative_embedding, std=std, a=-2 * std, b=2 * std)
        for i, layer in enumerate(self.layers):
            for linear in (layer.ffn.fc1, layer.ffn.fc2):
                linear.weight.data.mul_(math.sqrt(1.0 / (2.0 * (i + 1))))

    def forward(self, src_tokens, return_all_hiddens=False, token_embeddings=None, reference=False):
        padding_mask = src_tokens.eq(self.padding_idx)
        key_padding = padding_mask if padding_mask.any() else None
        index = relative_index(src_tokens.size(1), self.bucket_size, self.max_relative_position, src_tokens.device)
        positions = self.relative_norm(self.relative_embedding)
        states = [self.dropout(self.embed_norm(self.embed_tokens(src_tokens)))]  # h_0
        for i, layer in enumerate(self.layers):
            x = states[-1] if self.layer_weights is None else self.layer_weights(i, states, reference)
            states.append(layer(x, positions, index, key_padding, reference))
        if self.output_weights is None:
            out = states[-1]
        else:
            out = (mix_reference if reference else mix)(self.output_weights, states)
        return encoder_output(out, padding_mask, states if return_all_hiddens else [])

    def flops_per_token(self, seq_len: int) -> float:
        d = self.embed_tokens.embedding_dim
        f = self.layers[0].ffn.mid_norm.normalized_shape[0]
        attention = self.layers[0].attention.flops_per_token(seq_len, self.relative_embedding.size(0))
        mixing = 0 if self.layer_weights is None else sum(2.0 * (i + 1) * d for i in range(len(self.layers)))
        return len(self.layers) * (attention + 6.0 * d * f) + mixing


class ElcMLMHead(nn.Module):
    """LN -> Linear(d, d) -> GELU -> LN -> dropout -> tied embedding + bias, on masked positions."""

    def __init__(self, embed_dim: int, weight: nn.Parameter, dropout: float, eps: float):
        super().__init__()
        self.pre_norm = nn.LayerNorm(embed_dim, eps=eps, elementwise_affine=False)
        self.dense = nn.Linear(embed_dim, embed_dim)
        self.post_norm = nn.LayerNorm(embed_dim, eps=eps, elementwise_affine=False)
        self.dropout = nn.Dropout(dropout)
        self.weight = weight
        self.bias = nn.Parameter(torch.zeros(weight.size(0)))

    def forward(self, features, masked_tokens=None, **unused):
        if masked_tokens is not None:
            features = features[masked_tokens, :]
        x = self.dropout(self.post_norm(F.gelu(self.dense(self.pre_norm(features)))))
        return F.linear(x, self.weight) + self.bias

    def flops_per_token(self) -> float:
        vocab, d = self.weight.shape
        return 2.0 * d * d + 2.0 * d * vocab


class ElcBertEncoder(RobertaEncoder):
    def build_encoder(self, args, dictionary, embed_tokens):
        return LtgSentenceEncoder(args, dictionary, embed_tokens)

    def build_lm_head(self, embed_dim, output_dim, activation_fn, weight):
        if weight is None:
            raise ValueError("--untie-weights-roberta is not supported: ELC-BERT's head is tied to the embedding")
        return ElcMLMHead(embed_dim, weight, self.args.dropout, self.args.layer_norm_eps)

    def max_positions(self):
        return int(1e6)  # relative positions: any length runs


@register_model("elc_bert")
class ElcBertModel(PluginRobertaModel):
    """ELC-BERT / LTG-BERT masked LM with RobertaModel's hub, heads and loading."""

    config_class = ElcBertConfig
    encoder_class = ElcBertEncoder

    def __init__(self, args, encoder):
        super().__init__(args, encoder)
        encoder.sentence_encoder.reset_parameters()  # RobertaModel re-initialised everything BERT-style
        for name, p in self.named_parameters():
            p.no_weight_decay = any(key in name for key in NO_DECAY_NAMES)


def elc_defaults(args, variant, **sizes):
    for key, value in {"elc_variant": variant, "dropout": 0.1, "attention_dropout": 0.1, **sizes}.items():
        if safe_getattr(args, key) is None:
            setattr(args, key, value)
    ElcBertModel.fill_defaults(args)


SIZES = {
    "tiny": dict(encoder_layers=2, encoder_embed_dim=32, encoder_ffn_embed_dim=64, encoder_attention_heads=2),
    "small": dict(encoder_layers=12, encoder_embed_dim=384, encoder_ffn_embed_dim=1024, encoder_attention_heads=6),
    "base": dict(encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=2048, encoder_attention_heads=12),
}
# ltg_bert_{size} is the baseline; elc_bert_{variant}_{size} the four ELC variants.
for _size, _shape in SIZES.items():
    register_model_architecture("elc_bert", f"ltg_bert_{_size}")(functools.partial(elc_defaults, variant="none", **_shape))
    for _variant in VARIANTS[1:]:
        register_model_architecture("elc_bert", f"elc_bert_{_variant}_{_size}")(
            functools.partial(elc_defaults, variant=_variant, **_shape))
