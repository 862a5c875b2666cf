"""Experiments built on the lmkit core but not part of the language-model pipeline.

- ``rich_weights``: the feature-rich model's research weightings (per group, per history-count
  bucket) beside ``rich.fit_rich``'s entry-count buckets;
- ``sparse_finetune``: AdaGrad on the stored entries of a sparse model (support-only fine-tune);
- ``synthetic``: synthetic corpora sampled exactly from a sparse window or n-gram model.
"""
