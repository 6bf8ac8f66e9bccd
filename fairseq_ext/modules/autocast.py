"""bf16 mixed precision on CUDA, one switch shared by every model of the plugin.

fairseq 0.12's ``--bf16`` means TPU and crashes on a GPU; ``--fp16`` needs loss scaling and
``--amp`` is slow. Models of this plugin run their forward under ``torch.autocast`` in bf16
when their ``bf16_autocast`` option is on: master weights stay fp32 (no --fp16 flag), and
logits are returned in fp32 so the criterion computes the loss in fp32.
"""
import contextlib

import torch

BF16_AUTOCAST_HELP = (
    "run the model's forward in bf16 autocast on CUDA (fp32 master weights and fp32 loss); "
    "a no-op on CPU. Use instead of fairseq's --bf16, which means TPU in fairseq 0.12"
)


def bf16_autocast(enabled: bool, tensor: torch.Tensor):
    """Context manager: bf16 autocast when enabled and ``tensor`` lives on CUDA."""
    if enabled and tensor.is_cuda:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
