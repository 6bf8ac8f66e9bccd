"""fairseq_ext: a fairseq plugin (``--user-dir fairseq_ext`` or ``import fairseq_ext``).

Importing the package registers every model, task, criterion, optimizer and BPE it holds.
fairseq imports a user dir by its directory name, so ``fairseq_ext`` must stay unique.
"""
import argparse

import torch

# torch>=2.6 loads with weights_only=True; fairseq 0.12 checkpoints hold an argparse.Namespace
# in their cfg and would fail with "Unsupported global: GLOBAL argparse.Namespace".
torch.serialization.add_safe_globals([argparse.Namespace])

from . import modules, models, tasks, criterions, optim  # noqa: E402,F401  (registers)
from .data import prefetch_exit  # noqa: E402,F401  (a run stopped mid-epoch exits 0: its docstring)

__version__ = "0.1.0"
