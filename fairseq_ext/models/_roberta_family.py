"""What the plugin's own RoBERTa-family masked LMs (GLOM, ALBERT, ELC-BERT) share: a
RobertaModel whose options come from a config dataclass and whose encoder is the model's own,
and (for GLOM and ALBERT) the factorised embedding and head. Stock
``RobertaModel.from_pretrained``, ``fill_mask``, ``extract_features`` and ``sentence_prediction``
heads work unchanged. Not a registered model.
"""
import re

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

STACK_LAYER = re.compile(r"encoder\.sentence_encoder\.layers\.(\d+)\.")  # what stock pruning renumbers


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


def refuse_layers_to_keep(args, model_name: str, reason) -> None:
    """fairseq prunes a trained encoder to ``--encoder-layers-to-keep`` when it loads it (Fan et
    al. 2020, LayerDrop): an encoder whose layers cannot be dropped one by one (``reason``)
    refuses the option instead of building a different model."""
    keep = safe_getattr(args, "encoder_layers_to_keep", None)
    if keep and reason:
        raise ValueError(f"--encoder-layers-to-keep {keep}: {model_name} cannot drop layers ({reason}); "
                         "leave it unset")


class PluginRobertaModel(RobertaModel):
    """RobertaModel whose options come from ``config_class`` and whose encoder is
    ``encoder_class``; bf16 autocast and clean inference logits as every plugin model."""

    config_class = None
    encoder_class = None
    # False: the encoder's modules initialise themselves (their original's init) and RobertaModel's
    # BERT init (init_bert_params over every module) is skipped, so each weight is drawn once
    bert_init = True

    @classmethod
    def layer_pruning_refusal(cls, args):
        """Why --encoder-layers-to-keep cannot apply to this encoder, or None where fairseq's
        pruning of ``...layers.N...`` parameters is exact."""
        return None

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
            refuse_layers_to_keep(args, cls.__name__, cls.layer_pruning_refusal(args))
            encoder = cls.encoder_class(args, task.source_dictionary)  # initialised in cls(...) (bert_init)
        return cls(args, encoder)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        """fairseq prunes to --encoder-layers-to-keep at every load, but a model trained with the
        option already holds only the kept layers, which stock pruning would renumber and drop:
        such a checkpoint loads as it is. A dictionary other than the checkpoint's fails here, by name."""
        if safe_getattr(model_cfg if model_cfg is not None else args, "encoder_layers_to_keep", None):
            stored = {m[1] for m in map(STACK_LAYER.match, state_dict) if m}
            if len(stored) == len(self.encoder.sentence_encoder.layers):
                model_cfg = args = None
        check_dictionary_matches(self, state_dict)
        return super().load_state_dict(state_dict, strict, model_cfg, args)

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
