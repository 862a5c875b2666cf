"""Group-at-a-time build of the default (feature-rich) model: lower peak memory, same model.

Input: chunks of token-id sequences (the training text, read once into one compact buffer),
optionally chunks of carved held-out lines (their counts are added back after the weights are
chosen, as ``rich.fit_rich(refit=...)`` does), held-out sequences for the weights, and the
model options of ``rich.count_rich``. Output: ``(SparseParams, tables, n_sequences, n_tokens)``
equal, value for value, to ``rich.fit_rich(rich.count_rich(...))`` (tested), with the weights
folded in.

Why it is the same model: counting is per group (a group's counts depend only on its own key
function and the buffer; the suffix chain is counted together), and every non-chained closed
form (``kinds.closed_form``) is a function of that group's own counts, the MKN unigram ``q``
and the group's discount, which comes from its own counts. So instead of holding the counts of
all 19 groups and then their solution (``rich.count_rich`` then ``rich.solve_rich``), this
build holds the suffix chain's counts while it solves MKN, then counts one other group,
solves it, keeps its weights ``S`` and the int8 entry-count bucket of every stored value, and
frees its counts before the next group. The second pass (with the held-out lines' counts)
folds the chosen weights into each group as soon as it is solved. Memory at the peak: the
model (``S`` of every group), one group's counts and the token buffer, instead of every
group's counts plus the model.

Counting itself is bounded too: each group's positions are sorted a few million at a time,
in parts that own whole rows (``counts.count_in_parts``). What it does not do yet: spill counts
or the model to disk, bound the token buffer, or use worker processes or Dask (issue 20's
partitioned build); the buffer and the model are in memory.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .counts import Counts, count_in_parts, empty_counts, flat_buffer
from .explicit import choose_lambdas, count_buckets, estimate_discount
from .features import Suffix, Window
from .kinds import closed_form
from .memory import check_memory, format_bytes
from .ngram.mkn import solve_ngram
from .params import SparseParams
from .rich import (DEFAULT_CLUSTERINGS, DEFAULT_CONTEXT, DEFAULT_ENTRY_EDGES, DEFAULT_FIRST_WINDOW,
                   DEFAULT_HESSIAN_EVERY, DEFAULT_HESSIAN_TOKENS, DEFAULT_LINE_POSITIONS,
                   DEFAULT_ORDER, DEFAULT_SKIPS, DEFAULT_TOL, base_groups, bigram_counts,
                   cluster_groups, line_groups, make_clusters)
from .clusters import bigram_embedding
from .scoring import context_rows
from .solve import fit_heldout
from .sparse import lookup_values

BYTES_PER_VALUE = 8 + 4 + 1  # a stored weight: float64 value, int32 column, int8 entry bucket


class _Text:
    """One text as a compact buffer (``counts.flat_buffer`` layout) and its counter."""

    def __init__(self, chunks, vocab_size: int, bos_id: int, eos_id: int, pad: int):
        self.V, self.bos_id, self.eos_id = vocab_size, bos_id, eos_id
        self.buf, pos, starts, self.n_seq = flat_buffer(chunks, bos_id, eos_id, pad)
        # buffer indices in int32 when they fit: 8 of the 20 bytes a token costs here
        small = len(self.buf) < np.iinfo(np.int32).max
        self.pos = pos.astype(np.int32) if small else pos
        del pos
        self.starts = starts.astype(np.int32) if small else starts

    def count(self, groups: list) -> Counts:
        """Counts of the suffix chain or of one other group, sorted a part of the positions at a
        time (``counts.count_in_parts``: the same arrays as one pass)."""
        if not self.n_seq:
            return empty_counts(self.V, groups)
        return count_in_parts(self.buf, self.pos, self.starts, self.V, groups, self.n_seq)


class _Spill:
    """Counts written to ``.npy`` files in a temporary folder (no pickles) and read back: the
    first pass keeps each group's training counts here, so the second pass adds the held-out
    lines' counts to them instead of counting the training text again."""

    def __init__(self, folder: Path):
        self.folder = folder

    def save(self, tag: str, c: Counts) -> Counts:
        arrays = {"target": c.target,
                  "totals": np.array([c.n_sequences, c.n_tokens], dtype=np.int64)}
        for g, (F, k) in enumerate(zip(c.F, c.keys)):
            arrays.update({f"data{g}": F.data, f"indices{g}": F.indices, f"indptr{g}": F.indptr,
                           f"shape{g}": np.array(F.shape, dtype=np.int64)})
            if k is not None:
                arrays[f"keys{g}"] = k
        for name, a in arrays.items():
            np.save(self.folder / f"{tag}.{name}.npy", a, allow_pickle=False)
        return c

    def load(self, tag: str, groups: list, vocab_size: int) -> Counts:
        def read(name):
            path = self.folder / f"{tag}.{name}.npy"
            a = np.load(path, allow_pickle=False)
            path.unlink()
            return a
        F, keys = [], []
        for g in range(len(groups)):
            shape = tuple(int(x) for x in read(f"shape{g}"))
            F.append(sp.csr_matrix((read(f"data{g}"), read(f"indices{g}"), read(f"indptr{g}")),
                                   shape=shape))
            path = self.folder / f"{tag}.keys{g}.npy"
            keys.append(read(f"keys{g}") if path.exists() else None)
        n_seq, n_tok = (int(x) for x in read("totals"))
        return Counts(vocab_size, list(groups), F, keys, read("target"), n_seq, n_tok)


def _buckets(F: sp.csr_matrix, S: sp.csr_matrix, edges) -> np.ndarray:
    """int8 entry-count bucket of every stored value of ``S`` (same rows as ``F``): its count
    ``F[i, j]``, read in place when ``S`` keeps the pattern of ``F`` (every closed form here)."""
    F = F.tocsr()
    F.sort_indices()
    if np.array_equal(F.indptr, S.indptr) and np.array_equal(F.indices, S.indices):
        c = F.data
    else:
        c = lookup_values(F, np.repeat(np.arange(S.shape[0]), np.diff(S.indptr)), S.indices)
    return count_buckets(c, edges).astype(np.int8)


def _solve_pass(count, groups: list, M: int, discount, edges, lam=None, log=None):
    """Every group's closed form: the suffix chain by MKN, then one other group at a time;
    ``count(groups, tag)`` gives the counts of the chain (tag "chain") or of one group (tag
    "g{index}"). Returns ``(q, S, keys, eb, info, n_seq, n_tok)``; with ``lam`` ((G, B)
    weights) each group's weights are folded into its ``S`` as it is solved (``eb`` None)."""
    chain = count(groups[:M], "chain")
    n_seq, n_tok = chain.n_sequences, chain.n_tokens
    mkn = solve_ngram(chain, discount=discount)
    q = mkn.q
    S, keys, eb = [], [], []

    def keep(g, Sg, Fg, kg):
        b = _buckets(Fg, Sg, edges)
        if lam is None:
            eb.append(b)
            S.append(Sg)
        else:  # as explicit.fold_entry_lambdas: the values scaled, the index arrays shared
            Sn = sp.csr_matrix((Sg.data * lam[g][b], Sg.indices, Sg.indptr), shape=Sg.shape)
            Sn.has_sorted_indices = True
            S.append(Sn)
        keys.append(kg)
    for g in range(M):
        keep(g, mkn.S[g], chain.F[g], mkn.keys[g])
    info = dict(mkn.info)
    del chain, mkn
    for g in range(M, len(groups)):
        if isinstance(groups[g], Suffix):
            raise ValueError(f"suffix groups must come first, got {[x.name for x in groups]}")
        c = count([groups[g]], f"g{g}")
        F, k = c.F[0], c.keys[0]
        keep(g, closed_form(groups[g], F, k, q, estimate_discount(F)), F, k)
        del c, F
        if log:
            log(f"      {groups[g].name}: {S[-1].nnz} values")
    if len(groups) > M:  # as solve.solve: not pure MKN; every weight tuned, from MKN
        info = {k: v for k, v in info.items() if k != "loggamma"}
        info.update(lambda_init=[1.0] * M + [0.0] * (len(groups) - M))
    info["lambda_fixed"] = [False] * len(groups)  # as rich.solve_rich
    return q, S, keys, (eb if lam is None else None), info, n_seq, n_tok


def build_rich(chunks, vocab_size: int, bos_id: int, eos_id: int, heldout=(), *,
               refit_chunks=None, order: int = DEFAULT_ORDER, context: int = DEFAULT_CONTEXT,
               first_window: int = DEFAULT_FIRST_WINDOW, skips=DEFAULT_SKIPS,
               clusterings=DEFAULT_CLUSTERINGS, seed: int = 0, piece_bytes=None,
               line_positions=DEFAULT_LINE_POSITIONS, discount=None,
               entry_edges=DEFAULT_ENTRY_EDGES, hessian_every: int = DEFAULT_HESSIAN_EVERY,
               hessian_tokens: int | None = DEFAULT_HESSIAN_TOKENS, tol: float = DEFAULT_TOL,
               max_memory=None, log=None):
    """The default model of ``chunks`` (see the module docstring), group by group.

    Same arguments and result as ``rich.count_rich`` (training chunks; tables from their
    bigram counts) followed by ``rich.fit_rich(counts, heldout, refit=<counts of
    refit_chunks>)`` with entry-count weights (``entry_edges``, not None). Returns ``(params,
    tables, n_sequences, n_tokens)``; the totals include ``refit_chunks``.
    """
    if entry_edges is None:
        raise ValueError("build_rich fits one weight per group x entry-count bucket; pass "
                         "entry_edges (other weightings: lmkit.experiments.rich_weights)")
    groups = base_groups(order, context, skips, first_window)
    pad = max([g.reach for g in groups if isinstance(g, Window)] + [1])
    V = vocab_size
    texts = [_Text(chunks, V, bos_id, eos_id, pad)]
    M = sum(isinstance(g, Suffix) for g in groups)
    # the cluster tables, from the training text's bigram counts as count_rich takes them
    tables = []
    if clusterings:
        src = [g for g in groups if g == Window(1)] or [Suffix(1)]
        base = texts[0].count(src)
        emb = bigram_embedding(bigram_counts(base), seed=seed)
        for i, (n_clusters, shapes) in enumerate(clusterings):
            table = make_clusters(base, n_clusters, seed + i, emb)
            if any(t is not None and t.max() == table.max() for t in tables):
                table = None  # as many clusters as an earlier table: count_rich drops it too
            tables.append(None if table is None else np.asarray(table, dtype=np.int64))
            if table is not None:
                groups += cluster_groups(table, shapes)
        del base, emb
    if piece_bytes is not None:
        groups += line_groups(piece_bytes, line_positions, tables)
    edges = tuple(entry_edges)
    if log:
        log(f"      solving {len(groups)} groups one at a time")
    spill = None
    if refit_chunks is not None:  # the training counts wait on disk for the second pass
        spill = _Spill(Path(tempfile.mkdtemp(prefix="lmkit-rich-")))
    try:
        return _build(texts, groups, M, tables, spill, refit_chunks, pad, discount, edges,
                      heldout, hessian_every, hessian_tokens, tol, max_memory, log)
    finally:
        if spill is not None:
            shutil.rmtree(spill.folder, ignore_errors=True)


def _build(texts, groups, M, tables, spill, refit_chunks, pad, discount, edges, heldout,
           hessian_every, hessian_tokens, tol, max_memory, log):
    """The two passes of ``build_rich`` (first: solve, fit the weights; second, with the
    held-out lines' counts added: solve again and fold the weights in)."""
    V, B = texts[0].V, len(edges) + 1
    first = texts[0]
    bos_id, eos_id = int(first.bos_id), int(first.eos_id)

    def count_first(gs, tag):
        c = first.count(gs)
        return spill.save(tag, c) if spill is not None else c
    q, S, keys, eb, info, n_seq, n_tok = _solve_pass(count_first, groups, M, discount, edges,
                                                     log=log)
    nnz = sum(x.nnz for x in S)
    check_memory(nnz * BYTES_PER_VALUE * 2, max_memory, "the feature-rich model",
                 "use a smaller vocab_size, or pass order N for a plain model")
    if log:
        log(f"      {n_seq} sequences, {n_tok} tokens, {nnz} stored values "
            f"(~{format_bytes(nnz * BYTES_PER_VALUE)} with their buckets)")
    params = SparseParams(groups, q, S, keys, np.ones(len(groups)), info)
    del S
    rows, targets, _ = context_rows(params.groups, params.keys, list(heldout), V, bos_id,
                                    eos_id)
    rows, targets = fit_heldout(params, rows, targets, max_memory, log)
    init = np.repeat(params.info["lambda_init"], B)
    lam, trace = choose_lambdas(params, rows, targets, init=init, entry_buckets=eb,
                                n_buckets=B, hessian_every=hessian_every,
                                hessian_tokens=hessian_tokens, tol=tol)
    lam = np.asarray(lam).reshape(len(groups), B)
    n_used = len(targets)
    if log and trace:
        log(f"      weights fitted on {n_used} held-out tokens: ppl "
            f"{np.exp(trace[0][1]):.2f} -> {np.exp(trace[-1][1]):.2f} in {len(trace) - 1} steps")
    elif log:
        log("      no held-out text: the weights keep their start values (MKN alone)")
    del rows, targets
    if refit_chunks is not None:
        params = eb = None  # freed before the second pass
        held = _Text(refit_chunks, V, bos_id, eos_id, pad)
        del texts[:]  # the training buffer goes: its counts are on disk
        first = None

        def count_both(gs, tag):  # = Counts.__add__ of train and held, as rich.fit_rich(refit)
            return spill.load(tag, gs, V) + held.count(gs)
        q, S, keys, _, info, n_seq, n_tok = _solve_pass(count_both, groups, M, discount, edges,
                                                        lam=lam)
    else:
        S = [sp.csr_matrix((Sg.data * lam[g][b], Sg.indices, Sg.indptr), shape=Sg.shape)
             for g, (Sg, b) in enumerate(zip(params.S, eb))]
        for x in S:
            x.has_sorted_indices = True
        info, params, eb = params.info, None, None
    info = {**info, "entry_lambdas": lam.tolist(), "entry_edges": list(edges),
            "lambda_trace": trace,
            "lambda_rule": f"projected Newton minimisation of held-out NLL on {n_used} tokens",
            "heldout_tokens": n_used}
    out = SparseParams(groups, q, S, keys, np.ones(len(groups)), info)
    return out, tables, n_seq, n_tok
