"""Reusable pieces (attention biases, layer mixing, memories), each with a reference path."""
from fairseq_ext._autoimport import import_submodules

import_submodules(__name__, __path__)
