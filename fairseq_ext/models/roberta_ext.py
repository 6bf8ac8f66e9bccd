"""RoBERTa family of fairseq_ext (stub: a thin subclass of stock RoBERTa).

Issue #4 turns this into the CLAP-head / ALiBi model (EIFY/fairseq experiments).
"""
from fairseq.models import register_model, register_model_architecture
from fairseq.models.roberta import RobertaModel
from fairseq.models.roberta.model import base_architecture

from fairseq_ext.modules.inference_logits import special_symbol_ids, suppress_special_logits


@register_model("roberta_ext")
class RobertaExtModel(RobertaModel):
    """Stock RoBERTa under its own model name, with clean inference logits."""

    def __init__(self, args, encoder):
        super().__init__(args, encoder)
        self.register_buffer("special_ids", special_symbol_ids(encoder.dictionary), persistent=False)

    def forward(self, src_tokens, features_only=False, return_all_hiddens=False,
                classification_head_name=None, masked_tokens=None, **kwargs):
        x, extra = super().forward(src_tokens, features_only, return_all_hiddens,
                                   classification_head_name, masked_tokens=masked_tokens, **kwargs)
        if not (self.training or features_only or classification_head_name or masked_tokens is not None):
            x = suppress_special_logits(x, self.special_ids)
        return x, extra


@register_model_architecture("roberta_ext", "roberta_ext_baseline_tiny")
def roberta_ext_baseline_tiny(args):
    args.encoder_layers = getattr(args, "encoder_layers", 2)
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 64)
    args.encoder_ffn_embed_dim = getattr(args, "encoder_ffn_embed_dim", 128)
    args.encoder_attention_heads = getattr(args, "encoder_attention_heads", 2)
    base_architecture(args)


@register_model_architecture("roberta_ext", "roberta_ext_baseline_small")
def roberta_ext_baseline_small(args):
    args.encoder_layers = getattr(args, "encoder_layers", 4)
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 256)
    args.encoder_ffn_embed_dim = getattr(args, "encoder_ffn_embed_dim", 1024)
    args.encoder_attention_heads = getattr(args, "encoder_attention_heads", 4)
    base_architecture(args)
