"""Data preparation (``python -m fairseq_ext.data.prepare``) and datasets of fairseq_ext.

Nothing here registers with fairseq, so nothing is imported eagerly.
"""
