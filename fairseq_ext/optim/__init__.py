"""Registered optimizers and LR schedulers of fairseq_ext."""
from fairseq_ext._autoimport import import_submodules

import_submodules(__name__, __path__)
