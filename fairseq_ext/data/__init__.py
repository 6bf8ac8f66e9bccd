"""Data preparation, BPE and datasets of fairseq_ext."""
from fairseq_ext._autoimport import import_submodules

import_submodules(__name__, __path__)
