"""The feature-rich explicit model: MKN n-grams + windows + skip-grams + cluster histories +
line positions.

Input: ``Counts`` (``counts.py``) whose groups are ``Suffix(1..M)`` first, then any of
``Window``, ``Skip`` (``features.py``), ``ClusterHistory`` (``clusters.py``) and
``LinePosition`` (``linepos.py``) groups; held-out token sequences for the weights. Output:
``SparseParams`` (``params.py``), scored by the generic sparse scorer like every other model.

Each family is solved in closed form against its natural back-off, then one weight per group x
bucket of the entry count ``F[i, j]`` (default 1 / 2 / 3-4 / 5-9 / 10+) is fitted on held-out
text and folded into S (other weightings, for research: ``experiments/rich_weights.py``):

- ``Suffix(1..M)``: interpolated modified Kneser-Ney (``ngram.mkn.solve_ngram``), ``q`` its unigram;
- ``Window(k)``: absolute discounting toward ``q`` (``explicit.solve_group``);
- ``Skip(r, s, a)``, ``ClusterHistory(m, w)`` and ``LinePosition(a, step, cap)``: the
  log-ratio to their own adjacent-token part (``skipgram.solve_skip`` with ``a``, ``w`` resp.
  ``a`` exact tokens);
- weights: ``explicit.choose_lambdas`` (projected Newton on the convex held-out NLL), all
  weights free, starting from MKN (suffix 1, others 0).

``count_rich`` counts everything from one flat buffer of the text: the base groups first, then
per cluster table (``cluster_tokens`` on their bigram counts, one SVD for all tables) its
``ClusterHistory`` groups on the same buffer; given the tokenizer's ``piece_bytes``, its
``LinePosition`` groups last. ``lmkit train`` with no model option builds the defaults below
(``train._train_rich``); model folders keep each cluster table as ``clusters{C}`` and the bytes
table as ``piece_bytes`` (``kinds.group_tables``; rebuilt by ``kinds.from_name``).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .clusters import ClusterHistory, bigram_embedding, cluster_tokens
from .config import ModelConfig, TokenizerConfig
from .counts import Counts, count_buffer, empty_counts, flat_buffer
from .explicit import choose_lambdas, count_buckets, entry_counts, fold_entry_lambdas
from .features import Skip, Suffix, Window, context_rows
from .linepos import LinePosition
from .params import SparseParams
from .solve import fit_heldout, solve

# chosen on the valid split of the default corpus (scripts/quality.py; docs/quality.md)
DEFAULT_ORDER = ModelConfig.DEFAULT_ORDER  # the n-gram and window part of lmkit's default model
DEFAULT_CONTEXT = ModelConfig.DEFAULT_CONTEXT
DEFAULT_SKIPS = ((1, 1, 1), (1, 2, 1), (1, 1, 2), (1, 3, 1))
# windows 2..K: Window(1) has the rows of Suffix(1) (the previous token); without it valid ppl
# rises 0.1-0.2 % and the weight search touches 12 % fewer entries (docs/quality.md)
DEFAULT_FIRST_WINDOW = 2
DEFAULT_CLUSTER_SHAPES = ((2, 0), (3, 0), (3, 1), (4, 1), (4, 2), (5, 2))
DEFAULT_N_CLUSTERS = 256
# (clusters, shapes) per cluster table: a fine table for the long histories, a coarse one for a
# class bigram context (valid ppl of the default corpus, window 1 dropped: 90.54 -> 88.81)
DEFAULT_CLUSTERINGS = ((DEFAULT_N_CLUSTERS, DEFAULT_CLUSTER_SHAPES), (32, ((2, 0),)))
# line positions (a, step, cap, C): the byte offset in the line in buckets of `step` bytes up
# to `cap` (80-84 bytes), with the previous token (a = 1), or with its cluster in the C-cluster
# table (a = 0, C = 32). Valid ppl (docs/quality.md): shakespeare 88.81 -> 85.31, Vim docs
# 26.70 -> 26.20
DEFAULT_LINE_POSITIONS = ((1, 8, 10, None), (0, 12, 7, 32))
# held-out tokens for the weights: the search costs ~ tokens x touched row length. Valid ppl on
# the default corpus (docs/quality.md): 5000 tokens 90.42, 6500 90.26, 10000 90.19, at 8.8 /
# 11.0 / 13.6 CPU s of weight search; 5000 keeps `lmkit train` within 5x of encode + lmplz
DEFAULT_LAMBDA_TOKENS = ModelConfig.DEFAULT_RICH_LAMBDA_TOKENS
# one weight per group x count of the (context, target) entry: 1, 2, 3-4, 5-9, 10+. Valid ppl
# on the default corpus (docs/quality.md; CPU s of the earlier search code): one weight per
# group 91.19 (36.5 s), edges (2, 3) 90.75 (60 s), (2, 3, 5, 10) 90.13 (78 s), (2, 3, 4, 6, 10,
# 20, 50) 89.88 (115 s)
DEFAULT_ENTRY_EDGES = (2, 3, 5, 10)
# stop the weight search when a Newton step gains less than this (nats per token)
DEFAULT_TOL = 1e-5
# the Hessian of the weight search on a sample of the held-out positions (gradient exact)
DEFAULT_HESSIAN_EVERY, DEFAULT_HESSIAN_TOKENS = 8, None


def base_groups(order: int = DEFAULT_ORDER, context: int = DEFAULT_CONTEXT,
                skips=DEFAULT_SKIPS, first_window: int = 1) -> list:
    """First counting pass: ``Suffix(1..order-1) + Window(first_window..context) + Skip...``."""
    groups = [Suffix(m) for m in range(1, order)]
    groups += [Window(k) for k in range(first_window, context + 1)]
    return groups + [Skip(*x) for x in skips]


def line_groups(piece_bytes, shapes=DEFAULT_LINE_POSITIONS, tables=()) -> list:
    """Last counting pass: one ``LinePosition(a, step, cap, piece_bytes, clusters)`` per
    ``(a, step, cap, C)`` shape, ``clusters`` the table of ``tables`` with C clusters (C None:
    none); a shape whose table is missing (a text too small for it) is left out."""
    table = tuple(int(x) for x in piece_bytes)
    by_size = {int(t.max()) + 1: tuple(int(x) for x in t) for t in tables if t is not None}
    return [LinePosition(a, step, cap, table, None if C is None else by_size[C])
            for a, step, cap, C in shapes if C is None or C in by_size]


def cluster_groups(table, shapes=DEFAULT_CLUSTER_SHAPES) -> list:
    """Second counting pass: one ``ClusterHistory(m, w, table)`` per ``(m, w)`` shape."""
    table = tuple(int(x) for x in table)
    return [ClusterHistory(m, w, table) for m, w in shapes]


def make_clusters(counts: Counts, n_clusters: int = DEFAULT_N_CLUSTERS,
                  seed: int = TokenizerConfig.seed, embedding=None) -> np.ndarray:
    """Token clusters (V,) from the bigram counts of ``counts`` (``Window(1)``, else ``Suffix(1)``;
    ``embedding``: their ``clusters.bigram_embedding``, if already computed)."""
    V = counts.vocab_size
    return cluster_tokens(bigram_counts(counts), min(n_clusters, V), seed=seed,
                          embedding=embedding)


def bigram_counts(counts: Counts) -> sp.csr_matrix:
    """CSR (V, V) counts of (previous token, token) from ``Window(1)``, else ``Suffix(1)``."""
    if Window(1) in counts.groups:
        return counts.F[counts.groups.index(Window(1))]
    g = counts.groups.index(Suffix(1))  # rows are the observed previous tokens (keys)
    keys = np.asarray(counts.keys[g], dtype=np.int64)
    F = sp.csr_matrix(counts.F[g], dtype=np.int64)
    # scatter the observed rows into (V, V) with integer arithmetic, in canonical form (sorted
    # indices, no stored zeros): the clusters must not depend on which group supplied the counts
    out = sp.csr_matrix((np.ones(len(keys), dtype=np.int64), (keys, np.arange(len(keys)))),
                        shape=(counts.vocab_size, len(keys))) @ F
    out = sp.csr_matrix(out, dtype=np.int64)
    out.sum_duplicates()
    out.eliminate_zeros()
    out.sort_indices()
    return out


def count_rich(chunks, vocab_size: int, bos_id: int, eos_id: int, *, order: int = DEFAULT_ORDER,
               context: int = DEFAULT_CONTEXT, first_window: int = DEFAULT_FIRST_WINDOW,
               skips=DEFAULT_SKIPS, clusterings=DEFAULT_CLUSTERINGS, seed: int = TokenizerConfig.seed,
               tables=None, piece_bytes=None,
               line_positions=DEFAULT_LINE_POSITIONS) -> tuple[Counts, list]:
    """Counts of every group of the rich model from one flat buffer of the text.

    ``chunks``: iterable of lists of token-id sequences, read once. The base groups
    (``base_groups``) are counted first; then per ``(n_clusters, shapes)`` of ``clusterings``
    a cluster table from their bigram counts (seed ``seed + i``; or ``tables[i]``, e.g. the
    ones chosen on the training text when counting held-out text) and its cluster groups,
    counted on the same buffer; with ``piece_bytes`` (``Tokenizer.piece_bytes``, (V,)) the
    ``LinePosition`` groups of ``line_positions`` last (``line_groups``). Returns ``(counts,
    tables)``: one int64 (V,) table per clustering (None for a table with as many clusters as
    an earlier one: its groups would repeat, and model folders name tables by their size).
    """
    groups = base_groups(order, context, skips, first_window)
    pad = max([g.reach for g in groups if isinstance(g, Window)] + [1])
    buf, pos, starts, n_seq = flat_buffer(chunks, bos_id, eos_id, pad)

    def count(groups):
        return count_buffer(buf, pos, starts, vocab_size, groups, n_seq) if n_seq else \
            empty_counts(vocab_size, groups)
    counts, out = count(groups), []
    base = counts
    # one SVD for every table (its start vector from ``seed``, as table 0 would draw it)
    emb = bigram_embedding(bigram_counts(base), seed=seed) if clusterings and tables is None \
        else None
    for i, (n_clusters, shapes) in enumerate(clusterings):
        table = make_clusters(base, n_clusters, seed + i, emb) if tables is None else tables[i]
        if table is not None and any(t is not None and t.max() == table.max() for t in out):
            table = None  # as many clusters as an earlier table (a tiny text): nothing new
        out.append(None if table is None else np.asarray(table, dtype=np.int64))
        if table is not None:
            counts = merge_groups(counts, count(cluster_groups(table, shapes)))
    lines = line_groups(piece_bytes, line_positions, out) if piece_bytes is not None else []
    if lines:
        counts = merge_groups(counts, count(lines))
    return counts, out


def merge_groups(a: Counts, b: Counts) -> Counts:
    """Counts of the groups of ``a`` then those of ``b`` (same corpus, counted separately)."""
    assert a.vocab_size == b.vocab_size and a.n_tokens == b.n_tokens, "counts of different text"
    return Counts(a.vocab_size, a.groups + b.groups, a.F + b.F, a.keys + b.keys, a.target,
                  a.n_sequences, a.n_tokens)


def solve_rich(counts: Counts, *, discount=None) -> SparseParams:
    """Closed form of every group (see the module docstring); lambdas = 1, ``lambda_init`` set."""
    params = solve(counts, discount=discount)  # each kind's closed form (kinds.py)
    info = {**params.info, "lambda_fixed": [False] * len(params.S)}
    return SparseParams(params.groups, params.q, params.S, params.keys, params.lambdas, info)


def _entry_buckets(counts: Counts, params: SparseParams, entry_edges):
    """Entry-count bucket of every stored value (aligned with ``S.data``) and the number of
    buckets.

    Group by group, in the smallest integer type that holds the buckets (int8 for the default
    5): one bucket per stored value of a 10M-token model is ~60M of them, 8 bytes each as
    int64 (the buckets are indices, so the values are the same in any type)."""
    B = len(entry_edges) + 1
    dtype = np.int8 if B <= 127 else np.int16 if B <= 32767 else np.int64
    eb = []
    for g in range(len(params.S)):
        one_c = Counts(counts.vocab_size, [counts.groups[g]], [counts.F[g]], [counts.keys[g]],
                       counts.target)
        one_p = SparseParams([params.groups[g]], params.q, [params.S[g]], [params.keys[g]],
                             params.lambdas[g:g + 1], {})
        eb.append(count_buckets(entry_counts(one_c, one_p)[0], entry_edges).astype(dtype))
    return eb, B


def heldout_rows(counts: Counts, heldout: list, bos_id: int, eos_id: int, *, discount=None,
                 max_memory=None, log=None):
    """The first steps of every weighting: ``solve_rich(counts)`` and the held-out positions'
    rows in it, thinned to fit ``max_memory`` (``solve.fit_heldout``). Returns ``(params,
    rows, targets)``: rows per group int64 (N,), -1 where the history is unseen."""
    params = solve_rich(counts, discount=discount)
    rows, targets, _ = context_rows(params.groups, params.keys, heldout, counts.vocab_size,
                                    bos_id, eos_id)
    rows, targets = fit_heldout(params, rows, targets, max_memory, log)
    return params, rows, targets


def report_search(log, trace, n_tokens: int) -> None:
    """The one log line of the weight search (or that there was no held-out text)."""
    if log and trace:
        log(f"      weights fitted on {n_tokens} held-out tokens: ppl "
            f"{np.exp(trace[0][1]):.2f} -> {np.exp(trace[-1][1]):.2f} in {len(trace) - 1} steps")
    elif log:
        log("      no held-out text: the weights keep their start values (MKN alone)")


def summed(counts: Counts, refit: Counts, consume: bool) -> Counts:
    """``counts + refit`` (the held-out lines' counts back in); ``counts`` freed if ``consume``."""
    total = counts + refit
    if consume:
        _release(counts)
    return total


def weights_rule(params: SparseParams, n_used: int) -> SparseParams:
    """``params`` with its info saying how its weights were chosen."""
    return params.with_lambdas(params.lambdas, lambda_rule="projected Newton minimisation of "
                               f"held-out NLL on {n_used} tokens", heldout_tokens=n_used)


def fit_rich(counts: Counts, heldout: list, bos_id: int, eos_id: int, *, discount=None,
             entry_edges=DEFAULT_ENTRY_EDGES, hessian_every: int = DEFAULT_HESSIAN_EVERY,
             hessian_tokens: int | None = DEFAULT_HESSIAN_TOKENS, tol: float = DEFAULT_TOL,
             refit: Counts | None = None, max_memory=None, log=None,
             consume: bool = False) -> SparseParams:
    """Solve every group and fit its weights on ``heldout`` (token-id sequences, no BOS/EOS).

    ``entry_edges``: lower bounds of entry-count buckets (default 1, 2, 3-4, 5-9, 10+): one
    lambda per group x bucket of the count ``F[i, j]`` of each stored (context, target) pair,
    folded into the values of S (``explicit.fold_entry_lambdas``); the weights are kept in
    ``info``. (One weight per group, or per history-count bucket, are research modes:
    ``experiments.rich_weights``.) ``refit``: counts of more text (the held-out lines, when
    they were carved out of the training text): once the weights are chosen, every group is
    solved again on ``counts + refit`` and the same weights are folded in (buckets from the
    summed counts), so no text is lost. ``max_memory``: the weight search uses every s-th
    held-out position if it would need more than half of it. ``consume``: the count matrices
    of ``counts`` are freed as soon as they are no longer needed (the caller keeps only its
    totals), so the counts, their sum with ``refit`` and the model are not all in memory at
    once; the model is the same.
    """
    if entry_edges is None:
        raise ValueError("fit_rich fits one weight per group x entry-count bucket; pass "
                         "entry_edges (other weightings: lmkit.experiments.rich_weights)")
    params, rows, targets = heldout_rows(counts, heldout, bos_id, eos_id, discount=discount,
                                         max_memory=max_memory, log=log)
    eb, B = _entry_buckets(counts, params, entry_edges)
    lam, trace = choose_lambdas(params, rows, targets, init=np.repeat(params.info["lambda_init"], B),
                                entry_buckets=eb, n_buckets=B, hessian_every=hessian_every,
                                hessian_tokens=hessian_tokens, tol=tol)
    n_used = len(targets)
    report_search(log, trace, n_used)
    del rows, targets, eb  # the search's state goes before the model is solved again
    if refit is not None:
        params = None  # freed before the summed counts are solved, not after
        counts, consume = summed(counts, refit, consume), True  # the sum is ours
        params = solve_rich(counts, discount=discount)
    eb, _ = _entry_buckets(counts, params, entry_edges)
    if consume:
        _release(counts)
    out = fold_entry_lambdas(params, lam, eb, entry_edges=list(entry_edges), lambda_trace=trace)
    return weights_rule(out, n_used)


def _release(counts: Counts) -> None:
    """Drop the count matrices of ``counts`` (``fit_rich(consume=True)``): its totals
    (``n_tokens``, ``n_sequences``, ``target``) stay, the (R, V) arrays are freed."""
    counts.F[:] = [None] * len(counts.F)
    counts.keys[:] = [None] * len(counts.keys)
