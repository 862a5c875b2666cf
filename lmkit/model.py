"""The language model: tokenizer + feature groups + parameters (sparse or dense form).

``LanguageModel`` is the one class every solver produces. It scores (``log_proba``, ``score``,
``perplexity``), samples (``sample``), explains itself (``inspect``) and saves/loads a model
folder (see ``store.py``). All log-probabilities are natural logs (nats); ``bits_per_byte`` is
``nll_nats / ln 2 / bytes``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import numpy as np

from . import scoring, store
from .errors import InputError, ModelFormatError
from .explicit import SparseParams
from .features import Suffix, decode_suffix_key, group_from_name
from .tokenizer import Tokenizer


_UNSET = object()


class LanguageModel:
    """A single-layer softmax LM over context feature groups.

    tokenizer: ``Tokenizer``; params: ``SparseParams`` or ``scoring.DenseParams``; config: the
    training options (stored verbatim in the manifest).
    """

    def __init__(self, tokenizer: Tokenizer, params, config: dict | None = None,
                 corpus: dict | None = None):
        if tokenizer.vocab_size != params.vocab_size:
            raise InputError(f"tokenizer has {tokenizer.vocab_size} pieces but the model has "
                             f"{params.vocab_size}; use the tokenizer the model was trained with")
        self.tokenizer = tokenizer
        self.params = params
        self.config = dict(config or {})
        self.corpus = dict(corpus or {})
        self._loggammas = _UNSET  # back-off tables of a pure MKN model, derived on first use

    @property
    def groups(self) -> list:
        return self.params.groups

    @property
    def vocab_size(self) -> int:
        return self.params.vocab_size

    @property
    def kind(self) -> str:
        return "sparse" if isinstance(self.params, SparseParams) else "dense"

    # ---- scoring -----------------------------------------------------------------------------
    def encode_lines(self, lines: Iterable[str]) -> list:
        return self.tokenizer.encode_batch(list(lines))

    def log_proba_ids(self, seqs: list) -> tuple[np.ndarray, np.ndarray]:
        """Per-target natural-log probabilities of id sequences (EOS included), and seq index."""
        tok = self.tokenizer
        rows, targets, seq_index = scoring.context_rows(
            self.groups, self.params.keys, seqs, self.vocab_size, tok.bos_id, tok.eos_id)
        loggammas = self._mkn_backoffs()
        if loggammas is not None:  # exact MKN: log Z = -sum log gamma, no union of columns
            from .ngram import mkn_log_proba
            return mkn_log_proba(self.params, rows, targets, loggammas), seq_index
        return scoring.log_proba(self.params, rows, targets), seq_index

    def _mkn_backoffs(self):
        """log-gamma tables of a pure n-gram model with lambdas 1 (derived state, built once)."""
        if self._loggammas is _UNSET:
            self._loggammas = None
            p = self.params
            if (isinstance(p, SparseParams) and all(isinstance(g, Suffix) for g in p.groups)
                    and np.all(p.lambdas == 1.0)):
                from .ngram import backoff_tables
                self._loggammas = backoff_tables(p)[1]
        return self._loggammas

    def log_proba(self, text: str) -> np.ndarray:
        """Natural-log probability of each token of ``text`` followed by EOS; float64 (n+1,)."""
        return self.log_proba_ids([self.tokenizer.encode(text)])[0]

    def score(self, lines: Iterable[str], chunk_lines: int = 2000, progress=None) -> dict:
        """Evaluate on sequences: see ``evaluate.evaluate_lines``."""
        from .evaluate import evaluate_lines
        return evaluate_lines(self, lines, chunk_lines=chunk_lines, progress=progress)

    def perplexity(self, lines: Iterable[str]) -> float:
        """Per-token perplexity (EOS counted) of ``lines``."""
        return self.score(lines)["perplexity"]

    def next_logp(self, prefix_ids) -> np.ndarray:
        """log P(next token | sequence so far) for every token id; (V,) float64."""
        tok = self.tokenizer
        rows = scoring.next_rows(self.groups, self.params.keys, prefix_ids, self.vocab_size, tok.bos_id)
        return scoring.next_logp(self.params, rows)

    def next_log_proba_batch(self, contexts: list) -> np.ndarray:
        """log P(next token | context) for a batch: float64 (n, V), row i for ``contexts[i]``.

        ``contexts``: list of token-id lists, each the sequence so far (BOS implied), as
        ``next_logp`` takes one. Cost: the touched non-zeros + n V (no Python loop over rows).
        """
        tok = self.tokenizer
        reach = max(g.reach for g in self.groups)
        # no group looks further back than `reach` tokens (and one BOS): longer prefixes are cut
        # to that, keeping the BOS only when the cut prefix is the whole sequence
        tails = [list(c)[-reach:] for c in contexts]
        rows, _, _ = scoring.context_rows(self.groups, self.params.keys, tails, self.vocab_size,
                                          tok.bos_id, tok.eos_id)
        last = np.cumsum([len(t) + 1 for t in tails]) - 1  # the EOS slot sees the whole tail
        return scoring.next_logp_batch(self.params, [r[last] for r in rows])

    # ---- generation and inspection -----------------------------------------------------------
    def sample(self, prompt: str = "", *, max_tokens: int = 100, temperature: float = 1.0,
               top_k: int = 0, top_p: float = 1.0, seed: int = 0, num_samples: int = 1) -> list:
        """Sample continuations of ``prompt``; see ``generate.generate``."""
        from .generate import generate
        return generate(self, prompt, max_tokens=max_tokens, temperature=temperature,
                        top_k=top_k, top_p=top_p, seed=seed, num_samples=num_samples)

    def inspect(self, token: str, top: int = 10) -> dict:
        """Strongest next tokens per group for a context token: ``{group: [(piece, weight)]}``.

        ``token`` is a piece (``"▁king"``) or text that encodes to one piece (``" king"``).

        The weight is the group's logit contribution ``lambda * S[i, j]`` (sparse form) or
        ``W[i, j]`` minus the row median (dense form); higher = more strongly predicted.
        """
        tok = self.tokenizer
        try:  # a piece as `tokenize encode --output-format piece` prints it ("▁king") ...
            ids = [tok.piece_to_id(token)]
        except InputError:  # ... or text that encodes to one piece (" king")
            ids = tok.encode(token)
        if len(ids) != 1:
            pieces = [tok.id_to_piece(i) for i in ids]
            raise InputError(f"--token {token!r} is {len(ids)} pieces {pieces}, not one; "
                             "pass a single piece (see `lmkit tokenize encode --output-format piece`)")
        i = ids[0]
        out = {}
        for g, group in enumerate(self.groups):
            if isinstance(group, Suffix) and group.m != 1:
                continue  # a longer history is not one token: nothing to look up
            # window rows are token ids; suffix1 keys are token ids mapped to compact rows
            row = int(scoring.lookup_rows(self.params.keys[g], np.array([i]))[0])
            if row < 0:
                out[group.name] = []
                continue
            if isinstance(self.params, SparseParams):
                S = self.params.S[g]
                lo, hi = S.indptr[row], S.indptr[row + 1]
                cols, vals = S.indices[lo:hi], self.params.lambdas[g] * S.data[lo:hi]
            else:
                w = self.params.W[g][row].astype(np.float64)
                cols, vals = np.arange(len(w)), w - np.median(w)
            order = np.argsort(-vals, kind="stable")[:top]
            out[group.name] = [(tok.id_to_piece(int(cols[o])), float(vals[o])) for o in order]
        return out

    # ---- persistence -------------------------------------------------------------------------
    def save(self, path, command: str | None = None) -> Path:
        """Write the model folder atomically (see ``store.py``)."""
        info = {k: v for k, v in self.params.info.items() if _jsonable(v)}
        manifest = {"kind": self.kind, "groups": [g.name for g in self.groups],
                    "vocab_size": self.vocab_size, "config": self.config, "corpus": self.corpus,
                    "info": info}
        if isinstance(self.params, SparseParams):
            manifest["lambdas"] = [float(x) for x in self.params.lambdas]
        if command is not None:
            manifest["command"] = command
        return store.write_model_folder(path, manifest, self.tokenizer.model_proto,
                                        store.params_to_arrays(self.params))

    @classmethod
    def load(cls, path) -> "LanguageModel":
        """Read a model folder written by ``save``; refuses other formats with a clear message."""
        manifest, proto, arrays = store.read_model_folder(path)
        try:
            groups = [group_from_name(n) for n in manifest["groups"]]
            params = store.arrays_to_params(manifest["kind"], groups, arrays, manifest.get("info", {}))
        except (KeyError, ValueError, TypeError, IndexError) as e:
            raise ModelFormatError(f"{path}: inconsistent model folder ({e!r}); re-train the model") from None
        tokenizer = Tokenizer(proto)
        if tokenizer.vocab_size != params.vocab_size:
            raise ModelFormatError(f"{path}: tokenizer has {tokenizer.vocab_size} pieces, model "
                                   f"{params.vocab_size}; the tokenizer does not match the model, re-train")
        return cls(tokenizer, params, manifest.get("config"), manifest.get("corpus"))

    def describe(self) -> str:
        lam = getattr(self.params, "lambdas", None)
        parts = [f"{self.kind} model, V={self.vocab_size}, groups=" + ",".join(g.name for g in self.groups)]
        if lam is not None:
            parts.append("lambdas=" + ",".join(f"{x:g}" for x in lam))
        return "; ".join(parts)


def _jsonable(v) -> bool:
    import json
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    return nll_nats / math.log(2) / max(n_bytes, 1)


__all__ = ["LanguageModel", "decode_suffix_key"]
