"""Registered models of fairseq_ext: one model per file (see docs/ARCHITECTURE.md)."""
from fairseq_ext._autoimport import import_submodules

import_submodules(__name__, __path__)
