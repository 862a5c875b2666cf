r"""ARPA back-off models <-> lmkit sparse n-gram models, exactly.

Input of ``import_arpa``: an ARPA file (lmplz, SRILM, ``lmkit export-arpa``) whose words are the
tokenizer's pieces or decimal token ids, plus ``<s>``, ``</s>``, ``<unk>``; and the ``Tokenizer``.
Output: a ``LanguageModel`` with groups ``Suffix(1..N-1)``, all lambdas 1, whose per-token
probabilities are the ARPA's (what ``kenlm.Model.full_scores`` returns), up to the ARPA's
6-decimal rounding.

Why a back-off model is a sparse softmax layer
----------------------------------------------
An ARPA model says ``p(w|h) = p*(w|h)`` for a listed n-gram ``h w``, else ``bo(h) p(w|h')``
(h' = h without its oldest token; bo = 1 for an unlisted h). With

    S[h, w] = log p*(w|h) - log bo(h) - log p(w|h')        on the listed n-grams,

``p(w|h) = bo(h) p(w|h') exp(S[h, w])`` for every w, and unrolling down to the unigrams gives
lmkit's form ``log p = log q + sum_m S_m[h_m, w] + sum_m log bo(h_m)``, i.e. ``log Z = -sum log
bo``. lmkit does not store bo: it derives ``gamma(h) = 1 / (1 + sum_w p(w|h') expm1(S[h, w]))``
(``ngram.backoff_tables``), which equals bo(h) exactly when the ARPA is normalised (lmplz and
SRILM write normalised models; rounding to 6 decimals moves log10 bo by < 1e-6). The import
measures ``max |log10 gamma - log10 bo|`` and warns when it exceeds 1e-4 (an unnormalised ARPA:
lmkit then scores its renormalised version). A history listed with a back-off but without
successors gets gamma = 1: in a normalised model its bo is 1 (log10 0).

Details
-------
- Suffix closure: lmkit looks up ``p(w|h')`` for every stored ``(h, w)``, so missing suffix
  n-grams (pruned SRILM models) are added with S = 0 (the value the back-off gives anyway).
- ``<s>`` keeps the ARPA's unigram log10 -99 (it is never a target).
- Pieces the ARPA does not list (never seen by lmplz) would all get p(<unk>) in KenLM, which
  is not a distribution; lmkit splits p(<unk>) evenly between ``<unk>`` and them, so their
  scores are KenLM's minus log(1 + #missing). Scores of listed pieces are unchanged.
- Words: ``words="auto"`` reads decimal ids when every non-special unigram is a decimal number
  below V, else pieces (``piece_words``); ``export-arpa --words pieces`` writes the same mapping.
"""
from __future__ import annotations

import gc
import math
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .errors import InputError, MissingPathError
from .features import Suffix
from .model import LanguageModel
from .ngram import backoff_tables
from .params import SparseParams
from .sparse import lookup_rows, lookup_values

SPECIALS = ("<unk>", "<s>", "</s>")
LN10 = math.log(10)


# ---- words <-> token ids ----------------------------------------------------------------------
def piece_words(tokenizer) -> np.ndarray:
    """ARPA word per token id: the SentencePiece piece, ``<unk>``/``<s>``/``</s>`` for the
    specials. Refuses pieces that an ARPA reader would split or confuse (whitespace, a special
    name on another id). Example: [<unk>, <s>, </s>, ▁the, ▁and, ...]."""
    words = np.array([tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)], dtype=object)
    for name, i in zip(SPECIALS, (tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id)):
        words[i] = name
    for i, w in enumerate(words):
        if not w or any(c.isspace() for c in w) or (w in SPECIALS and i not in (
                tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id)):
            raise InputError(f"piece {i} {w!r} cannot be an ARPA word (whitespace or a special "
                             "name); export with --words ids")
    return words


def id_words(tokenizer) -> np.ndarray:
    """ARPA word per token id: the decimal id, or ``<unk>``/``<s>``/``</s>`` (``ngram.arpa_words``)."""
    words = np.array([str(i) for i in range(tokenizer.vocab_size)], dtype=object)
    words[tokenizer.unk_id], words[tokenizer.bos_id], words[tokenizer.eos_id] = SPECIALS
    return words


# ---- reading ----------------------------------------------------------------------------------
def read_arpa(path) -> list:
    """Parse an ARPA file: per order n (index n-1) a tuple ``(words, log10p, log10bo)`` with
    ``words`` a list of n-lists of str, log10p/log10bo float64 arrays (bo 0 when absent)."""
    path = Path(path)
    if not path.is_file():
        raise MissingPathError(f"{path}: no such ARPA file; check the path")
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 at byte {e.start}; is this an ARPA file?") from None
    # sections are parsed a whole block at a time (list comprehensions, not a per-line loop);
    # the cyclic GC is paused meanwhile: millions of small lists would trigger it over and over
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        return _parse_sections(path, lines)
    finally:
        if gc_was_on:
            gc.enable()


def _parse_sections(path, lines) -> list:
    heads = [k for k, line in enumerate(lines) if line.startswith("\\")] + [len(lines)]
    declared, tables = {}, []
    for k, nxt in zip(heads, heads[1:]):
        head = lines[k].strip()
        if head == "\\data\\":
            for line in lines[k + 1:nxt]:
                if line.startswith("ngram "):
                    n, _, v = line[6:].partition("=")
                    declared[int(n)] = int(v)
            continue
        if not head.endswith("-grams:"):
            continue  # \end\
        n = int(head[1:-len("-grams:")]) if head[1:-len("-grams:")].isdigit() else -1
        if n != len(tables) + 1:
            raise InputError(f"{path}:{k + 1}: section {head} out of order; is this an ARPA file?")
        rows = [r for r in (line.split() for line in lines[k + 1:nxt]) if r]
        bad = next((r for r in rows if len(r) not in (n + 1, n + 2)), None)
        if bad is not None:
            raise InputError(f"{path}: in {head} expected log10p, {n} words and an optional "
                             f"back-off, got {' '.join(bad)[:80]!r}; is this an ARPA file?")
        try:
            lp = np.fromiter(map(float, [r[0] for r in rows]), np.float64, len(rows))
            bo = np.fromiter(map(float, [r[n + 1] if len(r) == n + 2 else "0" for r in rows]),
                             np.float64, len(rows))
        except ValueError as e:
            raise InputError(f"{path}: in {head}: {e}; is this an ARPA file?") from None
        tables.append(([r[1:n + 1] for r in rows], lp, bo))
    if not tables:
        raise InputError(f"{path}: no \\1-grams: section; is this an ARPA file?")
    for k, (w, _, _) in enumerate(tables, 1):
        if declared.get(k, len(w)) != len(w):
            raise InputError(f"{path}: header says ngram {k}={declared[k]} but the file lists "
                             f"{len(w)}; the file is truncated or corrupt")
    return tables


def word_ids(tables, tokenizer, words: str = "auto") -> dict:
    """{ARPA word: token id} for ``words`` in "auto" | "ids" | "pieces" (see module docstring)."""
    if words not in ("auto", "ids", "pieces"):
        raise InputError(f"--words must be auto, ids or pieces, got {words!r}")
    if words == "auto":
        uni = [w[0] for w in tables[0][0] if w[0] not in SPECIALS]
        V = tokenizer.vocab_size
        words = "ids" if uni and all(w.isdigit() and int(w) < V for w in uni) else "pieces"
    table = id_words(tokenizer) if words == "ids" else np.array(
        [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)], dtype=object)
    out = {w: i for i, w in enumerate(table)}
    out.update(zip(SPECIALS, (tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id)))
    return out


def _to_ids(grams, vocab: dict, n: int, path) -> np.ndarray:
    flat = [w for g in grams for w in g]
    try:
        ids = np.fromiter(map(vocab.__getitem__, flat), dtype=np.int64, count=len(flat))
    except KeyError as e:
        raise InputError(f"{path}: ARPA word {e.args[0]!r} is not a piece or id of this "
                         "tokenizer; pass the tokenizer the training text was encoded with "
                         "(or --words ids|pieces)") from None
    return ids.reshape(len(grams), n)


# ---- building the sparse model ----------------------------------------------------------------
def pack(ids: np.ndarray, V: int) -> np.ndarray:
    """Suffix row keys of (c, m) id rows, oldest token at weight V**0 (as ``features.Suffix``)."""
    key = np.zeros(len(ids), dtype=np.int64)
    for i in range(ids.shape[1] - 1, -1, -1):
        key = key * V + ids[:, i]
    return key


def pair_index(hist: np.ndarray, cols: np.ndarray, V: int):
    """A lookup table for (history key, token) pairs: ``(row_keys, CSR of entry index + 1)``."""
    row_keys, row = np.unique(hist, return_inverse=True)
    idx = sp.csr_matrix((np.arange(1, len(hist) + 1, dtype=np.float64), (row, cols)),
                        shape=(len(row_keys), V))
    idx.sum_duplicates()
    idx.sort_indices()
    return row_keys, idx


def find_pairs(index, hist, cols) -> np.ndarray:
    """Entry index of each (hist[n], cols[n]) in a ``pair_index`` table, -1 where absent."""
    row_keys, idx = index
    r = lookup_rows(row_keys, hist)
    out = np.full(len(hist), -1, dtype=np.int64)
    ok = r >= 0
    out[ok] = lookup_values(idx, r[ok], np.asarray(cols)[ok]).astype(np.int64) - 1
    return out


def suffix_params(q, levels, V: int, info: dict) -> SparseParams:
    """``SparseParams`` of a back-off model: ``levels[m-1] = (hist, cols, S)`` for history
    length m (hist int64 keys, cols token ids, S natural-log values; pairs unique)."""
    S_list, keys = [], []
    for hist, cols, S in levels:
        row_keys, row = np.unique(hist, return_inverse=True)
        order = np.lexsort((cols, row))
        indptr = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=len(row_keys)))])
        # built from sorted arrays, not COO: explicit zeros (closure entries) must stay stored
        S_list.append(sp.csr_matrix((np.asarray(S, np.float64)[order],
                                     cols[order].astype(np.int32), indptr), shape=(len(row_keys), V)))
        keys.append(row_keys.astype(np.int64))
    M = len(levels)
    return SparseParams([Suffix(m) for m in range(1, M + 1)], q, S_list, keys, np.ones(M), info)


def arpa_params(tables, tokenizer, words: str = "auto", path="ARPA"):
    """``(SparseParams, report)`` of a parsed ARPA (``read_arpa``); see the module docstring."""
    V = tokenizer.vocab_size
    N = len(tables)
    if N < 2:
        raise InputError(f"{path}: a unigram-only ARPA has no n-gram histories; lmkit needs order >= 2")
    if V ** (N - 1) >= 2 ** 63:
        raise InputError(f"{path}: order {N} with V={V} overflows lmkit's int64 history keys; "
                         "use a lower order or a smaller vocabulary")
    vocab = word_ids(tables, tokenizer, words)
    grams = [_to_ids(w, vocab, n + 1, path) for n, (w, _, _) in enumerate(tables)]
    # unigrams -> q; unlisted pieces share p(<unk>) (module docstring)
    uni, lp1, bo1 = grams[0][:, 0], tables[0][1], tables[0][2]
    if len(np.unique(uni)) != len(uni):
        raise InputError(f"{path}: a unigram is listed twice; the file is corrupt")
    q = np.zeros(V)
    q[uni] = 10.0 ** lp1
    missing = np.setdiff1d(np.arange(V), uni)
    unk = tokenizer.unk_id
    if len(missing):
        share = q[unk] / (len(missing) + (unk not in missing)) if unk in uni else 1e-99
        q[missing] = share
        if unk in uni:
            q[unk] = share
    q = np.maximum(q, 1e-300)  # <s> at -99 stays ~0 but finite
    # The softmax form needs sum(q) = 1 (its normaliser counts untouched columns at q). ARPA
    # unigrams other than <s> sum to less (estimators give <s> some mass; log10 values are
    # rounded): the deficit goes to <s>, which is never a target, so every score is unchanged.
    q[tokenizer.bos_id] = 0.0  # its listed value is a placeholder (-99, or 0 in some lmplz runs)
    deficit = 1.0 - q.sum()
    if deficit > 0:
        q[tokenizer.bos_id] += deficit
    else:
        q /= q.sum()
        q[tokenizer.bos_id] = 1e-300  # ~0 but finite: log q stays finite
    bo_uni = np.zeros(V)
    bo_uni[uni] = bo1
    # per order n >= 2: history keys, targets, log10 p (NaN = added by closure), log10 bo
    hist = [None] + [pack(g[:, :-1], V) for g in grams[1:]]
    cols = [None] + [g[:, -1].copy() for g in grams[1:]]
    lp = [None] + [t[1].copy() for t in tables[1:]]
    bo = [bo_uni] + [t[2].copy() for t in tables[1:]]
    for n in range(N - 1, 1, -1):  # top-down suffix closure: (h', w) must exist one order down
        sh, sc = hist[n] // V, cols[n]
        found = find_pairs(pair_index(hist[n - 1], cols[n - 1], V), sh, sc)
        need = np.unique(np.stack([sh[found < 0], sc[found < 0]]), axis=1)
        if need.shape[1]:
            hist[n - 1] = np.concatenate([hist[n - 1], need[0]])
            cols[n - 1] = np.concatenate([cols[n - 1], need[1]])
            lp[n - 1] = np.concatenate([lp[n - 1], np.full(need.shape[1], np.nan)])
            bo[n - 1] = np.concatenate([bo[n - 1], np.zeros(need.shape[1])])
    levels, lower_lp, lower_index, hist_bo = [], np.log10(q), None, []
    for n in range(1, N):
        index = pair_index(hist[n], cols[n], V)
        if len(index[0]) and index[1].nnz != len(hist[n]):
            raise InputError(f"{path}: an {n + 1}-gram is listed twice; the file is corrupt")
        # bo of each entry's history h (an n-gram of order n): (h minus newest, newest) one down
        if n == 1:
            hbo = bo[0][hist[1]]
            low = lower_lp[cols[1]]
        else:
            r = V ** (n - 1)
            pos = find_pairs(lower_index, hist[n] % r, hist[n] // r)
            hbo = np.where(pos >= 0, bo[n - 1][np.maximum(pos, 0)], 0.0)
            pos = find_pairs(lower_index, hist[n] // V, cols[n])
            assert (pos >= 0).all(), "suffix closure failed"
            low = lower_lp[pos]
        fill = np.isnan(lp[n])
        lp[n] = np.where(fill, hbo + low, lp[n])
        levels.append((hist[n], cols[n], np.where(fill, 0.0, (lp[n] - hbo - low) * LN10)))
        hist_bo.append((hist[n], hbo))
        lower_lp, lower_index = lp[n], index
    info = {"smoothing": "imported ARPA back-off model", "arpa_orders": [len(g) for g in grams],
            "arpa_missing_pieces": int(len(missing))}
    params = suffix_params(q, levels, V, info)
    err = backoff_error(params, hist_bo)
    for n in range(N - 1):  # listed with a back-off but no successors: lmkit's gamma is 1
        absent = lookup_rows(params.keys[n], pack(grams[n], V)) < 0
        err = max([err] + np.abs(tables[n][2][absent]).tolist())
    params = params.with_lambdas(params.lambdas, arpa_max_backoff_error_log10=err)
    return params, {"orders": N, "ngrams": info["arpa_orders"], "missing_pieces": int(len(missing)),
                    "max_backoff_error_log10": err}


def backoff_error(params: SparseParams, hist_bo) -> float:
    """max |log10 gamma(h) - log10 bo(h)| over the model's histories (0 for a normalised ARPA)."""
    loggammas = backoff_tables(params)[1]
    worst = 0.0
    for m, (lg, (h, hbo)) in enumerate(zip(loggammas, hist_bo)):
        rows = lookup_rows(params.keys[m], h)
        if len(rows):
            worst = max(worst, float(np.abs(lg[rows] / LN10 - hbo).max()))
    return worst


def import_arpa(path, tokenizer, *, words: str = "auto"):
    """An ARPA file -> ``LanguageModel`` (see the module docstring); ``lmkit import-arpa``."""
    tables = read_arpa(path)
    params, report = arpa_params(tables, tokenizer, words, path)
    if report["max_backoff_error_log10"] > 1e-4:
        print(f"lmkit: warning: {path}: back-offs differ from the normaliser by up to "
              f"{report['max_backoff_error_log10']:.2g} (log10): the ARPA is not normalised; "
              "lmkit scores its renormalised version", file=sys.stderr)
    config = {"order": len(tables), "context": 0, "imported_from": str(path), "words": words}
    return LanguageModel(tokenizer, params, config, {"name": f"arpa:{Path(path).name}"}), report


__all__ = ["import_arpa", "read_arpa", "arpa_params", "piece_words", "id_words", "word_ids",
           "suffix_params", "pack", "pair_index", "find_pairs"]
