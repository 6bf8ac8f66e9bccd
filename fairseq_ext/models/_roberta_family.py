"""What the plugin's own RoBERTa-family masked LMs (GLOM, ALBERT, ELC-BERT) share: a
RobertaModel whose options come from a config dataclass and whose encoder is the model's own,
and (for GLOM and ALBERT) the factorised embedding and head. Stock
``RobertaModel.from_pretrained``, ``fill_mask``, ``extract_features`` and ``sentence_prediction``
heads work unchanged. Not a registered model.
"""
import torch
import torch.nn as nn
from fairseq.models import FairseqEncoderModel
from fairseq.models.roberta import RobertaEncoder, RobertaModel
from fairseq.models.roberta.model import base_architecture
from fairseq.utils import safe_getattr

from fairseq_ext.flops import DEFAULT_MASK_PROB
from fairseq_ext.models._common import add_config_args, check_dictionary_matches, fill_config_defaults, writable_options
from fairseq_ext.modules.autocast import bf16_autocast
from fairseq_ext.modules.factorised import FactorisedLMHead
from fairseq_ext.modules.inference_logits import special_symbol_ids, suppress_special_logits


def encoder_output(x: torch.Tensor, padding_mask: torch.Tensor, states) -> dict:
    """fairseq's encoder-output dict: the final state x and every entry of ``states`` already in
    fairseq's sequence-first layout (T, B, C), as ``TransformerEncoder`` returns them (stock
    ``extract_features`` hands ``states`` on as ``inner_states``)."""
    return {"encoder_out": [x], "encoder_padding_mask": [padding_mask], "encoder_states": list(states)}


class FactorisedRobertaEncoder(RobertaEncoder):
    """RobertaEncoder with an E-wide token table and the factorised head; subclasses give
    ``build_encoder``, ``head_layer_norm_eps`` (their original's) and ``head_input_dim``."""

    head_input_dim = None  # features the head reads (default: all of them)
    head_layer_norm_eps = None  # eps of the head's LayerNorm: each family states its original's

    def build_embedding(self, vocab_size, embedding_dim, padding_idx):
        return nn.Embedding(vocab_size, self.args.embedding_size, padding_idx)

    def build_lm_head(self, embed_dim, output_dim, activation_fn, weight):
        if weight is None:
            raise ValueError("--untie-weights-roberta is not supported: the head is tied to the factorised embedding")
        return FactorisedLMHead(self.head_input_dim or embed_dim, weight, self.head_layer_norm_eps)


def refuse_layerdrop(args, model_name: str) -> None:
    """The plugin's own encoders run every layer (or step) on every forward: a LayerDrop rate
    would be accepted and silently ignored, so it is an error."""
    rate = safe_getattr(args, "encoder_layerdrop", 0.0) or 0.0
    if rate:
        raise ValueError(f"--encoder-layerdrop {rate}: {model_name} has no LayerDrop (every layer runs "
                         "every time); use --encoder-layerdrop 0")


class PluginRobertaModel(RobertaModel):
    """RobertaModel whose options come from ``config_class`` and whose encoder is
    ``encoder_class``; bf16 autocast and clean inference logits as every plugin model."""

    config_class = None
    encoder_class = None
    # False: the encoder's modules initialise themselves (their original's init) and RobertaModel's
    # BERT init (init_bert_params over every module) is skipped, so each weight is drawn once
    bert_init = True

    def __init__(self, args, encoder):
        if self.bert_init:
            super().__init__(args, encoder)
        else:  # RobertaModel.__init__ without its self.apply(init_bert_params)
            FairseqEncoderModel.__init__(self, encoder)
            self.args = args
            self.classification_heads = nn.ModuleDict()
        self.register_buffer("special_ids", special_symbol_ids(encoder.dictionary), persistent=False)

    @classmethod
    def add_args(cls, parser):
        RobertaModel.add_args(parser)
        # no argparse defaults: arch presets fill what the user left unset (fill_defaults);
        # booleans take a value (--bf16-autocast true/false), as in yaml
        add_config_args(parser, cls.config_class)

    @classmethod
    def fill_defaults(cls, args, **preset):
        """An arch preset's values, then the config's and RoBERTa's defaults; options the
        user set win over all of them."""
        fill_config_defaults(args, cls.config_class, preset)
        base_architecture(args)

    @classmethod
    def build_model(cls, args, task):
        with writable_options(args):
            cls.fill_defaults(args)
            if safe_getattr(args, "max_positions") is None:
                args.max_positions = safe_getattr(args, "tokens_per_sample", task.max_positions())
            refuse_layerdrop(args, cls.__name__)
            encoder = cls.encoder_class(args, task.source_dictionary)  # initialised in cls(...) (bert_init)
        return cls(args, encoder)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        check_dictionary_matches(self, state_dict)
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)

    def forward(self, src_tokens, features_only=False, return_all_hiddens=False,
                classification_head_name=None, masked_tokens=None, **kwargs):
        with bf16_autocast(self.args.bf16_autocast, src_tokens):
            x, extra = super().forward(src_tokens, features_only, return_all_hiddens,
                                       classification_head_name, masked_tokens=masked_tokens, **kwargs)
        x = x.float()
        if not (self.training or features_only or classification_head_name or masked_tokens is not None):
            x = suppress_special_logits(x, self.special_ids)
        return x, extra

    def flops_per_token(self, seq_len: int, mask_prob: float = DEFAULT_MASK_PROB) -> float:
        """Training FLOPs per token (3 x forward): embedding projection, the encoder, and the
        head on the predicted positions only (a share ``mask_prob`` of the tokens)."""
        encoder = self.encoder.sentence_encoder
        forward = encoder.flops_per_token(seq_len) + mask_prob * self.encoder.lm_head.flops_per_token()
        return 3.0 * forward
