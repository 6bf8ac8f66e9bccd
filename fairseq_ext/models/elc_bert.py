"""ELC-BERT and LTG-BERT masked LMs.

LTG-BERT (Samuel et al. 2023, arXiv:2303.09859): no absolute positions, disentangled relative
attention with log buckets (``fairseq_ext.modules.relative_attention``), GeGLU feed-forward,
pre-LN without affine parameters, depth-scaled init. ELC-BERT (Charpentier & Samuel 2023,
"Not all layers are equally as important: Every Layer Counts BERT", arXiv:2311.02265,
ltgoslo/elc-bert) feeds each layer a learned softmax mixture of all earlier layer outputs
(``fairseq_ext.modules.layer_mixing``), in four variants as the original files
``model_elc_bert_{base,zero,normalized,weighted_output}.py``; ``--elc-variant none`` is plain
LTG-BERT. States are sequence-first (T, B, d) as in the original and in fairseq's
``inner_states``; for ``weighted_output`` they end with the output mixture the head reads.

    fairseq-train DATA --user-dir fairseq_ext --task elc_span_masked_lm --criterion elc_masked_lm \
        --arch elc_bert_small --optimizer lamb_elc --lr-scheduler elc_cosine ...
"""
import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.models import register_model
from fairseq.models.roberta import RobertaEncoder

from fairseq_ext.models._common import PluginConfig, register_presets
from fairseq_ext.models._roberta_family import PluginRobertaModel, encoder_output
from fairseq_ext.modules.layer_mixing import VARIANTS, LayerHistory, LayerMixing
from fairseq_ext.modules.relative_attention import RelativeAttention

ELC_VARIANTS = ("none",) + VARIANTS
# parameter-name parts that get no weight decay (original: bias, layer_norm, embedding, prev_layer_weights)
NO_DECAY_KEYS = ("bias", "norm", "embed", "relative_table", "layer_weights")


@dataclass
class ElcBertConfig(PluginConfig):
    """ELC-BERT / LTG-BERT options (ltgoslo/elc-bert ``configs/{base,small}.json``); sizes use
    fairseq's names (--encoder-embed-dim, --encoder-layers, --encoder-ffn-embed-dim, ...)."""

    elc_variant: str = field(default="base", metadata={
        "help": f"layer weighting, one of {ELC_VARIANTS}: 'none' = plain LTG-BERT (residual stack); "
                "'base' = α init [0..0,1], layer f(x)=a+FFN(a); 'zero' = α init 0, f(x)=a+FFN(x+a); "
                "'normalized' = as zero then LayerNorm; 'weighted_output' = as zero, and the head reads "
                "a learned mixture of all layers (model_elc_bert_*.py of ltgoslo/elc-bert)"})
    position_bucket_size: int = field(default=32, metadata={
        "help": "K: relative positions fall in 2K-1 log buckets, exact up to ±K/2 (LTG-BERT position_bucket_size)"})
    layer_norm_eps: float = field(default=1e-7, metadata={"help": "LayerNorm epsilon (configs/*.json layer_norm_eps)"})


def truncated_normal_(weight: torch.Tensor, std: float) -> None:
    nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)


class GeGLU(nn.Module):
    """u = LN(x); [a|g] = W1 u; out = Dropout(W2 LN_ff(a · gelu_tanh(g))) (LTG-BERT FeedForward)."""

    def __init__(self, embed_dim, ffn_dim, dropout, eps):
        super().__init__()
        self.pre_norm = nn.LayerNorm(embed_dim, eps=eps, elementwise_affine=False)
        self.fc1 = nn.Linear(embed_dim, 2 * ffn_dim, bias=False)
        self.mid_norm = nn.LayerNorm(ffn_dim, eps=eps, elementwise_affine=False)
        self.fc2 = nn.Linear(ffn_dim, embed_dim, bias=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        a, gate = self.fc1(self.pre_norm(x)).chunk(2, dim=-1)
        return self.dropout(self.fc2(self.mid_norm(a * F.gelu(gate, approximate="tanh"))))


class LtgLayer(nn.Module):
    """One layer; what it returns depends on the variant (ALGORITHMS §2.2):
    none: x+a+FFN(x+a); base: a+FFN(a); zero/weighted_output: a+FFN(x+a); normalized: LN(a+FFN(x+a))."""

    def __init__(self, args):
        super().__init__()
        d, eps = args.encoder_embed_dim, args.layer_norm_eps
        self.variant = args.elc_variant
        # --attention-dropout inside the attention (original attention_probs_dropout_prob),
        # --dropout in the feed-forward (hidden_dropout_prob)
        self.attention = RelativeAttention(d, args.encoder_attention_heads, args.position_bucket_size,
                                           args.attention_dropout, eps,
                                           length_follows_query=self.variant in ("base", "normalized"))
        self.ffn = GeGLU(d, args.encoder_ffn_embed_dim, args.dropout, eps)
        self.out_norm = nn.LayerNorm(d, eps=eps, elementwise_affine=False) if self.variant == "normalized" else None

    def forward(self, x, relative_table, key_padding_mask, reference=False):
        attend = self.attention.forward_reference if reference else self.attention
        a = attend(x, relative_table, key_padding_mask)
        if self.variant == "none":
            x = x + a
            return x + self.ffn(x)
        if self.variant == "base":
            return a + self.ffn(a)
        out = a + self.ffn(x + a)
        return self.out_norm(out) if self.out_norm is not None else out


class ElcSentenceEncoder(nn.Module):
    """Embedding h0 = Dropout(LN(W_tok x)) (no positions), then the layers, each reading the
    ELC mixture of h_0..h_ℓ (or the previous output for plain LTG-BERT)."""

    def __init__(self, args, dictionary, embed_tokens):
        super().__init__()
        if args.elc_variant not in ELC_VARIANTS:
            raise ValueError(f"--elc-variant must be one of {ELC_VARIANTS}, got {args.elc_variant!r}")
        if args.position_bucket_size < 4 or args.position_bucket_size % 2:
            raise ValueError(f"--position-bucket-size must be an even number >= 4, got {args.position_bucket_size}")
        if args.encoder_layers < 1:
            raise ValueError(f"--encoder-layers must be >= 1, got {args.encoder_layers}")
        d, eps = args.encoder_embed_dim, args.layer_norm_eps
        self.variant = args.elc_variant
        self.padding_idx = dictionary.pad()
        self.embed_tokens = embed_tokens
        self.embed_norm = nn.LayerNorm(d, eps=eps, elementwise_affine=False)
        self.dropout = nn.Dropout(args.dropout)
        self.relative_table = nn.Parameter(torch.empty(2 * args.position_bucket_size - 1, d))
        self.relative_norm = nn.LayerNorm(d, eps=eps)
        self.layers = nn.ModuleList(LtgLayer(args) for _ in range(args.encoder_layers))
        weighted = self.variant != "none"
        self.mixings = nn.ModuleList(LayerMixing(self.variant, i + 1) for i in range(len(self.layers))) if weighted else None
        self.output_mixing = LayerMixing("zero", len(self.layers) + 1) if self.variant == "weighted_output" else None
        self.reset_parameters(d)

    def reset_parameters(self, d):
        """Truncated normal σ = sqrt(2/(5d)) at ±2σ, zero biases, FFN of layer ℓ scaled by
        sqrt(1/(2(ℓ+1))) (original ``Bert.initialize`` and ``Encoder.__init__``)."""
        std = math.sqrt(2.0 / (5.0 * d))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                truncated_normal_(module.weight, std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        truncated_normal_(self.embed_tokens.weight, std)
        truncated_normal_(self.relative_table, std)
        for i, layer in enumerate(self.layers):
            with torch.no_grad():
                layer.ffn.fc1.weight.mul_(math.sqrt(1.0 / (2.0 * (i + 1))))
                layer.ffn.fc2.weight.mul_(math.sqrt(1.0 / (2.0 * (i + 1))))

    def forward(self, src_tokens, return_all_hiddens=False, token_embeddings=None, reference=False):
        padding_mask = src_tokens.eq(self.padding_idx)
        key_padding = padding_mask if padding_mask.any() else None
        embedded = self.embed_tokens(src_tokens) if token_embeddings is None else token_embeddings
        h = self.dropout(self.embed_norm(embedded)).transpose(0, 1)  # (T, B, d)
        table = self.relative_norm(self.relative_table)  # (2K−1, d)
        history = LayerHistory(h, len(self.layers) + 1, buffered=self.mixings is not None)
        for i, layer in enumerate(self.layers):
            if self.mixings is not None:
                h = history.mix(self.mixings[i], reference)
            h = layer(h, table, key_padding, reference)
            history.append(h)
        states = list(history.states)  # h_0 .. h_L, (T, B, d) each
        if self.output_mixing is not None:
            # the head reads a mixture of h_0 .. h_L; it ends the states, as in the original's
            # Encoder.forward, so inner_states[-1] is always what the head reads
            h = history.mix(self.output_mixing, reference)
            states.append(h)
        return encoder_output(h, padding_mask, states if return_all_hiddens else [])

    def flops_per_token(self, seq_len: int) -> float:
        """Forward FLOPs per token of the layers (GeGLU: d→2f and f→d) and the layer mixtures."""
        d = self.embed_tokens.weight.size(1)
        f = self.layers[0].ffn.fc2.in_features
        per_layer = self.layers[0].attention.flops_per_token(seq_len) + 2.0 * 3 * d * f
        n = len(self.layers)
        mixing = 2.0 * d * (n * (n + 1) / 2 + (n + 1 if self.output_mixing is not None else 0)) if self.mixings else 0.0
        return n * per_layer + mixing


class ElcLMHead(nn.Module):
    """LN → dense → GELU → LN → dropout → tied projection + bias, on masked positions only
    (ELC-BERT ``MaskClassifier``; its LayerNorms have no affine parameters). Initialised here, as
    the original's ``MaskClassifier.initialize``: dense truncated normal σ = sqrt(2/(5d)) at ±2σ,
    zero biases."""

    def __init__(self, embed_dim, weight, dropout, eps):
        super().__init__()
        self.norm_in = nn.LayerNorm(embed_dim, eps=eps, elementwise_affine=False)
        self.dense = nn.Linear(embed_dim, embed_dim)
        self.norm_out = nn.LayerNorm(embed_dim, eps=eps, elementwise_affine=False)
        self.dropout = nn.Dropout(dropout)
        self.weight = weight
        self.bias = nn.Parameter(torch.zeros(weight.size(0)))
        truncated_normal_(self.dense.weight, math.sqrt(2.0 / (5.0 * embed_dim)))
        nn.init.zeros_(self.dense.bias)

    def forward(self, features, masked_tokens=None, **unused):
        if masked_tokens is not None:
            features = features[masked_tokens, :]
        x = self.dropout(self.norm_out(F.gelu(self.dense(self.norm_in(features)))))
        return F.linear(x, self.weight) + self.bias

    def flops_per_token(self) -> float:
        d = self.dense.in_features
        return 2.0 * d * d + 2.0 * d * self.weight.size(0)


class ElcEncoder(RobertaEncoder):
    """RoBERTa's d-wide embedding; LTG-BERT's encoder and head."""

    def build_encoder(self, args, dictionary, embed_tokens):
        return ElcSentenceEncoder(args, dictionary, embed_tokens)

    def build_lm_head(self, embed_dim, output_dim, activation_fn, weight):
        if weight is None:
            raise ValueError("--untie-weights-roberta is not supported: ELC-BERT ties the head to the embedding")
        return ElcLMHead(embed_dim, weight, self.args.dropout, self.args.layer_norm_eps)


@register_model("elc_bert")
class ElcBertModel(PluginRobertaModel):
    """ELC-BERT / LTG-BERT masked LM; RobertaModel's hub (fill_mask) and heads work unchanged."""

    config_class = ElcBertConfig
    encoder_class = ElcEncoder

    bert_init = False  # the encoder and the head initialise themselves, as the original's modules

    @classmethod
    def layer_pruning_refusal(cls, args):
        """LTG-BERT's layers only read the previous output: pruning them is exact. ELC weights
        mix every earlier layer's output, so a kept layer would read a different mixture."""
        if args.elc_variant == "none":
            return None
        return (f"--elc-variant {args.elc_variant}: each layer's weights mix the outputs of all earlier "
                "layers; only --elc-variant none (ltg_bert_*) can be pruned")

    def __init__(self, args, encoder):
        super().__init__(args, encoder)
        for name, param in self.named_parameters():
            # read by the lamb_elc optimizer: the original's no-decay parameter groups
            param.no_weight_decay = any(key in name for key in NO_DECAY_KEYS)

    def layer_weights(self):
        """softmax(α_ℓ) of every layer (for logging / debugging, ALGORITHMS §2.6)."""
        mixings = self.encoder.sentence_encoder.mixings or []
        return [m.weights().detach() for m in mixings]


SIZES = {
    "tiny": dict(encoder_embed_dim=32, encoder_layers=3, encoder_attention_heads=4, encoder_ffn_embed_dim=64),
    # configs/small.json
    "small": dict(encoder_embed_dim=384, encoder_layers=12, encoder_attention_heads=6, encoder_ffn_embed_dim=1024),
    # configs/base.json
    "base": dict(encoder_embed_dim=768, encoder_layers=12, encoder_attention_heads=12, encoder_ffn_embed_dim=2048),
}


def arch_name(variant: str, size: str) -> str:
    """``ltg_bert_<size>`` (no weighting), ``elc_bert_<size>`` (the 'base' variant, the paper's
    ELC-BERT) and ``elc_bert_<variant>_<size>``: no name mixes a variant with a size name."""
    if variant == "none":
        return f"ltg_bert_{size}"
    return f"elc_bert_{size}" if variant == "base" else f"elc_bert_{variant}_{size}"


PRESETS = {arch_name(variant, size): dict(elc_variant=variant, **dims)
           for size, dims in SIZES.items() for variant in ELC_VARIANTS}
# names before the rename (checkpoints name their arch): elc_bert_base_<size> -> elc_bert_<size>
RENAMED = {f"elc_bert_base_{size}": f"elc_bert_{size}" for size in SIZES}

register_presets("elc_bert", PRESETS,
                 lambda args, **preset: ElcBertModel.fill_defaults(
                     args, dropout=0.1, attention_dropout=0.1, max_positions=4096, **preset),
                 aliases=RENAMED)
