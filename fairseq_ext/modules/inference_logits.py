"""Logit post-processing shared by every masked LM of the plugin at inference time."""
import torch
from fairseq.data import Dictionary


def special_symbol_ids(dictionary: Dictionary) -> torch.Tensor:
    """Ids a masked LM must never offer as a fill: <s>, <pad>, </s>, <unk>, <mask> and
    fairseq's ``madeupword`` padding symbols."""
    ids = set(range(dictionary.nspecial))
    ids.update(i for i, sym in enumerate(dictionary.symbols) if sym == "<mask>" or sym.startswith("madeupword"))
    return torch.tensor(sorted(ids), dtype=torch.long)


def suppress_special_logits(logits: torch.Tensor, special_ids: torch.Tensor) -> torch.Tensor:
    """Set the logits of structural symbols to -inf (a copy; logits: (..., V)).

    ``RobertaHubInterface.fill_mask`` turns the top-k ids into text with
    ``Dictionary.string``, which silently drops <s> and </s>: k asked answers would come back
    as fewer, with scores shifted. Masking them keeps exactly k real answers.
    """
    ids = special_ids[special_ids < logits.size(-1)].to(logits.device)
    return logits.index_fill(-1, ids, float("-inf"))
