"""Transformer-XL with a sliding window: Meliad's baseline decoder for long documents.

After google-research/meliad (``transformer/decoder_stack.py``, ``transformer_layer.py``;
ALGORITHMS.md §3.1-3.2), the baseline of the Memorizing Transformer (Wu et al. 2022) and the
Block-Recurrent Transformer (Hutchins et al. 2022): pre-norm layers with an RMS norm, no absolute
positions but a per-layer T5 bias, unit-normalised queries and keys with a learned per-head scale,
strictly causal attention over the W tokens before each token (``modules.window_attention``),
the last window's keys and values cached for the next segment (truncated BPTT, one cache per
mode), tied input/output embeddings. Trains over documents streamed in order by the
``long_document_lm`` task, which tells the model where a document starts.

    fairseq-train DATA --user-dir fairseq_ext --task long_document_lm --tokens-per-sample 512 \
        --arch txl_sliding_window_small --criterion cross_entropy --batch-size 8 ...

A checkpoint holds the weights and the training cache (so a resumed run continues the stream
exactly); the evaluation cache always starts empty. Incremental decoding (``.sample()``,
``fairseq-generate``) keeps the last W keys and values of every layer.
"""
import math
from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.incremental_decoding_utils import with_incremental_state
from fairseq.models import FairseqIncrementalDecoder, FairseqLanguageModel, register_model
from fairseq.utils import safe_getattr

from fairseq_ext.models._common import (PluginConfig, add_config_args, check_dictionary_matches, fill_config_defaults,
                                        register_presets, writable_options)
from fairseq_ext.modules.autocast import bf16_autocast
from fairseq_ext.modules.meliad_init import linear
from fairseq_ext.modules.mode_state import ModeState
from fairseq_ext.modules.t5_relative_bias import T5RelativeBias
from fairseq_ext.modules.tiled_dropout import TiledDropout
from fairseq_ext.modules.window_attention import (allowed_keys, attend, logit_bias,
                                                  sliding_window_attention, sliding_window_attention_reference,
                                                  unit_normalise, with_null_key)

RMS_NORM_EPS = 1e-6  # Meliad nn_components.LayerNorm (use_mean=False, use_bias=False)
LOGIT_DIVISORS = ("vocab", "embed_dim")


@dataclass
class TxlConfig(PluginConfig):
    """Options of the sliding-window Transformer-XL; sizes use fairseq's decoder names."""

    decoder_layers: int = field(default=12, metadata={"help": "number of layers"})
    decoder_embed_dim: int = field(default=512, metadata={"help": "model width d"})
    decoder_attention_heads: int = field(default=8, metadata={"help": "attention heads H"})
    attention_head_dim: int = field(default=64, metadata={
        "help": "width d_h of one head (Meliad sets it apart from d: H·d_h need not equal d)"})
    decoder_ffn_embed_dim: int = field(default=2048, metadata={"help": "hidden width of the ReLU MLP"})
    window_length: int = field(default=512, metadata={
        "help": "W: each token attends to the W tokens before it; --tokens-per-sample must be a multiple of W"})
    xl_cache: bool = field(default=True, metadata={
        "help": "carry the last window's keys and values to the next segment of the same document "
                "(Transformer-XL); false: every segment starts without a past (its first window "
                "attends only inside itself)"})
    relative_position_buckets: int = field(default=32, metadata={"help": "buckets of the T5 relative bias"})
    relative_position_max_distance: int = field(default=128, metadata={
        "help": "distance at which the T5 buckets stop growing"})
    dropout: float = field(default=0.05, metadata={
        "help": "tiled dropout (one mask per 128 positions, shared across the batch) on the inputs "
                "of attention and MLP and on the final output"})
    attention_dropout: float = field(default=0.05, metadata={"help": "dropout on the attention weights"})
    logit_divisor: str = field(default="vocab", metadata={
        "choices": LOGIT_DIVISORS,
        "help": "logits = E·y / sqrt(V) ('vocab', Meliad's code of the papers, e8af054) or / sqrt(d) "
                "('embed_dim', Meliad HEAD)"})


def layer_indices(spec, num_layers: int, flag: str) -> List[int]:
    """Sorted 0-based layer indices from a comma list (negative ones count from the top); bad
    entries raise naming ``flag``."""
    indices = []
    for text in str(spec).split(","):
        try:
            index = int(text)
        except ValueError:
            raise ValueError(f"{flag} {spec!r}: {text!r} is not a layer index") from None
        if not -num_layers <= index < num_layers:
            raise ValueError(f"{flag} index {index} is out of range for --decoder-layers {num_layers} "
                             f"(allowed {-num_layers} ... {num_layers - 1})")
        indices.append(index % num_layers)
    if len(set(indices)) != len(indices):
        raise ValueError(f"{flag} {spec!r} names a layer twice")
    return sorted(indices)


def segment_length(args, task):
    """--tokens-per-sample L from the model's args or the task's config (None if neither has it)."""
    return safe_getattr(args, "tokens_per_sample") or getattr(getattr(task, "cfg", None), "tokens_per_sample", None)


@with_incremental_state
class WindowedSelfAttention(nn.Module):
    """Meliad's KVQ layer and sliding-window attention, with the segment cache (one per mode)
    and the incremental-decoding state (the last W keys and values)."""

    def __init__(self, args):
        super().__init__()
        d, H, d_h = args.decoder_embed_dim, args.decoder_attention_heads, args.attention_head_dim
        self.num_heads, self.head_dim, self.window = H, d_h, args.window_length
        self.xl_cache = args.xl_cache
        self.dropout_p = args.attention_dropout
        self.qkv = linear(d, 3 * H * d_h)
        self.out_proj = linear(H * d_h, d)
        self.scale = nn.Parameter(torch.ones(H))  # a_h, Meliad's learned attention scale
        self.relative_bias = T5RelativeBias(H, args.relative_position_buckets, args.relative_position_max_distance)
        self.cache = ModeState("the Transformer-XL cache")

    def project(self, x):
        """x (B, T, d) -> unit-normalised q, k and v, each (B, H, T, d_h)."""
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return unit_normalise(q), unit_normalise(k), v

    def previous_window(self, start_of_sequence, like: torch.Tensor):
        """(k, v) of the W tokens before this segment: the cache of this mode, zeros at document
        starts, or zeros for a call outside a stream (start_of_sequence None)."""
        B, H, _, D = like.shape
        empty = like.new_zeros(1, H, self.window, D)
        if start_of_sequence is None:
            return empty.expand(B, -1, -1, -1), empty.expand(B, -1, -1, -1)
        return self.cache.lanes_or_reset(self.training, start_of_sequence, (empty, empty))

    def segment_heads(self, q, k, v, start_of_sequence, reference: bool = False):
        """Local attention of a whole segment, (B, H, L, d_h); updates this mode's cache."""
        W = self.window
        prev = self.previous_window(start_of_sequence, k) if self.xl_cache else None
        if reference:
            out = sliding_window_attention_reference(q, k, v, prev, self.scale, self.relative_bias, W)
        else:
            out = sliding_window_attention(q, k, v, prev, self.scale, self.relative_bias, W,
                                           self.dropout_p if self.training else 0.0)
        if self.xl_cache and start_of_sequence is not None:
            self.cache.set(self.training, (k[:, :, -W:], v[:, :, -W:]))
        return out

    def step_heads(self, q, k, v, incremental_state):
        """Incremental decoding of one new token: q, k, v (B, H, 1, d_h)."""
        state = self.get_incremental_state(incremental_state, "window") or {}
        B, H, _, D = k.shape
        prev_k = state.get("prev_key", k.new_zeros(B, H, self.window, D))
        prev_v = state.get("prev_value", v.new_zeros(B, H, self.window, D))
        seen = int(state.get("seen", torch.zeros(1))[0])
        keys, values = torch.cat([prev_k, k], 2), torch.cat([prev_v, v], 2)  # (B, H, W+1, D)
        allowed = allowed_keys(1, self.window + 1, self.window, k.device)
        if not self.xl_cache:  # no past before the first token: mask the slots not yet filled
            allowed[:, : max(self.window - seen, 0)] = False
        mask = logit_bias(self.scale, self.relative_bias(1, self.window + 1), allowed)
        if not self.xl_cache:
            keys, values, mask = with_null_key(keys, values, mask)
        out = attend(q * self.scale.view(1, H, 1, 1), keys, values, mask)
        self.set_incremental_state(incremental_state, "window", {
            "prev_key": keys[:, :, -self.window:], "prev_value": values[:, :, -self.window:],
            "seen": torch.tensor([seen + 1])})
        return out

    def forward(self, x, start_of_sequence=None, incremental_state=None, reference: bool = False):
        """x: (B, T, d) -> (B, T, d), the attention output before the residual."""
        q, k, v = self.project(x)
        if incremental_state is not None:
            heads = self.step_heads(q, k, v, incremental_state)
        else:
            heads = self.segment_heads(q, k, v, start_of_sequence, reference)
        B, H, T, D = heads.shape
        return self.out_proj(heads.transpose(1, 2).reshape(B, T, H * D))

    def reorder_incremental_state(self, incremental_state, new_order):
        state = self.get_incremental_state(incremental_state, "window")
        if state:
            state = {key: value if key == "seen" else value.index_select(0, new_order) for key, value in state.items()}
            self.set_incremental_state(incremental_state, "window", state)


class TxlLayer(nn.Module):
    """Pre-norm: x + W_O·attn(drop(norm(x))), then + MLP(drop(norm(·))), no biases (Meliad)."""

    def __init__(self, args, attention_class=None):
        super().__init__()
        d = args.decoder_embed_dim
        self.attention_norm = nn.RMSNorm(d, eps=RMS_NORM_EPS)
        self.attention = (attention_class or WindowedSelfAttention)(args)
        self.mlp_norm = nn.RMSNorm(d, eps=RMS_NORM_EPS)
        self.fc1 = linear(d, args.decoder_ffn_embed_dim)
        self.fc2 = linear(args.decoder_ffn_embed_dim, d)
        self.dropout = TiledDropout(args.dropout)

    def forward(self, x, start_of_sequence=None, incremental_state=None, reference: bool = False):
        x = x + self.attention(self.dropout(self.attention_norm(x)), start_of_sequence, incremental_state, reference)
        return self.feed_forward(x)

    def feed_forward(self, x):
        return x + self.dropout(self.fc2(F.relu(self.fc1(self.mlp_norm(x)))))


class TxlDecoder(FairseqIncrementalDecoder):
    """Token embedding (N(0, 1), tied to the output), the layers, RMS norm, tiled dropout, logits."""

    def __init__(self, args, dictionary):
        super().__init__(dictionary)
        d = args.decoder_embed_dim
        self.args = args
        self.window = args.window_length
        self.embed_tokens = nn.Embedding(len(dictionary), d, padding_idx=dictionary.pad())
        nn.init.normal_(self.embed_tokens.weight, std=1.0)  # Meliad embedding_stddev = 1.0
        self.layers = nn.ModuleList(self.build_layer(args, i) for i in range(args.decoder_layers))
        self.final_norm = nn.RMSNorm(d, eps=RMS_NORM_EPS)
        self.final_dropout = TiledDropout(args.dropout)
        self.logit_scale = 1.0 / math.sqrt(len(dictionary) if args.logit_divisor == "vocab" else d)

    def build_layer(self, args, index: int) -> TxlLayer:
        """Layer ``index`` (0-based); a family with special layers (memory) overrides this."""
        return TxlLayer(args)

    def forward(self, prev_output_tokens, start_of_sequence=None, incremental_state=None,
                features_only: bool = False, reference: bool = False, **unused):
        """prev_output_tokens: (B, T); start_of_sequence: (B,) bool, given by the long_document_lm
        task (lanes continue their documents from the cache; None: every row is a new document).
        Returns ((B, T, V) fp32 logits or (B, T, d) features, {"attn": [None]})."""
        with bf16_autocast(self.args.bf16_autocast, prev_output_tokens):
            x = self.extract_features(prev_output_tokens, start_of_sequence, incremental_state, reference)
            if not features_only:
                x = self.output_layer(x)
        return x.float(), {"attn": [None], "inner_states": None}

    def extract_features(self, tokens, start_of_sequence=None, incremental_state=None, reference=False):
        if incremental_state is not None:
            tokens = tokens[:, -1:]
        T = tokens.shape[1]
        tokens = self.pad_to_windows(tokens, start_of_sequence, incremental_state)
        x = self.run_layers(self.embed_tokens(tokens), start_of_sequence, incremental_state, reference)
        return self.final_dropout(self.final_norm(x))[:, :T]

    def run_layers(self, x, start_of_sequence=None, incremental_state=None, reference: bool = False):
        """The layers over the embedded tokens (B, T, d); a family that runs them differently overrides this."""
        for layer in self.layers:
            x = layer(x, start_of_sequence, incremental_state, reference)
        return x

    def pad_to_windows(self, tokens, start_of_sequence, incremental_state):
        """A call outside a stream may have any length: pad on the right to whole windows (the
        padding comes after every real token, so no real token sees it)."""
        T = tokens.shape[1]
        if incremental_state is not None or T % self.window == 0:
            return tokens
        if start_of_sequence is not None:
            raise ValueError(f"a streamed segment of {T} tokens is not a multiple of --window-length "
                             f"{self.window}: set --tokens-per-sample to a multiple of it")
        return F.pad(tokens, (0, self.window - T % self.window), value=self.dictionary.pad())

    def output_layer(self, features):
        return F.linear(features, self.embed_tokens.weight) * self.logit_scale

    def max_positions(self):
        return int(1e6)  # the window slides: any length (generation, eval-lm) is fine


@register_model("txl_lm")
class TxlLanguageModel(FairseqLanguageModel):
    """Sliding-window Transformer-XL causal LM (see the module docstring)."""

    config_class = TxlConfig

    @classmethod
    def add_args(cls, parser):
        add_config_args(parser, cls.config_class)

    @classmethod
    def fill_defaults(cls, args, **preset):
        fill_config_defaults(args, cls.config_class, preset)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        check_dictionary_matches(self, state_dict)
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)

    @classmethod
    def validate(cls, args, task):
        """Inconsistent options fail here, naming the option."""
        positive = ("decoder_layers", "decoder_embed_dim", "decoder_attention_heads", "attention_head_dim",
                    "decoder_ffn_embed_dim", "window_length")
        for name in positive:
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
        segment = segment_length(args, task)
        W = args.window_length
        if segment is not None and segment % W:
            raise ValueError(f"--tokens-per-sample {segment} must be a multiple of --window-length {W} "
                             "(each segment is split into windows)")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(args, name) < 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be in [0, 1), got {getattr(args, name)}")

    @classmethod
    def build_model(cls, args, task):
        with writable_options(args):
            cls.fill_defaults(args)
            cls.validate(args, task)
            return cls(cls.build_decoder(args, task))

    @classmethod
    def build_decoder(cls, args, task):
        return TxlDecoder(args, task.target_dictionary)

    def forward(self, src_tokens, src_lengths=None, start_of_sequence=None, **kwargs):
        return self.decoder(src_tokens, start_of_sequence=start_of_sequence, **kwargs)

    def reset_caches(self) -> None:
        """Forget every carried state (both modes)."""
        for module in self.modules():
            if isinstance(module, ModeState):
                module.clear()

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (3 × forward): projections, attention over the 2W keys each
        window computes, MLP and the tied output layer."""
        a = self.decoder.args
        d, hd = a.decoder_embed_dim, a.decoder_attention_heads * a.attention_head_dim
        keys = 2 * a.window_length
        per_layer = 2 * (4 * d * hd + 2 * d * a.decoder_ffn_embed_dim) + 4 * keys * hd
        return 3.0 * (a.decoder_layers * per_layer + 2 * d * len(self.decoder.dictionary))


def txl_preset(args, **preset) -> None:
    TxlLanguageModel.fill_defaults(args, **preset)


# Meliad configs/size/*.gin: small_37M (d 512, d_h 64, d_ff 2048) and medium_150M (d 1024, H 8,
# d_h 128, d_ff 4096), 12 layers, W 512 (base_htrans.gin); tiny for tests and smoke runs.
TXL_PRESETS = {
    "txl_sliding_window_tiny": dict(decoder_layers=2, decoder_embed_dim=64, decoder_attention_heads=4,
                                    attention_head_dim=16, decoder_ffn_embed_dim=256, window_length=32),
    "txl_sliding_window_small": dict(decoder_layers=12, decoder_embed_dim=512, decoder_attention_heads=8,
                                     attention_head_dim=64, decoder_ffn_embed_dim=2048, window_length=512),
    "txl_sliding_window_medium": dict(decoder_layers=12, decoder_embed_dim=1024, decoder_attention_heads=8,
                                      attention_head_dim=128, decoder_ffn_embed_dim=4096, window_length=512),
}
register_presets("txl_lm", TXL_PRESETS, txl_preset)
