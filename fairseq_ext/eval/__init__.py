"""Evaluation commands (``python -m fairseq_ext.eval.<name>``); nothing here registers with fairseq."""
