"""The language model: tokenizer + feature groups + parameters (sparse or dense form).

``BaseModel`` implements what every lmkit model offers (``log_proba``, ``score``,
``perplexity``, ``sample``, ``next_distribution``, ``top_next``, ``vocab``) once, on top of
``log_proba_ids`` and ``next_logp``. ``LanguageModel`` is the one class every solver produces:
it adds the batched next-token distribution, ``inspect`` and the model folder (``io/store.py``).
All log-probabilities are natural logs (nats); bits per byte = ``nll_nats / ln 2 / bytes``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np

from . import kinds, scoring
from .io import store
from .config import InspectConfig, LoadConfig, NextConfig, PromptConfig, SampleConfig, make
from .errors import InputError, ModelFormatError, OptionError
from .evaluate import evaluate_lines
from .features import Suffix, decode_suffix_key
from .generate import generate
from .ngram import score as ngram_score
from .ngram.sample import NgramSampler
from .ngram.tables import loggamma_tables, mkn_log_proba
from .params import SparseParams
from .sparse import lookup_rows
from .tokenizer import Tokenizer


_UNSET = object()


class BaseModel:
    """What every lmkit model offers, built on two methods a subclass provides:
    ``log_proba_ids(seqs) -> (logp (N,), seq_index (N,))`` and ``next_logp(prefix_ids) -> (V,)``,
    plus the attributes ``tokenizer`` and ``vocab_size``. Natural logs throughout."""

    def encode_lines(self, lines: Iterable[str]) -> list:
        return self.tokenizer.encode_batch(list(lines))

    def log_proba(self, text: str) -> np.ndarray:
        """Natural-log probability of each token of ``text`` followed by EOS; float64 (n+1,)."""
        if not isinstance(text, str):
            raise InputError(f"text must be str, got {type(text).__name__}")
        return self.log_proba_ids([self.tokenizer.encode(text)])[0]

    def score(self, lines: Iterable[str], chunk_lines: int = 100_000, progress=None) -> dict:
        """Evaluate on ``lines`` (str each), read by the one rule every verb uses
        (``corpus.sequences``, docs/lines.md: "\\n" splits, trailing whitespace is dropped,
        blank lines are skipped), so ``score(corpus.read_lines(F))`` equals ``lmkit eval
        --input F``; see ``evaluate.evaluate_lines`` for the keys."""
        if isinstance(lines, (str, bytes)):
            raise InputError("lines must be an iterable of str, not a str; wrap one text as [text]")
        return evaluate_lines(self, lines, chunk_lines=chunk_lines, progress=progress)

    def perplexity(self, lines: Iterable[str]) -> float:
        """Per-token perplexity (EOS counted) of ``lines``, read as ``score`` reads them."""
        return self.score(lines)["perplexity"]

    @property
    def vocab(self) -> list:
        """The pieces, indexed by token id (``vocab[i]`` is the piece of id i)."""
        return [self.tokenizer.id_to_piece(i) for i in range(self.vocab_size)]

    def _context_ids(self, context) -> list:
        """Token ids of a context: text (the start of a sequence) or a list of ids."""
        if isinstance(context, str):
            return self.tokenizer.encode(context) if context else []
        return [int(i) for i in _check_ids(context, self.vocab_size, "context")]

    def next_distribution(self, context=NextConfig.context) -> np.ndarray:
        """P(next token | context) for every token id: float64 (V,) summing to 1.

        ``context``: text (the start of a sequence, as a generate prompt) or a list of token ids.
        """
        return np.exp(self.next_logp(self._context_ids(context)))

    def top_next(self, context=NextConfig.context, k: int = NextConfig.top) -> list:
        """The ``k`` most probable next tokens as ``[(piece, prob)]``, best first (BOS left out)."""
        _check_top(k)
        logp = self.next_logp(self._context_ids(context))
        return _best(self.tokenizer, np.arange(self.vocab_size), logp, k)

    def sample(self, prompt: str = PromptConfig.prompt, **options) -> list:
        """Sample continuations of ``prompt``; options: ``config.SampleConfig`` (max_tokens,
        temperature, top_k, top_p, seed, num_samples: defaults and ranges there); see
        ``generate.generate``."""
        if not isinstance(prompt, str):
            raise InputError(f"prompt must be a str, got {type(prompt).__name__}")
        return generate(self, prompt, make(SampleConfig, options))


def _check_top(k) -> None:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise OptionError(f"top must be an integer >= 1, got {k!r}")


def _best(tok, cand: np.ndarray, logp: np.ndarray, k: int) -> list:
    """The k best ``(piece, prob)`` among candidate ids ``cand`` with log-probs ``logp``."""
    keep = cand != tok.bos_id  # BOS is never a target
    cand, logp = cand[keep], logp[keep]
    best = np.argsort(-logp, kind="stable")[:k]
    return [(tok.id_to_piece(int(cand[i])), float(np.exp(logp[i]))) for i in best]


class LanguageModel(BaseModel):
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

    @property
    def params(self):
        """The parameters (frozen: assign a new object, e.g. ``params.with_lambdas(...)``)."""
        return self._params

    @params.setter
    def params(self, value) -> None:
        self._params = value
        self._loggammas = _UNSET  # back-off tables of a pure MKN model, derived on first use
        self._sampler = None  # exact n-gram sampler (its tables are derived once, on first use)

    @property
    def groups(self) -> list:
        return self.params.groups

    def prepare(self, n_positions: int) -> None:
        """Build derived scoring tables now if about ``n_positions`` targets are to be scored
        (a pure MKN model's trie walk, ``ngram.score.walker``); a forecast, the numbers do
        not depend on it."""
        if self._mkn_backoffs() is not None:
            ngram_score.walker(self.params, self._loggammas, expected=n_positions)

    @property
    def vocab_size(self) -> int:
        return self.params.vocab_size

    @property
    def kind(self) -> str:
        return "sparse" if isinstance(self.params, SparseParams) else "dense"

    # ---- scoring -----------------------------------------------------------------------------
    def log_proba_ids(self, seqs: list) -> tuple[np.ndarray, np.ndarray]:
        """Per-target natural-log probabilities of id sequences (EOS included), and seq index."""
        tok = self.tokenizer
        walk = self._mkn_backoffs() is not None and ngram_score.walker(self.params,
                                                                        self._loggammas, seqs)
        if walk:  # exact MKN, compiled trie walk (ngram/score.py): the same numbers, one pass
            n_targets = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs)) + 1
            return (walk.log_proba(seqs, tok.bos_id, tok.eos_id),
                    np.repeat(np.arange(len(seqs)), n_targets))
        return self._log_proba_rows(seqs)

    def _log_proba_rows(self, seqs: list) -> tuple[np.ndarray, np.ndarray]:
        """``log_proba_ids`` by the numpy route (context rows, then the group sums)."""
        tok = self.tokenizer
        rows, targets, seq_index, order = scoring.context_rows(
            self.groups, self.params.keys, seqs, self.vocab_size, tok.bos_id, tok.eos_id,
            with_order=True)
        loggammas = self._mkn_backoffs()
        if loggammas is not None:  # exact MKN: log Z = -sum log gamma, no union of columns
            return mkn_log_proba(self.params, rows, targets, loggammas, order), seq_index
        return scoring.log_proba(self.params, rows, targets, order), seq_index

    def log_proba_flat(self, ids: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``log_proba_ids`` of sequences given flattened (``Tokenizer.encode_flat``): ``ids``
        (T,) every id in order, ``lengths`` int64 (S,) each sequence's count."""
        lengths = np.asarray(lengths, dtype=np.int64)
        n_targets = lengths + 1
        walk = self._mkn_backoffs() is not None and ngram_score.walker(
            self.params, self._loggammas, n_positions=int(n_targets.sum()))
        if walk:
            tok = self.tokenizer
            return (walk.log_proba_flat(ids, lengths, tok.bos_id, tok.eos_id),
                    np.repeat(np.arange(len(lengths)), n_targets))
        ends = np.cumsum(lengths)
        return self._log_proba_rows([ids[a:b].tolist() for a, b in zip(ends - lengths, ends)])

    def _mkn_backoffs(self):
        """log-gamma tables of a pure n-gram model with lambdas 1 (derived state, built once)."""
        if self._loggammas is _UNSET:
            self._loggammas = None
            p = self.params
            if (isinstance(p, SparseParams) and all(isinstance(g, Suffix) for g in p.groups)
                    and np.all(p.lambdas == 1.0)):
                self._loggammas = loggamma_tables(p)
        return self._loggammas

    def next_logp(self, prefix_ids) -> np.ndarray:
        """log P(next token | sequence so far) for every token id; (V,) float64."""
        tok = self.tokenizer
        prefix_ids = _check_ids(prefix_ids, self.vocab_size, "prefix_ids")
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
        # to that, keeping the BOS only when the cut prefix is the whole sequence; a group that
        # sees the whole line (linepos.LinePosition) keeps every prefix whole
        if any(getattr(g, "whole_line", False) for g in self.groups):
            tails = [list(c) for c in contexts]
        else:
            tails = [list(c)[-reach:] for c in contexts]
        rows, _, _ = scoring.context_rows(self.groups, self.params.keys, tails, self.vocab_size,
                                          tok.bos_id, tok.eos_id)
        last = np.cumsum([len(t) + 1 for t in tails]) - 1  # the EOS slot sees the whole tail
        return scoring.next_logp_batch(self.params, [r[last] for r in rows])

    def top_next(self, context=NextConfig.context, k: int = NextConfig.top) -> list:
        """The ``k`` most probable next tokens as ``[(piece, prob)]``, best first, exactly.

        One full next-token distribution (``next_logp``: the touched entries scattered into a
        (V,) vector, then one log-softmax), then the k best. BOS (never a target) is left out.
        """
        _check_top(k)
        ids, tok = self._context_ids(context), self.tokenizer
        logp = self.next_logp(ids)
        cand = np.arange(self.vocab_size)
        return _best(tok, cand, logp, k)

    def ngram_sampler(self) -> NgramSampler:
        """The exact batched sampler of a pure n-gram model (built once per parameters)."""
        if self._sampler is None:
            tok = self.tokenizer
            self._sampler = NgramSampler(self.params, bos_id=tok.bos_id, eos_id=tok.eos_id)
        return self._sampler

    # ---- inspection ----------------------------------------------------------------------------
    def inspect(self, token: str, top: int = InspectConfig.top) -> dict:
        """Strongest next tokens per group for a context token: ``{group: [(piece, weight)]}``.

        ``token`` is a piece (``"▁king"``) or text that encodes to one piece (``" king"``).

        The weight is the group's logit contribution ``lambda * S[i, j]`` (sparse form) or
        ``W[i, j]`` minus the row median (dense form); higher = more strongly predicted.
        """
        _check_top(top)
        tok = self.tokenizer
        try:  # a piece as `spm-encode --output-format piece` prints it ("▁king") ...
            ids = [tok.piece_to_id(token)]
        except InputError:  # ... or text that encodes to one piece (" king")
            ids = tok.encode(token)
        if len(ids) != 1:
            pieces = [tok.id_to_piece(i) for i in ids]
            raise OptionError(f"token {token!r} is {len(ids)} pieces {pieces}, not one; "
                             "pass a single piece (as Tokenizer.encode_pieces, or `lmkit spm-encode` "
                             "with output_format piece, writes them)")
        i = ids[0]
        out = {}
        for g, group in enumerate(self.groups):
            if isinstance(group, Suffix) and group.m != 1:
                continue  # a longer history is not one token: nothing to look up
            # window rows are token ids; suffix1 keys are token ids mapped to compact rows
            row = int(lookup_rows(self.params.keys[g], np.array([i]))[0])
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
        """Write the model folder atomically (see ``io/store.py``)."""
        info = {k: v for k, v in self.params.info.items() if _jsonable(v)}
        manifest = {"kind": self.kind, "groups": [g.name for g in self.groups],
                    "vocab_size": self.vocab_size, "config": self.config, "corpus": self.corpus,
                    "info": info}
        if isinstance(self.params, SparseParams):
            manifest["lambdas"] = [float(x) for x in self.params.lambdas]
        if command is not None:
            manifest["command"] = command
        return store.write_model_folder(path, manifest, self.tokenizer.model_proto,
                                        store.CompactArrays(self.params))

    @classmethod
    def load(cls, path, mmap: bool = LoadConfig.mmap) -> "LanguageModel":
        """Read a model folder written by ``save``; refuses other formats with a clear message.

        The arrays are a private in-memory copy of ``params.npz``; ``mmap=True`` maps the file
        instead (no copy, shared page cache; the file must then not change in place while the
        model is in use: see ``io.store.read_model_folder`` and docs/guarantees.md)."""
        manifest, proto, arrays = store.read_model_folder(path, mmap=mmap)
        groups = store.groups_from_names(manifest["groups"], arrays, where=Path(path) / "params.npz")
        params = store.arrays_to_params(manifest["kind"], groups, arrays,
                                        manifest.get("info") or {},
                                        where=Path(path) / "params.npz",
                                        lambdas=manifest.get("lambdas"))
        if params.vocab_size != manifest["vocab_size"]:
            raise ModelFormatError(f"{path}: the arrays have {params.vocab_size} tokens, the "
                                   f"manifest {manifest['vocab_size']}; re-train the model")
        tokenizer = store.folder_tokenizer(proto, Path(path) / "tokenizer.model",
                                           params.vocab_size, "the model")
        return cls(tokenizer, params, manifest.get("config"), manifest.get("corpus"))

    @classmethod
    def verify(cls, path) -> dict:
        """``lmkit verify``: load ``path`` (every array validated) and check each file's sha256
        against the manifest (``io.store.verify_folder``). Returns ``{"file": sha256}``."""
        cls.load(path)
        return store.verify_folder(path)

    def describe(self) -> str:
        """A short, true summary: the groups by family, how the weights were set (how many,
        their range) and the held-out perplexity before and after the weight fit.

        Example: ``sparse model, V=4096, 19 groups: 4 suffix (MKN order 5), 2 window, 4 skip,
        7 cluster (256, 32 clusters), 2 linepos; 95 weights (group x entry-count bucket) in
        [0, 0.921], fitted on 4653 held-out tokens: ppl 98.44 -> 84.71``.
        """
        families: dict = {}
        for g in self.groups:
            families.setdefault(kinds.kind_of(g).family, []).append(g)
        parts = []
        for family, gs in families.items():
            text = f"{len(gs)} {family}"
            if family == "suffix":
                text += f" (MKN order {len(gs) + 1})"
            if family == "cluster":
                sizes = sorted({g.n_clusters for g in gs}, reverse=True)
                text += f" ({', '.join(map(str, sizes))} clusters)"
            parts.append(text)
        out = f"{self.kind} model, V={self.vocab_size}, {len(self.groups)} groups: " + \
            ", ".join(parts)
        info = self.params.info
        if not isinstance(self.params, SparseParams):
            return out + f"; weights trained by gradient descent (solver {self.config.get('solver')})"
        for key, what in (("entry_lambdas", "group x entry-count bucket"),
                          ("bucket_lambdas", "group x history-count bucket")):
            if key in info:
                lam = np.asarray(info[key], dtype=np.float64)
                out += f"; {lam.size} weights ({what}) in [{lam.min():.3g}, {lam.max():.3g}]"
                break
        else:
            lam = np.asarray(self.params.lambdas, dtype=np.float64)
            if info.get("lambda_rule") == "given":
                out += "; lambdas given: " + ",".join(f"{x:g}" for x in lam)
            elif "lambda_trace" in info:
                out += f"; {lam.size} lambdas in [{lam.min():.3g}, {lam.max():.3g}]"
            elif all(g in families.get("suffix", []) for g in self.groups):
                out += "; lambdas 1 (exact interpolated Kneser-Ney)"
            else:
                out += "; lambdas " + ",".join(f"{x:g}" for x in lam) + " (not fitted)"
        trace = info.get("lambda_trace")
        if trace:
            n = info.get("heldout_tokens")
            out += (f", fitted on {n} held-out tokens" if n else ", fitted on held-out text") + \
                f": ppl {np.exp(trace[0][1]):.2f} -> {np.exp(trace[-1][1]):.2f}"
        return out


def _check_ids(ids, vocab_size: int, name: str) -> np.ndarray:
    """``ids`` as an int64 (n,) array of token ids in [0, vocab_size), else an InputError."""
    fix = f"must be token ids in [0, {vocab_size})"
    try:
        a = np.asarray(ids)
    except (TypeError, ValueError):
        raise InputError(f"{name}: not a list of ints; {fix}") from None
    if a.size == 0:
        return np.zeros(0, dtype=np.int64)
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise InputError(f"{name}: got {a.dtype} values of shape {a.shape}; {fix}")
    bad = a[(a < 0) | (a >= vocab_size)]
    if len(bad):
        raise InputError(f"{name}: id {int(bad[0])} is out of range; {fix}")
    return a.astype(np.int64)


def _jsonable(v) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False


__all__ = ["LanguageModel", "decode_suffix_key"]
