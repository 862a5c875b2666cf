"""The n-gram room: interpolated modified Kneser-Ney, built, stored, queried, sampled, exchanged.

Query side (a model folder is read and scored with these alone; no solver is imported):

- ``tables``: back-off tables of a solved MKN model (log gamma per history) and its exact scorer;
- ``score``: the same scores by one compiled walk of the n-gram trie (numba; else ``tables``);
- ``sample``: exact sampling from an MKN model by the back-off walk, without the V-vector.

Build side (counts -> ``SparseParams``):

- ``mkn``: the solver — discounts, adjusted counts, one closed-form level per order, pruning
  thresholds, partitioned solves stitched back together;
- ``build``: the bounded-memory build (id stream on disk, one partition in memory at a time);
- ``disk``: its disk-backed stages (the id stream and its bucket partition);
- ``dask``: the whole build on Dask workers (count, partition, solve where the data is).

Model tools (a ``LanguageModel`` in, a file or a smaller model out):

- ``arpa``: ARPA back-off files <-> lmkit n-gram models, exactly (``import-arpa``, ``export-arpa``);
- ``prune``: entropy pruning (Stolcke 1998) of an n-gram model;
- ``packed``: what both work on — histories as packed int64 keys, a model re-keyed by them, a
  model rebuilt from per-order (history, token, value) lists (pruning never loads ``arpa``).

This file imports nothing, so importing one module of the room loads only that module.
"""
