"""Evaluation commands (``python -m fairseq_ext.eval.<name>``); not auto-registered."""
