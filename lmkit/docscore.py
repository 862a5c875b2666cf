"""Per-document scoring: a model + a stream of texts -> one JSON object per line or document.

Input: UTF-8 text files (``fmt="text"``: one unit per line, or with ``unit="document"`` blocks
separated by blank lines), JSON Lines files (``fmt="jsonl"``: one record per line, the text in
``text_field``, an optional ``id_field``), or a ``datasets`` dataset (records, as jsonl).
Output: a JSONL file, one object per unit in input order::

    {"index": 0, "id": "doc-17", "tokens": 57, "nll_nats": 201.3, "perplexity": 34.2,
     "bits_per_byte": 1.91}

``index`` counts units (records for jsonl; ``line`` is added for ``unit="line"`` on jsonl). A
document is scored as CCNet does with KenLM: each of its lines is a sequence (BOS ... EOS), the
log-probabilities are summed, ``tokens`` counts every line's EOS, ``perplexity`` =
exp(nll_nats / tokens) and ``bits_per_byte`` = nll_nats / ln 2 / (UTF-8 bytes + 1 per line). An
empty line or record is one sequence with only EOS, so every unit has a finite perplexity.

Scale: units are read lazily and scored in chunks; with ``workers > 1`` chunks go to worker
processes (each loads the model once) and at most ``2 * workers`` chunks are in flight, so
memory stays constant however long the input is, and results are written in input order. The
output is written to a temporary file and renamed at the end; on an error, Ctrl-C or SIGTERM
the workers are terminated and the temporary file removed.
"""
from __future__ import annotations

import ctypes
import json
import math
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .adapt import score_units_adaptive
from .config import AdaptConfig, ScoreConfig, field_names, make
from .corpus import expand_paths, file_lines, local_data_files
from .errors import InputError, MissingDependencyError, MissingPathError
from .load import load as load_model

CHUNK_UNITS = 2048
CHUNK_CHARS = 1_000_000


# ---- reading units ----------------------------------------------------------------------------
def _text_lines(paths) -> Iterator[str]:
    for f in expand_paths(paths):
        for raw in file_lines(f):
            yield raw.rstrip("\r\n")


def _jsonl_records(paths) -> Iterator[dict]:
    for f in expand_paths(paths):
        for lineno, raw in enumerate(file_lines(f), 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except ValueError as e:
                raise InputError(f"{f}:{lineno}: not a JSON object ({e}); pass --format text "
                                 "for plain text") from None
            if not isinstance(rec, dict):
                raise InputError(f"{f}:{lineno}: a JSON {type(rec).__name__}, not an object; "
                                 "each line must be one JSON object")
            yield rec


def _dataset_records(dataset: str, split: str) -> Iterator[dict]:
    try:
        import datasets  # optional dependency
    except ImportError:
        raise MissingDependencyError("dataset needs the `datasets` package; install it with "
                                     "`pip install 'lmkit[hf]'`, or pass input files") from None
    local = Path(dataset)
    if local.exists():
        builder, files = local_data_files(local)
        ds = datasets.load_dataset(builder, data_files={split: files}, split=split, streaming=True)
    else:
        path, _, config = dataset.partition(":")
        ds = datasets.load_dataset(path, config or None, split=split, streaming=True)
    yield from ds


def iter_units(*, input=None, dataset=None, split: str = "train", fmt: str = "text",
               text_field: str = "text", id_field: str | None = None,
               unit: str = "line") -> Iterator[tuple[dict, list]]:
    """``(meta, lines)`` per unit, lazily: meta is the output's identifying fields."""
    if unit not in ("line", "document"):
        raise InputError(f"--unit must be line or document, got {unit!r}")
    if fmt not in ("text", "jsonl"):
        raise InputError(f"--format must be text or jsonl, got {fmt!r}")
    if (input is None) == (dataset is None):
        raise InputError("give exactly one of --input and --dataset")
    if input is not None and fmt == "text":
        if id_field:
            raise InputError("--id-field needs --format jsonl (plain text has no fields)")
        if unit == "line":
            for i, line in enumerate(_text_lines(input)):
                yield {"index": i}, [line]
            return
        doc, i = [], 0
        for line in _text_lines(input):
            if line.strip():
                doc.append(line)
            elif doc:
                yield {"index": i}, doc
                doc, i = [], i + 1
        if doc:
            yield {"index": i}, doc
        return
    records = _jsonl_records(input) if input is not None else _dataset_records(dataset, split)
    for i, rec in enumerate(records):
        if text_field not in rec or not isinstance(rec[text_field], (str, type(None))):
            raise InputError(f"record {i}: no text field {text_field!r} (fields: "
                             f"{', '.join(map(str, rec))[:200]}); pick one with --text-field")
        meta = {"index": i}
        if id_field:
            if id_field not in rec:
                raise InputError(f"record {i}: no id field {id_field!r}; pick one with --id-field")
            meta["id"] = rec[id_field]
        text = rec[text_field] or ""
        if unit == "document":
            yield meta, [x for x in text.split("\n") if x.strip()] or [""]
        else:
            for j, line in enumerate(text.split("\n")):
                yield {**meta, "line": j}, [line]


def _chunks(units: Iterable, max_units: int = CHUNK_UNITS, max_chars: int = CHUNK_CHARS):
    chunk, chars = [], 0
    for u in units:
        chunk.append(u)
        chars += sum(len(x) for x in u[1])
        if len(chunk) >= max_units or chars >= max_chars:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk


# ---- scoring ----------------------------------------------------------------------------------
def score_units(model, chunk: list, num_threads: int | None = None) -> list:
    """One result dict per ``(meta, lines)`` unit (see the module docstring)."""
    lines = [x for _, ls in chunk for x in ls]
    seqs = model.tokenizer.encode_batch(lines, num_threads=num_threads)
    logp, seq_index = model.log_proba_ids(seqs)
    line_nll = -np.bincount(seq_index, logp, minlength=len(lines))
    line_tok = np.fromiter((len(s) + 1 for s in seqs), dtype=np.int64, count=len(seqs))
    line_bytes = np.fromiter((len(x.encode("utf-8")) + 1 for x in lines), dtype=np.int64,
                             count=len(lines))
    starts = np.cumsum([0] + [len(ls) for _, ls in chunk[:-1]])  # every unit has >= 1 line
    nll = np.add.reduceat(line_nll, starts).tolist()
    tok = np.add.reduceat(line_tok, starts).tolist()
    n_bytes = np.add.reduceat(line_bytes, starts).tolist()
    ln2 = math.log(2)
    return [{**meta, "tokens": t, "nll_nats": x, "perplexity": math.exp(x / t),
             "bits_per_byte": x / ln2 / b}
            for (meta, _), x, t, b in zip(chunk, nll, tok, n_bytes)]


_MODEL = None


def _worker_init(model_path) -> None:
    global _MODEL
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # forked with the parent's handler: undo it
    try:  # Linux: die with the parent even if it is killed outright
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    _MODEL = load_model(model_path)


def _scored_text(model, chunk, num_threads=None, adapt=None) -> tuple[str, int, int, float]:
    """(JSONL text, units, tokens, nll) of a chunk: encoded where it is scored, so a worker
    hands the parent one string instead of thousands of dicts. ``adapt``: an ``AdaptConfig``
    (adaptive scoring, ``adapt.score_units_adaptive``) or None."""
    res = score_units(model, chunk, num_threads) if adapt is None else \
        score_units_adaptive(model, chunk, adapt)
    parts = []
    for r, (meta, _) in zip(res, chunk):
        head = json.dumps(meta, ensure_ascii=False)[:-1]  # the input's own fields, escaped
        # repr of a finite float is a valid JSON number (and round-trips exactly)
        parts.append(f'{head}, "tokens": {r["tokens"]}, "nll_nats": {r["nll_nats"]!r}, '
                     f'"perplexity": {r["perplexity"]!r}, "bits_per_byte": {r["bits_per_byte"]!r}}}\n')
    return ("".join(parts), len(res), sum(r["tokens"] for r in res),
            sum(r["nll_nats"] for r in res))


def _worker_score(chunk):
    return _scored_text(_MODEL, chunk, num_threads=1)


def _results(model_path, chunks, workers: int, adapt=None):
    """Scored chunks in input order; at most ``2 * workers`` chunks in flight. With ``adapt``
    the whole input is one chunk (each unit is scored after every earlier one)."""
    if adapt is not None:
        model = load_model(model_path)
        units = [u for chunk in chunks for u in chunk]
        if units:
            yield _scored_text(model, units, adapt=adapt)
        return
    if workers == 1:
        model = load_model(model_path)
        for chunk in chunks:
            yield _scored_text(model, chunk)
        return
    pool = mp.get_context("fork").Pool(workers, _worker_init, (str(model_path),))
    try:
        pending = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_worker_score, (chunk,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()
        pool.close()
    finally:
        pool.terminate()  # no-op after a clean close; kills the workers on any error or signal
        pool.join()


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def score_file(model_path, output, *, progress: bool = True, **options) -> dict:
    """Score every unit and write ``output`` (JSONL) atomically; ``lmkit score``.

    Options: ``config.ScoreConfig`` (input or dataset, split, format, text_field, id_field,
    unit, workers) and ``config.AdaptConfig`` (adapt: every unit scored by the model mixed with
    a cache of the units before it; the input is read whole). Returns ``{"units", "tokens", "nll_nats", "perplexity", "seconds",
    "units_per_s", "tokens_per_s"}`` for the whole input.
    """
    adapt_keys = set(field_names(AdaptConfig))
    ad = make(AdaptConfig, {k: v for k, v in options.items() if k in adapt_keys})
    o = make(ScoreConfig, {k: v for k, v in options.items() if k not in adapt_keys})
    if ad.adapt and ad.cache_fit:
        raise InputError("lmkit score --adapt takes no --cache-fit (there is no valid split); "
                         "fit the weights with lmkit eval --adapt --cache-fit")
    if ad.adapt and o.workers > 1:
        raise InputError("--adapt scores the units in reading order, in one process; pass "
                         "--workers 1")
    input, dataset, split, fmt = o.input, o.dataset, o.split, o.format
    text_field, id_field, unit, workers = o.text_field, o.id_field, o.unit, o.workers
    if not Path(model_path).exists():
        raise MissingPathError(f"{model_path}: no such model folder; train one with `lmkit train`")
    out = Path(output)
    if out.is_dir():
        raise InputError(f"--output {out} is a folder; give a file name like scores.jsonl")
    units = iter_units(input=input, dataset=dataset, split=split, fmt=fmt, text_field=text_field,
                       id_field=id_field, unit=unit)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
    n_units = n_tok = 0
    nll, t0 = 0.0, time.time()
    results = _results(model_path, _chunks(units), workers, ad if ad.adapt else None)
    try:
        from tqdm import tqdm
        with os.fdopen(fd, "w", encoding="utf-8") as f, tqdm(
                desc="score", unit="doc", file=sys.stderr, disable=None if progress else True,
                leave=False) as bar:
            for text, n, t, x in results:
                f.write(text)
                n_units, n_tok, nll = n_units + n, n_tok + t, nll + x
                bar.update(n)
                bar.set_postfix_str(f"{n_tok / max(time.time() - t0, 1e-9):,.0f} tok/s",
                                    refresh=False)
        if n_units == 0:
            raise InputError("nothing to score: the input has no lines or records")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        results.close()  # terminates the workers now if we stopped early
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
    sec = max(time.time() - t0, 1e-9)
    return {"units": n_units, "tokens": n_tok, "nll_nats": nll,
            "perplexity": math.exp(nll / n_tok), "seconds": sec,
            "units_per_s": n_units / sec, "tokens_per_s": n_tok / sec}


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


__all__ = ["score_file", "score_units", "iter_units", "load_model"]
