"""Experiments built on the lmkit core but not part of the language-model pipeline.

- ``sparse_finetune``: AdaGrad on the stored entries of a sparse model (support-only fine-tune);
- ``synthetic``: synthetic corpora sampled exactly from a sparse window or n-gram model.
"""
