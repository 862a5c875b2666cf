"""Token sequences -> transformer batches, with lmkit's convention and the explicit model's rows.

Convention (the same as ``lmkit.scoring``): one line = one sequence; the inputs are
``[BOS] + ids``, the targets ``ids + [EOS]``, so every sequence of n tokens has n + 1 targets,
EOS included, and the "flat" target order is sequence by sequence.

A sequence with more targets than ``block_size`` is cut into windows of ``block_size``
positions, each starting half a block after the previous one; every target is scored exactly
once, by the first window that holds it with the longest context (the usual sliding-window
evaluation). ``Windows`` rows: ``(seq, start, stop, score_from)`` int64, all in target positions.

``ExplicitRows``: the explicit model's context rows (``scoring.context_rows``) of every flat
target, one int64 (G, N) array computed once (8 G bytes per target), from which a batch's exact
next-token log-distributions ``(n, V)`` are built on demand (``scoring.next_logp_batch``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import scoring


def make_windows(lengths: np.ndarray, block_size: int) -> np.ndarray:
    """Windows covering every target once: int64 (W, 4) rows ``(seq, start, stop, score_from)``.

    ``lengths``: tokens per sequence (targets = length + 1).
    Example: lengths=[2, 5], block_size=4 -> [[0,0,3,0], [1,0,4,0], [1,2,6,4]].
    """
    half = max(1, block_size // 2)
    out = []
    for s, n in enumerate(np.asarray(lengths, dtype=np.int64) + 1):
        out.append((s, 0, min(n, block_size), 0))
        stop = min(n, block_size)
        while stop < n:
            new_stop = min(n, stop + half)
            out.append((s, new_stop - block_size, new_stop, stop))
            stop = new_stop
    return np.array(out, dtype=np.int64).reshape(-1, 4)


@dataclass
class Batch:
    """x: int64 (B, T) inputs; sel: int64 (N,) flat indices into B*T of the scored positions;
    y: int64 (N,) their targets; flat: int64 (N,) their flat target indices (explicit rows);
    tokens: the real (not padding) input positions of ``x``."""

    x: torch.Tensor
    sel: torch.Tensor
    y: torch.Tensor
    flat: np.ndarray
    tokens: int = 0


class SequenceData:
    """Token-id sequences cut into windows; builds padded batches in lmkit's convention."""

    def __init__(self, seqs: list, bos_id: int, eos_id: int, block_size: int):
        self.seqs = [np.asarray(s, dtype=np.int64) for s in seqs]
        self.bos_id, self.eos_id = bos_id, eos_id
        lengths = np.array([len(s) for s in self.seqs], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(lengths + 1)])  # flat start of each seq
        self.windows = make_windows(lengths, block_size)
        self.n_targets = int(self.offsets[-1])

    def batch(self, window_ids) -> Batch:
        w = self.windows[np.asarray(window_ids, dtype=np.int64)]
        T = int((w[:, 2] - w[:, 1]).max())
        x = np.full((len(w), T), self.eos_id, dtype=np.int64)  # right padding, never scored
        sel, y, flat = [], [], []
        for b, (s, start, stop, score_from) in enumerate(w):
            inp = np.concatenate([[self.bos_id], self.seqs[s]])[start:stop]
            tgt = np.concatenate([self.seqs[s], [self.eos_id]])
            x[b, :len(inp)] = inp
            t = np.arange(score_from, stop)
            sel.append(b * T + t - start)
            y.append(tgt[t])
            flat.append(self.offsets[s] + t)
        sel, y, flat = (np.concatenate(a) for a in (sel, y, flat))
        return Batch(torch.from_numpy(x), torch.from_numpy(sel), torch.from_numpy(y), flat,
                     int((w[:, 2] - w[:, 1]).sum()))

    def eval_order(self, batch_size: int):
        """Window-id batches, long windows together (less padding); covers every window once."""
        lens = self.windows[:, 2] - self.windows[:, 1]
        order = np.argsort(-lens, kind="stable")
        return [order[a:a + batch_size] for a in range(0, len(order), batch_size)]


class ExplicitRows:
    """An lmkit ``LanguageModel``'s context rows for every flat target of some sequences."""

    def __init__(self, model, seqs: list):
        tok = model.tokenizer
        self.params = model.params
        rows, _, _ = scoring.context_rows(model.groups, model.params.keys, seqs, model.vocab_size,
                                          tok.bos_id, tok.eos_id)
        self.rows = np.stack(rows) if rows else np.zeros((0, 0), np.int64)

    def log_proba(self, flat: np.ndarray) -> torch.Tensor:
        """Exact log P_explicit(. | context) of the given flat targets: float32 (n, V)."""
        rows = [r[flat] for r in self.rows]
        return torch.from_numpy(scoring.next_logp_batch(self.params, rows).astype(np.float32))
