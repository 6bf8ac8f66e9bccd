"""Data preparation (``python -m fairseq_ext.data.prepare``) and datasets of fairseq_ext.

Nothing here registers with fairseq, so nothing is imported eagerly: a task imports the dataset
it uses (``long_document_lm`` -> ``document_stream``), and ``prepare`` (sentencepiece,
``fairseq_cli.preprocess``) loads only when it runs. ``prefetch_exit`` (an atexit callback) is
imported by the package itself.
"""
