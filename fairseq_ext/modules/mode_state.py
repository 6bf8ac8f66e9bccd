"""State a long-document model carries from one segment to the next, one copy per mode.

Meliad keeps separate variables for training and evaluation (``previous_keys_train`` /
``previous_keys_test``, ``mem_layer_train`` / ``mem_layer_test``): validating in the middle of
training must neither read nor disturb the training stream. The state is never differentiated
across segments (truncated back-propagation). Checkpoints hold the *training* copy (so a resumed
run continues the stream exactly where it stopped); the evaluation copy always starts empty.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn

Tensors = Tuple[torch.Tensor, ...]


class ModeState(nn.Module):
    """A tuple of (B, ...) tensors per mode, batch lanes first."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self._by_mode = {True: None, False: None}

    def get(self, training: bool) -> Optional[Tensors]:
        return self._by_mode[training]

    def set(self, training: bool, tensors: Tensors) -> None:
        self._by_mode[training] = tuple(t.detach() for t in tensors)

    def clear(self) -> None:
        self._by_mode = {True: None, False: None}

    def lanes_or_reset(self, training: bool, start_of_sequence: torch.Tensor, empty: Tensors) -> Tensors:
        """The stored state, with lanes that start a document replaced by ``empty`` (one lane's
        initial state, broadcast). A stored state of another batch size can only be replaced whole."""
        stored = self.get(training)
        lanes = start_of_sequence.shape[0]
        if stored is None or stored[0].shape[0] != lanes:
            if not bool(start_of_sequence.all()):
                had = "no state" if stored is None else f"{stored[0].shape[0]} lanes"
                raise RuntimeError(
                    f"{self.name}: the batch has {lanes} lanes continuing documents but the "
                    f"{'training' if training else 'evaluation'} state holds {had}; the number of lanes "
                    f"(--batch-size / --batch-size-valid) must stay the same within a stream")
            return tuple(e.expand(lanes, *e.shape[1:]).clone() for e in empty)
        # on the device of ``empty`` (the model's): a state loaded from a checkpoint arrives on the CPU
        reset = lambda s: start_of_sequence.view(-1, *([1] * (s.dim() - 1))).to(empty[0].device)
        return tuple(torch.where(reset(s), e.to(s.dtype), s.to(e.device)) for s, e in zip(stored, empty))

    def get_extra_state(self):
        train = self._by_mode[True]
        return {"train": None if train is None else [t.cpu() for t in train]}

    def set_extra_state(self, state) -> None:
        train = (state or {}).get("train")
        self._by_mode = {True: None if train is None else tuple(train), False: None}
