"""RoBERTa with the CLAP head, ALiBi and zero-vector masking (the EIFY/fairseq experiments).

The original (github.com/EIFY/fairseq, README "CLAP" and "ALiBi") patched fairseq's own files;
here the same models come from subclasses of ``RobertaModel`` / ``RobertaEncoder`` /
``TransformerEncoder`` registered under the name ``roberta_ext``:

* ALiBi (Press et al., 2022, arXiv:2108.12409) in its bidirectional form, symmetric or
  asymmetric, built once per forward as an (H, T, T) bias and applied through SDPA
  (``fairseq_ext.modules.alibi``). Every variant uses the same SDPA encoder layer.
* CLAP head: logits = beta * f . normalize(E)^T with the tied embedding E and a learned scalar
  beta, no dense/GELU/LN/bias (EIFY/fairseq ``ClapHead``).
* L2-normalised input embeddings, optional sqrt(d) scaling, optional embedding LayerNorm,
  learned / sinusoidal / no token positions.
* Zero-vector masking: ``<mask>`` is not a vocabulary row; its id (the vocabulary size) gives
  an exact zero input vector. Self-masking zeroes a random subset of inputs inside the model.
"""
import logging
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.models import register_model, register_model_architecture
from fairseq.models.roberta import RobertaEncoder, RobertaModel
from fairseq.models.roberta.model import RobertaLMHead, base_architecture
from fairseq.models.transformer import TransformerEncoder
from fairseq.modules import PositionalEmbedding
from fairseq.modules.checkpoint_activations import checkpoint_wrapper
from fairseq.modules.transformer_sentence_encoder import init_bert_params
from fairseq.utils import safe_getattr, safe_hasattr

from fairseq_ext.modules.alibi import alibi_bias, alibi_slopes
from fairseq_ext.flops import DEFAULT_MASK_PROB
from fairseq_ext.models._common import (PluginConfig, add_config_args, fill_config_defaults, fill_unset,
                                        register_presets, writable_options)
from fairseq_ext.models._roberta_family import PluginRobertaModel
from fairseq_ext.modules.biased_encoder_layer import BiasedEncoderLayer

logger = logging.getLogger(__name__)

POSITIONS = ("learned", "sinusoidal", "none")
MASK_SYMBOL = "<mask>"
# Checkpoint format of this model: 1 = the stub (stock RoBERTa under this name), 2 = now.
VERSION = 2


@dataclass
class RobertaExtConfig(PluginConfig):
    """Options added to stock RoBERTa's (which keep their fairseq names and meaning).

    Booleans take a value on the command line (``--clap-head true``), as every option of the
    plugin (``fairseq_ext.models._common``), so each switches both ways.
    """

    alibi: bool = field(default=False, metadata={
        "help": "ALiBi attention biases (Press et al. 2022, arXiv:2108.12409; EIFY/fairseq "
                "--alibi); needs --positions none"})
    alibi_asymmetric: bool = field(default=True, metadata={
        "help": "asymmetric ALiBi: keys right of the query are penalised half a slope less "
                "(EIFY/fairseq --encoder-alibi-asymmetrical, ofirpress/attention_with_linear_"
                "biases#5); False gives the symmetric -m|i-j|"})
    alibi_max_positions: int = field(default=0, metadata={
        "help": "longest input an ALiBi model accepts (it extrapolates, Press et al. 2022 "
                "section 4); 0 means 4 x --max-positions. Can be raised at load time "
                "(from_pretrained(..., alibi_max_positions=N))"})
    positions: str = field(default="learned", metadata={
        "choices": POSITIONS,
        "help": "token positions added to the input: learned (RoBERTa), sinusoidal (Vaswani "
                "et al. 2017; EIFY/fairseq sinusoidal ablation) or none (with ALiBi)"})
    scale_embedding: bool = field(default=False, metadata={
        "help": "multiply input embeddings by sqrt(d) (Vaswani et al. 2017); off in RoBERTa, "
                "on in EIFY/fairseq zero-clap (no_scale_embedding: false)"})
    embed_layernorm: bool = field(default=True, metadata={
        "help": "LayerNorm on the input embeddings (RoBERTa's layernorm_embedding; off in all "
                "EIFY/fairseq CLAP configs). Overrides fairseq's store-true --layernorm-embedding"})
    clap_head: bool = field(default=False, metadata={
        "help": "CLAP head: logits = beta * f . normalize(E)^T with tied embeddings E and a "
                "learned scalar beta, no dense/GELU/LN/bias (EIFY/fairseq "
                "--contrastive-pretraining)"})
    initial_beta: float = field(default=1.0, metadata={
        "help": "initial value of the CLAP head's learned inverse temperature beta "
                "(EIFY/fairseq --initial-beta)"})
    l2norm_embedding: bool = field(default=False, metadata={
        "help": "L2-normalise the input token embeddings (EIFY/fairseq --l2norm-embedding); "
                "defaults to the value of --clap-head"})
    zero_mask: bool = field(default=False, metadata={
        "help": "masked inputs are exact zero vectors and <mask> is no vocabulary row: ids >= "
                "the vocabulary size (a trailing <mask> of the dictionary included) are zeroed "
                "(EIFY/fairseq --zero-masking with omit_mask)"})
    self_mask_prob: float = field(default=0.0, metadata={
        "help": "self-masking: in training the model zeroes a Bernoulli(p) subset of the inputs "
                "(EIFY/fairseq model mask_prob, zero_clap_self_masking.yaml); needs --zero-mask "
                "and task masked_lm_ext with --mask-prob 0 so every token is a target. Validation "
                "(masked_lm_ext) zeroes a fixed Bernoulli(p) subset too, so the valid loss is the "
                "denoising loss, as in EIFY/fairseq; inference (fill_mask, extract_features) never masks"})


def model_vocab_size(args, dictionary) -> int:
    """Embedding rows / output classes. With --zero-mask a trailing ``<mask>`` (added by the
    stock masked_lm and sentence_prediction tasks) is not a row: its id is the zero-mask id."""
    if not args.zero_mask or MASK_SYMBOL not in dictionary:
        return len(dictionary)
    if dictionary.index(MASK_SYMBOL) != len(dictionary) - 1:
        raise ValueError(f"--zero-mask needs {MASK_SYMBOL} to be absent from the dictionary or "
                         "its last symbol (remove it from dict.txt)")
    return len(dictionary) - 1


class ClapHead(nn.Module):
    """CLAP masked-LM head: logits = beta * f . normalize(E)^T (EIFY/fairseq ``ClapHead``)."""

    def __init__(self, weight: nn.Parameter, initial_beta: float):
        super().__init__()
        self.weight = weight  # (V, C), tied to the input embeddings
        self.beta = nn.Parameter(torch.tensor(float(initial_beta)))

    def forward(self, features, masked_tokens=None, **unused):
        if masked_tokens is not None:
            features = features[masked_tokens, :]  # only the predicted positions: (N, C)
        return self.beta * F.linear(features, F.normalize(self.weight, dim=-1))


class RobertaExtSentenceEncoder(TransformerEncoder):
    """fairseq's TransformerEncoder with the CLAP/zero-mask input side, SDPA layers and ALiBi.

    Layers run batch-first; returned states keep fairseq's (T, B, C) contract.
    """

    def __init__(self, args, dictionary, embed_tokens):
        super().__init__(args, dictionary, embed_tokens)
        if embed_tokens.padding_idx is None:
            # normalised embeddings keep a learnable pad row (see RobertaExtEncoder), so the
            # padding id comes from the dictionary, and positions are rebuilt with it
            self.padding_idx = dictionary.pad()
            self.embed_positions = None if args.positions == "none" else PositionalEmbedding(
                args.max_positions, embed_tokens.embedding_dim, self.padding_idx,
                learned=args.positions == "learned")
        self.l2norm_embedding = args.l2norm_embedding
        self.zero_mask = args.zero_mask
        self.self_mask_prob = args.self_mask_prob
        self.alibi_asymmetric = args.alibi_asymmetric
        self.max_input_positions = max_input_positions(args)
        self.reference_attention = False  # tests switch layers to the explicit-softmax path
        slopes = alibi_slopes(args.encoder_attention_heads) if args.alibi else None
        self.register_buffer("alibi_slopes", slopes, persistent=False)

    def build_encoder_layer(self, cfg):
        layer = BiasedEncoderLayer(self.args)
        return checkpoint_wrapper(layer) if cfg.checkpoint_activations else layer

    def zeroed_inputs(self, src_tokens):
        """(B, T) bool: inputs replaced by the zero vector (mask ids, self-masking), or None."""
        if not self.zero_mask:
            return None
        zeroed = src_tokens >= self.embed_tokens.num_embeddings
        if self.training and self.self_mask_prob > 0:
            draw = torch.rand(src_tokens.shape, device=src_tokens.device) < self.self_mask_prob
            zeroed = zeroed | (draw & src_tokens.ne(self.padding_idx))
        return zeroed

    def forward_embedding(self, src_tokens, token_embedding=None):
        if token_embedding is None:
            ids = src_tokens.clamp(max=self.embed_tokens.num_embeddings - 1) if self.zero_mask else src_tokens
            token_embedding = self.embed_tokens(ids)
        if self.l2norm_embedding:
            token_embedding = F.normalize(token_embedding, dim=-1)
        x = embed = self.embed_scale * token_embedding
        zeroed = self.zeroed_inputs(src_tokens)
        if zeroed is not None:
            x = embed = x.masked_fill(zeroed.unsqueeze(-1), 0.0)
        if self.embed_positions is not None:
            x = x + self.embed_positions(src_tokens)
        if self.layernorm_embedding is not None:
            x = self.layernorm_embedding(x)
        x = self.dropout_module(x)
        if self.quant_noise is not None:
            x = self.quant_noise(x)
        return x, embed

    def attention_bias(self, seq_len: int):
        """(H, T, T) ALiBi bias, built once per forward and shared by every layer, or None."""
        if self.alibi_slopes is None:
            return None
        return alibi_bias(self.alibi_slopes, seq_len, self.alibi_asymmetric)

    def forward(self, src_tokens, src_lengths=None, return_all_hiddens=False, token_embeddings=None):
        bsz, seq_len = src_tokens.shape
        if seq_len > self.max_input_positions:
            raise ValueError(f"input of {seq_len} tokens is longer than the model accepts "
                             f"({self.max_input_positions}; --max-positions, or "
                             "--alibi-max-positions for ALiBi models)")
        padding_mask = src_tokens.eq(self.padding_idx)  # (B, T)
        has_pads = bool(padding_mask.any())
        x, embed = self.forward_embedding(src_tokens, token_embeddings)  # (B, T, C)
        if has_pads:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        bias = self.attention_bias(seq_len)
        layer_mask = padding_mask if has_pads else None

        states = [x.transpose(0, 1)] if return_all_hiddens else []
        for layer in self.layers:
            x = layer(x, layer_mask, bias, self.reference_attention)
            if return_all_hiddens:
                states.append(x.transpose(0, 1))
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return {
            "encoder_out": [x.transpose(0, 1)],  # (T, B, C)
            "encoder_padding_mask": [padding_mask],
            "encoder_embedding": [embed],  # (B, T, C)
            "encoder_states": states,  # list of (T, B, C)
            "fc_results": [],
            "src_tokens": [],
            "src_lengths": [(~padding_mask).sum(dim=1, dtype=torch.int32).reshape(-1, 1)],
        }


def max_input_positions(args) -> int:
    """Longest input: --max-positions, or the ALiBi extrapolation limit."""
    if not args.alibi:
        return args.max_positions
    return args.alibi_max_positions or 4 * args.max_positions


class RobertaExtEncoder(RobertaEncoder):
    """RobertaEncoder whose builders give the vocabulary rule, the encoder and the head above."""

    @property
    def vocab_size(self) -> int:
        return model_vocab_size(self.args, self.dictionary)

    def build_embedding(self, vocab_size, embedding_dim, padding_idx):
        # RobertaEncoder passes len(dictionary); with --zero-mask <mask> is no row. A zero pad
        # row cannot be L2-normalised (its normalize() gradient is 1/eps through the tied CLAP
        # head), so normalised embeddings keep a random, learnable pad row, as EIFY/fairseq.
        if self.args.clap_head or self.args.l2norm_embedding:
            padding_idx = None
        return nn.Embedding(self.vocab_size, embedding_dim, padding_idx)

    def build_encoder(self, args, dictionary, embed_tokens):
        encoder = RobertaExtSentenceEncoder(args, dictionary, embed_tokens)
        encoder.apply(init_bert_params)
        return encoder

    def build_lm_head(self, embed_dim, output_dim, activation_fn, weight):
        if self.args.clap_head:
            if weight is None:  # --untie-weights-roberta
                weight = nn.Linear(embed_dim, self.vocab_size, bias=False).weight
            return ClapHead(weight, self.args.initial_beta)
        return RobertaLMHead(embed_dim, self.vocab_size, activation_fn, weight)

    def max_positions(self):
        return max_input_positions(self.args)


@register_model("roberta_ext")
class RobertaExtModel(PluginRobertaModel):
    """RoBERTa with the options of ``RobertaExtConfig``; see the module docstring. The forward
    (bf16 autocast, clean inference logits) is the plugin's common one."""

    config_class = RobertaExtConfig
    encoder_class = RobertaExtEncoder

    def __init__(self, args, encoder):
        super().__init__(args, encoder)
        self.register_buffer("version", torch.tensor([VERSION]))

    @classmethod
    def add_args(cls, parser):
        RobertaModel.add_args(parser)
        add_config_args(parser, RobertaExtConfig)

    @classmethod
    def build_model(cls, args, task):
        with writable_options(args):
            roberta_ext_base_architecture(args)
            if not safe_hasattr(args, "max_positions"):
                args.max_positions = safe_getattr(args, "tokens_per_sample", task.max_positions())
            validate_args(args)
            encoder = cls.encoder_class(args, task.source_dictionary)
        return cls(args, encoder)

    def flops_per_token(self, seq_len: int, mask_prob: float = DEFAULT_MASK_PROB) -> float:
        """Training FLOPs per token (3 x forward; matmuls 2mnk). Attention: 4 projections
        (8d^2) plus scores and weighted sum (4Td) per layer; FFN 4df; the LM head runs on the
        predicted positions only (a share mask_prob, or all of them with self-masking)."""
        a = self.args
        d, f = a.encoder_embed_dim, a.encoder_ffn_embed_dim
        layer = 8 * d * d + 4 * seq_len * d + 4 * d * f
        head = 2 * d * self.encoder.vocab_size + (0 if a.clap_head else 2 * d * d)
        fraction = 1.0 if a.self_mask_prob > 0 else mask_prob
        return 3.0 * (a.encoder_layers * layer + fraction * head)

    def upgrade_state_dict_named(self, state_dict, name):
        """Read the checkpoint's format version (no buffer: version 1, the stub) before
        recording the current one, so old checkpoints are recognised and newer ones refused.
        Version 1 (stock RoBERTa layers) has the same parameter names: nothing to rename."""
        prefix = name + "." if name else ""
        stored = state_dict.get(prefix + "version")
        found = 1 if stored is None else int(stored.item())
        if found > VERSION:
            raise ValueError(f"roberta_ext checkpoint of format version {found}: this code reads "
                             f"versions up to {VERSION}; update fairseq_ext")
        if found < VERSION:
            logger.info("upgrading a roberta_ext checkpoint from format version %d to %d", found, VERSION)
        state_dict[prefix + "version"] = torch.tensor([VERSION])
        super().upgrade_state_dict_named(state_dict, name)


def validate_args(args):
    """Clear errors, naming the option, for combinations the model cannot run."""
    if args.positions not in POSITIONS:
        raise ValueError(f"--positions must be one of {POSITIONS}, got {args.positions!r}")
    if args.alibi and args.positions != "none":
        raise ValueError("--alibi replaces token positions: use --positions none "
                         f"(got {args.positions!r})")
    if not 0.0 <= args.self_mask_prob < 1.0:
        raise ValueError(f"--self-mask-prob must be in [0, 1), got {args.self_mask_prob}")
    if args.self_mask_prob > 0 and not args.zero_mask:
        raise ValueError("--self-mask-prob zeroes inputs and needs --zero-mask True")
    if args.alibi_max_positions and args.alibi_max_positions < args.max_positions:
        raise ValueError(f"--alibi-max-positions ({args.alibi_max_positions}) must be 0 or at "
                         f"least --max-positions ({args.max_positions})")


@register_model_architecture("roberta_ext", "roberta_ext")
def roberta_ext_base_architecture(args):
    """Defaults of RobertaExtConfig, mapped onto fairseq's own option names, then RoBERTa's."""
    args.l2norm_embedding = safe_getattr(args, "l2norm_embedding", safe_getattr(args, "clap_head", False))
    args.embed_layernorm = safe_getattr(args, "embed_layernorm", safe_getattr(args, "layernorm_embedding", True))
    fill_config_defaults(args, RobertaExtConfig)
    args.no_token_positional_embeddings = args.positions == "none"
    args.encoder_learned_pos = args.positions == "learned"
    args.layernorm_embedding = args.embed_layernorm
    args.no_scale_embedding = not args.scale_embedding
    base_architecture(args)


SIZES = {
    "tiny": dict(encoder_layers=2, encoder_embed_dim=64, encoder_ffn_embed_dim=128, encoder_attention_heads=2),
    "small": dict(encoder_layers=4, encoder_embed_dim=256, encoder_ffn_embed_dim=1024, encoder_attention_heads=4),
    "base": dict(encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072, encoder_attention_heads=12),
    "large": dict(encoder_layers=24, encoder_embed_dim=1024, encoder_ffn_embed_dim=4096, encoder_attention_heads=16),
}
# The published variants (EIFY/fairseq examples/roberta/config/pretraining/*_pile.yaml).
VARIANTS = {
    "baseline": dict(),
    "learned_clap": dict(clap_head=True, embed_layernorm=False, dropout=0.0),
    "alibi": dict(alibi=True, positions="none"),
    "zero_clap": dict(alibi=True, positions="none", clap_head=True, zero_mask=True,
                      embed_layernorm=False, scale_embedding=True, dropout=0.0),
    "sinusoidal": dict(positions="sinusoidal"),
}


def fill_preset(args, **preset):
    """A preset's values (options already set win), then the defaults of everything else."""
    fill_unset(args, preset)
    roberta_ext_base_architecture(args)


register_presets("roberta_ext", {f"roberta_ext_{variant}_{size}": {**SIZES[size], **VARIANTS[variant]}
                                 for variant in VARIANTS for size in SIZES}, fill_preset)
