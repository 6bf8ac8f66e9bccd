"""bf16 mixed precision on CUDA and CPU, one switch shared by every model of the plugin.

fairseq 0.12's ``--bf16`` means TPU and crashes on a GPU; ``--fp16`` needs loss scaling and
``--amp`` is slow. Models of this plugin run their forward under ``torch.autocast`` in bf16
when their ``bf16_autocast`` option is on, on the device their input lives on (CUDA, or CPU
with ``--cpu``: bf16 matmuls, native on CPUs with AVX512-BF16/AMX): master weights stay fp32
(no --fp16 flag), and logits are returned in fp32 so the criterion computes the loss in fp32.
"""
import contextlib

import torch

BF16_AUTOCAST_HELP = (
    "run the model's forward in bf16 autocast, on CUDA or on CPU (fp32 master weights and fp32 "
    "loss). Use instead of fairseq's --bf16, which means TPU in fairseq 0.12"
)

AUTOCAST_DEVICES = ("cuda", "cpu")


def bf16_autocast(enabled: bool, tensor: torch.Tensor):
    """Context manager: bf16 autocast on ``tensor``'s device (CUDA or CPU) when enabled."""
    if enabled and tensor.device.type in AUTOCAST_DEVICES:
        return torch.autocast(tensor.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
