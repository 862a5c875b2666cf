r"""ARPA back-off models <-> lmkit sparse n-gram models, exactly.

Export (``write_arpa``): a pure n-gram ``LanguageModel`` (groups ``Suffix(1..M)``, all
lambdas 1, an exact MKN model, see ``ngram/mkn.py``) -> ``\\data\\`` counts, then one section per
order with ``log10 P``, the n-gram and its ``log10`` back-off weight (omitted when 0 or at the
top order). Words are decimal token ids (``arpa_words``: ``<unk>``, ``<s>``, ``</s>`` for the
specials) or the SentencePiece pieces (``piece_words``); ``<s>`` gets -99 as in KenLM. Written
under a temporary name, then renamed.

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
(``ngram.tables.backoff_tables``), which equals bo(h) exactly when the ARPA is normalised (lmplz and
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
import io
import math
import warnings
from pathlib import Path

import numpy as np

from ..config import ExportArpaConfig, ImportArpaConfig, check_option
from ..errors import InputError, OptionError
from ..features import Suffix, decode_histories, encode_histories
from ..io.files import atomic_write
from ..io.readfile import read_regular
from ..model import LanguageModel
from ..params import SparseParams
from ..sparse import lookup_rows
from .packed import (check_arpa_exportable, find_pairs, pack, packed_rows, pair_index,
                     suffix_params)
from .tables import backoff_tables

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
            raise OptionError(f"piece {i} {w!r} cannot be an ARPA word (whitespace or a special "
                             "name); export with words ids")
    return words


# ---- reading ----------------------------------------------------------------------------------
_FIX_ARPA = "pass an ARPA file (as written by lmplz, SRILM or `lmkit export-arpa`)"


def _short(text: str, n: int = 60) -> str:
    """``text`` cut to ``n`` characters for a message (a hostile file may hold a 10 MB word)."""
    return repr(text[:n] + "...") if len(text) > n else repr(text)


def read_arpa(path) -> list:
    r"""Parse an ARPA file: per order n (index n-1) a tuple ``(words, log10p, log10bo)`` with
    ``words`` a list of n-lists of str, log10p/log10bo float64 arrays (bo 0 when absent).

    Strict: ``path`` must be a regular file in UTF-8 with a ``\data\`` header (text before it
    is skipped, as KenLM does) of ``ngram N=C`` lines for N = 1..order, then the sections ``\1-grams:`` .. ``\order-grams:`` in order, each
    listing exactly its declared count (0 allowed above the unigrams), then ``\end\``; every
    log10 probability finite and <= 0, every back-off finite. Anything else is an
    ``InputError`` naming the file, the line and what is wrong.
    """
    path = Path(path)
    data = read_regular(path, "ARPA file", _FIX_ARPA)  # a regular file, never a FIFO or device
    try:
        lines = data.decode("utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not UTF-8 at byte {e.start}; is this an ARPA file?") from None
    del data
    # sections are parsed a whole block at a time (list comprehensions, not a per-line loop);
    # the cyclic GC is paused meanwhile: millions of small lists would trigger it over and over
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        return _parse_sections(path, lines)
    finally:
        if gc_was_on:
            gc.enable()


def _declared_counts(path, lines, k: int, nxt: int) -> list:
    r"""The ``ngram N=C`` lines of the ``\data\`` section (lines k+1 .. nxt-1) -> [C_1, ..]."""
    declared = {}
    for i in range(k + 1, nxt):
        line = lines[i].strip()
        if not line:
            continue
        n, eq, c = line[6:].partition("=") if line.startswith("ngram ") else ("", "", "")
        n, c = n.strip(), c.strip()
        if not (eq and n.isascii() and n.isdigit() and c.isascii() and c.isdigit()):
            raise InputError(f"{path}:{i + 1}: expected 'ngram N=COUNT' in \\data\\, got "
                             f"{_short(line)}; is this an ARPA file?")
        if int(n) in declared:
            raise InputError(f"{path}:{i + 1}: ngram {int(n)} declared twice; the file is corrupt")
        declared[int(n)] = int(c)
    if sorted(declared) != list(range(1, len(declared) + 1)):
        raise InputError(f"{path}: \\data\\ declares orders {sorted(declared)}, not 1..N; "
                         "the file is corrupt")
    return [declared[n] for n in range(1, len(declared) + 1)]


def _parse_sections(path, lines) -> list:
    r"""The tables of an ARPA file's lines: per order ``(words, log10 p, log10 bo)``
    (``_section``), after the ``\data\`` counts and the section order are checked."""
    heads = [k for k, line in enumerate(lines) if line.startswith("\\")]
    start = next((i for i, k in enumerate(heads) if lines[k].strip() == "\\data\\"), None)
    if start is None:
        raise InputError(f"{path}: no \\data\\ header; is this an ARPA file?")
    heads = heads[start:] + [len(lines)]  # text before \data\ is a preamble (KenLM skips it)
    declared = _declared_counts(path, lines, heads[0], heads[1])
    if not declared:
        raise InputError(f"{path}: \\data\\ declares no n-gram counts; is this an ARPA file?")
    tables, ended = [], False
    for k, nxt in zip(heads[1:], heads[2:]):
        head = lines[k].strip()
        if ended:
            raise InputError(f"{path}:{k + 1}: '{head[:60]}' after \\end\\; the file is corrupt")
        if head == "\\end\\":
            ended = True
            extra = next((i for i in range(k + 1, nxt) if lines[i].strip()), None)
            if extra is not None:
                raise InputError(f"{path}:{extra + 1}: text after \\end\\; the file is corrupt")
            continue
        n = len(tables) + 1
        if head != f"\\{n}-grams:":
            want = f"\\{n}-grams:" if n <= len(declared) else "\\end\\"
            raise InputError(f"{path}:{k + 1}: expected {want}, got '{head[:60]}'; the file "
                             "is corrupt or not an ARPA file")
        if n > len(declared):
            raise InputError(f"{path}:{k + 1}: section {head} but \\data\\ declares "
                             f"{len(declared)} orders; the file is corrupt")
        tables.append(_section(path, lines, k, nxt, n, declared[n - 1]))
    if len(tables) < len(declared):
        raise InputError(f"{path}: \\data\\ declares {len(declared)} orders but the file ends "
                         f"after {len(tables)} (\\{len(tables) + 1}-grams: missing); the file is "
                         "truncated")
    if not ended:
        raise InputError(f"{path}: no \\end\\ line after the last section; the file is truncated")
    if not len(tables[0][0]):
        raise InputError(f"{path}: no unigrams in \\1-grams:; the file is corrupt")
    return tables


def _section(path, lines, k: int, nxt: int, n: int, count: int) -> tuple:
    r"""The ``\n-grams:`` section at line ``k`` (entries on lines k+1 .. nxt-1, ``count`` of
    them declared) -> ``(words per n-gram, log10 p float64, log10 back-off float64 (0 when
    absent))``, every value checked."""
    head = lines[k].strip()
    at = [i for i in range(k + 1, nxt) if lines[i].strip()]
    rows = [lines[i].split() for i in at]
    if len(rows) != count:
        raise InputError(f"{path}: header says ngram {n}={count} but {head} lists "
                         f"{len(rows)}; the file is truncated or corrupt")
    bad = next((i for i, r in zip(at, rows) if len(r) not in (n + 1, n + 2)), None)
    if bad is not None:
        raise InputError(f"{path}:{bad + 1}: in {head} expected log10p, {n} words and an "
                         f"optional back-off, got {_short(lines[bad].strip())}; is this an "
                         "ARPA file?")
    try:
        lp = np.fromiter(map(float, [r[0] for r in rows]), np.float64, len(rows))
        bo = np.fromiter(map(float, [r[n + 1] if len(r) == n + 2 else "0" for r in rows]),
                         np.float64, len(rows))
    except ValueError:
        i = next(i for i, r in zip(at, rows) if not _is_float(r[0])
                 or (len(r) == n + 2 and not _is_float(r[n + 1])))
        raise InputError(f"{path}:{i + 1}: in {head} a value is not a number: "
                         f"{_short(lines[i].strip())}; the file is corrupt") from None
    ok = np.isfinite(lp) & (lp <= 0) & np.isfinite(bo)
    if not ok.all():
        i = at[int(np.argmin(ok))]
        raise InputError(f"{path}:{i + 1}: in {head} every log10 probability must be finite "
                         f"and <= 0 and every back-off finite, got {_short(lines[i].strip())}; "
                         "the file is corrupt (fix or regenerate it)")
    return [r[1:n + 1] for r in rows], lp, bo


def _is_float(x: str) -> bool:
    try:
        float(x)
    except ValueError:
        return False
    return True


def word_ids(tables, tokenizer, words: str = ImportArpaConfig.words) -> dict:
    """{ARPA word: token id} for ``words`` in "auto" | "ids" | "pieces" (see module docstring)."""
    check_option(ImportArpaConfig, "words", words)
    if words == "auto":
        uni = [w[0] for w in tables[0][0] if w[0] not in SPECIALS]
        V = tokenizer.vocab_size
        words = "ids" if uni and all(w.isdigit() and int(w) < V for w in uni) else "pieces"
    table = arpa_words(tokenizer) if words == "ids" else np.array(
        [tokenizer.id_to_piece(i) for i in range(tokenizer.vocab_size)], dtype=object)
    out = {w: i for i, w in enumerate(table)}
    out.update(zip(SPECIALS, (tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id)))
    return out


def _to_ids(grams, vocab: dict, n: int, path) -> np.ndarray:
    flat = [w for g in grams for w in g]
    try:
        ids = np.fromiter(map(vocab.__getitem__, flat), dtype=np.int64, count=len(flat))
    except KeyError as e:
        raise OptionError(f"{path}: ARPA word {_short(e.args[0])} is not a piece or id of this "
                          "vocabulary; pass the tokenizer the training text was encoded with "
                          "(or words ids or pieces)") from None
    return ids.reshape(len(grams), n)


# ---- building the sparse model (packed-key helpers: packed.py) --------------------------------
def arpa_params(tables, tokenizer, words: str = ImportArpaConfig.words, path="ARPA"):
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
    uni = grams[0][:, 0]
    if len(np.unique(uni)) != len(uni):
        raise InputError(f"{path}: a unigram is listed twice; the file is corrupt")
    q, missing = arpa_unigrams(uni, tables[0][1], tokenizer)
    bo_uni = np.zeros(V)
    bo_uni[uni] = tables[0][2]
    # per order n >= 2: history keys, targets, log10 p (NaN = added by closure), log10 bo
    hist = [None] + [pack(g[:, :-1], V) for g in grams[1:]]
    cols = [None] + [g[:, -1].copy() for g in grams[1:]]
    lp = [None] + [t[1].copy() for t in tables[1:]]
    bo = [bo_uni] + [t[2].copy() for t in tables[1:]]
    suffix_closure(hist, cols, lp, bo, V)
    levels, hist_bo = interpolated_levels(hist, cols, lp, bo, np.log10(q), V, path)
    info = {"smoothing": "imported ARPA back-off model", "arpa_orders": [len(g) for g in grams],
            "arpa_missing_pieces": int(len(missing))}
    params, packed_by_row = suffix_params(q, levels, V, info)
    err = backoff_error(params, packed_by_row, hist_bo)
    for n in range(N - 1):  # listed with a back-off but no successors: lmkit's gamma is 1
        absent = packed_rows(packed_by_row[n], pack(grams[n], V)) < 0
        err = max([err] + np.abs(tables[n][2][absent]).tolist())
    params = params.with_lambdas(params.lambdas, arpa_max_backoff_error_log10=err)
    return params, {"orders": N, "ngrams": info["arpa_orders"], "missing_pieces": int(len(missing)),
                    "max_backoff_error_log10": err}


def arpa_unigrams(uni: np.ndarray, lp1: np.ndarray, tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """``(q, missing)``: q (V,) float64 the unigram distribution of the listed unigrams ``uni``
    (token ids) with log10 probabilities ``lp1``, summing to 1; ``missing`` the ids not listed,
    which share p(<unk>) (module docstring)."""
    V = tokenizer.vocab_size
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
    return q, missing


def suffix_closure(hist: list, cols: list, lp: list, bo: list, V: int) -> None:
    """Top-down suffix closure, in place: for every listed (h, w) of order n >= 3, (h minus its
    oldest token, w) exists one order down; the ones added get log10 p NaN (filled from the
    back-off in ``interpolated_levels``) and back-off 0. Lists indexed by order - 1."""
    for n in range(len(hist) - 1, 1, -1):
        sh, sc = hist[n] // V, cols[n]
        found = find_pairs(pair_index(hist[n - 1], cols[n - 1], V), sh, sc)
        need = np.unique(np.stack([sh[found < 0], sc[found < 0]]), axis=1)
        if need.shape[1]:
            hist[n - 1] = np.concatenate([hist[n - 1], need[0]])
            cols[n - 1] = np.concatenate([cols[n - 1], need[1]])
            lp[n - 1] = np.concatenate([lp[n - 1], np.full(need.shape[1], np.nan)])
            bo[n - 1] = np.concatenate([bo[n - 1], np.zeros(need.shape[1])])


def interpolated_levels(hist: list, cols: list, lp: list, bo: list, lower_lp: np.ndarray,
                        V: int, path) -> tuple[list, list]:
    """``(levels, hist_bo)`` per order n >= 2 from the closed tables: levels ``(history keys,
    targets, S values in nats)`` with S = ln p - ln bo(h) - ln p(lower) (0 for closure
    entries, whose NaN log10 p becomes ``bo(h) + p(lower)`` in ``lp``), and ``(history keys,
    log10 bo(h))``. ``lower_lp``: log10 of the unigram distribution."""
    levels, lower_index, hist_bo = [], None, []
    for n in range(1, len(hist)):
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
    return levels, hist_bo


def backoff_error(params: SparseParams, packed_by_row, hist_bo) -> float:
    """max |log10 gamma(h) - log10 bo(h)| over the model's histories (0 for a normalised ARPA)."""
    loggammas = backoff_tables(params)[1]
    worst = 0.0
    for m, (lg, (h, hbo)) in enumerate(zip(loggammas, hist_bo)):
        rows = packed_rows(packed_by_row[m], h)
        if len(rows):
            worst = max(worst, float(np.abs(lg[rows] / LN10 - hbo).max()))
    return worst


def import_arpa(path, tokenizer, *, words: str = ImportArpaConfig.words):
    """An ARPA file -> ``LanguageModel`` (see the module docstring); ``lmkit import-arpa``."""
    tables = read_arpa(path)
    params, report = arpa_params(tables, tokenizer, words, path)
    if report["max_backoff_error_log10"] > 1e-4:
        warnings.warn(f"{path}: back-offs differ from the normaliser by up to "
                      f"{report['max_backoff_error_log10']:.2g} (log10): the ARPA is not "
                      "normalised; lmkit scores its renormalised version", stacklevel=2)
    config = {"order": len(tables), "context": 0, "imported_from": str(path), "words": words}
    return LanguageModel(tokenizer, params, config, {"name": f"arpa:{Path(path).name}"}), report


# ---- export ----------------------------------------------------------------------------------
def arpa_words(tokenizer) -> np.ndarray:
    """ARPA word for each token id: the id in decimal, or ``<unk>``/``<s>``/``</s>``.

    To score with KenLM: ``kenlm.Model(arpa).full_scores(" ".join(words[ids]))``.
    """
    words = np.array([str(i) for i in range(tokenizer.vocab_size)], dtype=object)
    words[tokenizer.unk_id], words[tokenizer.bos_id], words[tokenizer.eos_id] = "<unk>", "<s>", "</s>"
    return words


def write_arpa(model, path, words: str = ExportArpaConfig.words) -> dict:
    """Write ``model`` (a pure suffix ``LanguageModel``) as an ARPA file; returns n-gram counts.

    ``words``: "ids" (decimal token ids, ``arpa_words``) or "pieces" (``piece_words``).
    """
    params, tok = model.params, model.tokenizer
    M = check_arpa_exportable(params)
    V = params.vocab_size
    if words not in ("ids", "pieces"):
        raise InputError(f"words must be ids or pieces, got {words!r}")
    words = arpa_words(tok) if words == "ids" else piece_words(tok)
    logps, loggammas = backoff_tables(params)
    ln10 = math.log(10)
    sections = []
    # unigrams: every token, <s> at -99 as in KenLM; backoff = gamma of the 1-token history
    bo = np.zeros(V)
    r1 = lookup_rows(params.keys[0], np.arange(V))
    bo[r1 >= 0] = loggammas[0][r1[r1 >= 0]]
    lp1 = np.log(params.q) / ln10
    lp1[tok.bos_id] = -99.0
    sections.append(_arpa_lines(lp1, words[np.arange(V)][:, None], bo / ln10, M >= 1))
    for m in range(M):
        S = params.S[m].tocsr()
        S.sort_indices()
        er = np.repeat(np.arange(S.shape[0]), np.diff(S.indptr))
        hist = decode_histories(params.keys, m + 1, V)[er]
        ids = np.concatenate([hist, S.indices[:, None].astype(np.int64)], axis=1)
        bo = np.zeros(S.nnz)
        if m + 1 < M:  # this n-gram as a history of the next group (unseen there: backoff 0)
            rk = encode_histories(params.keys, ids, V)
            bo[rk >= 0] = loggammas[m + 1][rk[rk >= 0]]
        sections.append(_arpa_lines(logps[m] / ln10, words[ids], bo / ln10, m + 1 < M))
    sizes = [len(s) for s in sections]

    def write(f):
        f = io.TextIOWrapper(f, encoding="utf-8", newline="\n")
        f.write("\\data\\\n" + "".join(f"ngram {n + 1}={c}\n" for n, c in enumerate(sizes)))
        for n, lines in enumerate(sections):
            f.write(f"\n\\{n + 1}-grams:\n")
            f.write("\n".join(lines))
            f.write("\n")
        f.write("\n\\end\\\n")
        f.detach()  # flushes; atomic_write fsyncs and closes the file

    atomic_write(path, write)  # temp file + rename: never a half-written ARPA file
    return {f"{n + 1}-grams": c for n, c in enumerate(sizes)}


def _arpa_lines(log10p, word_rows, log10bo, with_backoff: bool) -> list:
    texts = [" ".join(r) for r in word_rows]
    if with_backoff:
        return [f"{p:.6f}\t{t}\t{b:.6f}" if b != 0 else f"{p:.6f}\t{t}"
                for p, t, b in zip(log10p.tolist(), texts, log10bo.tolist())]
    return [f"{p:.6f}\t{t}" for p, t in zip(log10p.tolist(), texts)]


__all__ = ["import_arpa", "read_arpa", "arpa_params", "write_arpa", "arpa_words", "piece_words",
           "word_ids", "check_arpa_exportable"]
