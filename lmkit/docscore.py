"""Per-document scoring: a model + a stream of texts -> one JSON object per line or document.

Input: UTF-8 text files (``fmt="text"``: one unit per line, or with ``unit="document"`` blocks
separated by blank lines), JSON Lines files (``fmt="jsonl"``: one record per line, the text in
``text_field``, an optional ``id_field``), or a ``datasets`` dataset (records, as jsonl).
Output: a JSONL file, one object per unit in input order::

    {"index": 0, "id": "doc-17", "tokens": 57, "nll_nats": 201.3, "perplexity": 34.2,
     "bits_per_byte": 1.91}

Lines are read by the rule every verb shares (``corpus.numbered_sequences``, docs/lines.md):
only "\\n" ends a line, trailing whitespace is dropped, and an empty or whitespace-only line is
no sequence: it gets no row and costs nothing, so the rows sum to what ``lmkit eval`` counts.
``index`` says where a unit came from: the 0-based line number for text lines (blank lines
leave gaps), the document number for documents, the record number for jsonl (``line``, the
line's number within its record, is added for ``unit="line"``). A document is scored as CCNet
does with KenLM: each of its lines is a sequence (BOS ... EOS), the log-probabilities are
summed, ``tokens`` counts every line's EOS, ``perplexity`` = exp(nll_nats / tokens) and
``bits_per_byte`` = nll_nats / ln 2 / (UTF-8 bytes + 1 per line). A jsonl record with no
sequence is still one document row, scored as the empty sequence (EOS only), so every record
has a row with a finite perplexity.

Scale: units are read lazily and scored in chunks (plain text in blocks, without a record
per line: ``corpus.numbered_sequence_blocks``); a chunk is encoded by
``Tokenizer.encode_flat`` (each distinct whitespace unit through SentencePiece once, the same
ids, ``wordcache``) into one id array the model scores as it is; the arithmetic is vectorised
per chunk, and once compiled code runs in the process (``native.ready``: the MKN walk, the
sparse scorer or the unit cache loaded a kernel) a chunk's rows are written by compiled code
(``io.jsonrows``, the same bytes), else each unit costs one f-string of output.
The work is forecast from the first chunk and the input files' size, so a model with derived
scoring tables (a pure MKN model's compiled trie walk, ``ngram.score``) builds them before
scoring rather than part way (``_prepare``). With ``workers = 1`` one thread reads and encodes
the next chunks while this one is scored (SentencePiece and the compiled walk release the GIL),
the tables building meanwhile. With ``workers > 1`` chunks go to worker processes
(``pool.ordered_map``: forked, they share the model and tables the parent loaded and
built; one chunk in flight each) and come back as UTF-8 bytes ready to write, so memory stays
constant however long the input is, and results are written in input order. The output is
written by ``io.files.atomic_write`` (a temporary file renamed at the end); on an error, a
worker's death, Ctrl-C or SIGTERM the workers are stopped and the temporary file removed.
"""
from __future__ import annotations

import json
import math
import queue
import threading
import time
from bisect import bisect_left
from functools import partial
from itertools import accumulate, chain
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from .config import AdaptConfig, ScoreConfig, check_option, field_names, make
from .corpus import (expand_paths, file_lines, local_data_files, numbered_sequence_blocks,
                     numbered_sequences, sequences)
from .errors import InputError, MissingDependencyError, MissingPathError, OptionError
from . import native
from .io import jsonrows
from .io.files import atomic_write, check_output_writable
from .load import load as load_model
from .pool import ordered_map, pool_context
from .progress import terminal_bar

CHUNK_UNITS = 2048
CHUNK_CHARS = 1_000_000
LN2 = math.log(2)


# ---- reading units ----------------------------------------------------------------------------
def _text_lines(paths) -> Iterator[tuple[int, str]]:
    """``(line number, sequence)`` by the one line rule (``corpus.numbered_sequences``):
    numbers count every line of the files in order, blank ones included."""
    files = expand_paths(paths)
    return numbered_sequences((line for f in files for line in file_lines(f)),
                              "input:" + ",".join(map(str, paths)))


def _jsonl_records(paths) -> Iterator[dict]:
    for f in expand_paths(paths):
        for lineno, raw in enumerate(file_lines(f), 1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw)
            except ValueError as e:
                raise OptionError(f"{f}:{lineno}: not a JSON object ({e}); pass format text "
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
        if builder == "text":  # as corpus._load_dataset: our reader, not datasets' (lone "\r")
            for f in files:
                yield from ({"text": x.removesuffix("\n")} for x in file_lines(Path(f)))
            return
        ds = datasets.load_dataset(builder, data_files={split: files}, split=split, streaming=True)
    else:
        path, _, config = dataset.partition(":")
        ds = datasets.load_dataset(path, config or None, split=split, streaming=True)
    yield from ds


def iter_units(*, input=None, dataset=None, split: str = ScoreConfig.split,
               fmt: str = ScoreConfig.format, text_field: str = ScoreConfig.text_field,
               id_field: str | None = ScoreConfig.id_field,
               unit: str = ScoreConfig.unit) -> Iterator[tuple[dict, list]]:
    """``(meta, lines)`` per unit, lazily: meta is the output's identifying fields. The
    options are checked at the call (``config.ScoreConfig``), the input as it is read."""
    check_option(ScoreConfig, "unit", unit)
    check_option(ScoreConfig, "format", fmt)
    if (input is None) == (dataset is None):
        raise OptionError("pass exactly one of input or dataset")
    if input is not None and fmt == "text" and id_field:
        raise OptionError("id_field needs format jsonl (plain text has no fields)")
    return _units(input, dataset, split, fmt, text_field, id_field, unit)


def _units(input, dataset, split, fmt, text_field, id_field, unit) -> Iterator[tuple[dict, list]]:
    if input is not None and fmt == "text":
        if unit == "line":  # index: the line's number (blank lines get no row)
            for n, line in _text_lines(input):
                yield {"index": n}, [line]
            return
        doc, i, prev = [], 0, None
        for n, line in _text_lines(input):
            if doc and n != prev + 1:  # blank lines between: a new document
                yield {"index": i}, doc
                doc, i = [], i + 1
            doc.append(line)
            prev = n
        if doc:
            yield {"index": i}, doc
        return
    records = _jsonl_records(input) if input is not None else _dataset_records(dataset, split)
    for i, rec in enumerate(records):
        if text_field not in rec:
            raise OptionError(f"record {i}: no text field {text_field!r} (fields: "
                              f"{', '.join(map(repr, rec))[:200]}); pick one with text_field")
        if not isinstance(rec[text_field], (str, type(None))):
            raise OptionError(f"record {i}: the text field {text_field!r} holds "
                             f"{_json_kind(rec[text_field])}, not a string; pick the field "
                             "holding the text with text_field")
        meta = {"index": i}
        if id_field:
            if id_field not in rec:
                raise OptionError(f"record {i}: no id field {id_field!r}; pick one with id_field")
            try:  # json.loads accepts NaN, Infinity and 1e400; the output must be strict JSON
                json.dumps(rec[id_field], allow_nan=False)
            except ValueError:
                raise InputError(f"record {i}: the id field {id_field!r} holds "
                                 f"{str(rec[id_field])[:40]}, which JSON has no number for; "
                                 "give ids as strings or finite numbers") from None
            meta["id"] = rec[id_field]
        text = rec[text_field] or ""
        if unit == "document":  # a record with no sequence still gets its row (EOS only)
            yield meta, list(sequences([text], None)) or [""]
        else:
            for j, line in numbered_sequences([text], None):
                yield {**meta, "line": j}, [line]


def _json_kind(value) -> str:
    """What a JSON value is, in words, with a short excerpt: ``a number (5)``."""
    kind = {bool: "a boolean", int: "a number", float: "a number", list: "a list",
            dict: "an object"}.get(type(value), type(value).__name__)
    return f"{kind} ({json.dumps(value)[:40]})"


class Chunk(NamedTuple):
    """A batch of units: ``lines`` of every unit in order, and either ``numbers`` (plain text,
    one line per unit: unit k is the file's line ``numbers[k]``, its index) or ``metas`` (each
    unit's identifying fields) with ``sizes`` (its number of lines, >= 1)."""
    lines: list
    numbers: list | None = None
    metas: list | None = None
    sizes: list | None = None

    @property
    def n_units(self) -> int:
        return len(self.lines) if self.metas is None else len(self.metas)


def _chunks(units: Iterable, max_units: int = CHUNK_UNITS, max_chars: int = CHUNK_CHARS):
    """``Chunk``s of ``(meta, lines)`` units: at most ``max_units`` units or about
    ``max_chars`` characters each."""
    metas, lines, sizes, chars = [], [], [], 0
    for meta, ls in units:
        metas.append(meta)
        lines.extend(ls)
        sizes.append(len(ls))
        chars += sum(map(len, ls))
        if len(metas) >= max_units or chars >= max_chars:
            yield Chunk(lines, metas=metas, sizes=sizes)
            metas, lines, sizes, chars = [], [], [], 0
    if metas:
        yield Chunk(lines, metas=metas, sizes=sizes)


def _line_chunks(paths, max_units: int = CHUNK_UNITS, max_chars: int = CHUNK_CHARS):
    """``Chunk``s of a plain text input scored line by line: no per-line dict or tuple; the
    lines read in blocks (``corpus.numbered_sequence_blocks``), cut where ``_chunks`` cuts (a
    chunk ends after the line that brings it to ``max_units`` lines or ``max_chars``)."""
    lines, numbers, chars = [], [], 0
    for nums, seqs in numbered_sequence_blocks(expand_paths(paths),
                                               "input:" + ",".join(map(str, paths))):
        pos = 0
        while pos < len(seqs):
            take = min(len(seqs) - pos, max_units - len(lines))
            cum = list(accumulate(map(len, seqs[pos:pos + take]), initial=chars))
            take = min(take, bisect_left(cum, max_chars, 1))  # the line reaching max_chars
            lines += seqs[pos:pos + take]
            numbers += nums[pos:pos + take]
            chars = cum[take]
            pos += take
            if len(lines) >= max_units or chars >= max_chars:
                yield Chunk(lines, numbers=numbers)
                lines, numbers, chars = [], [], 0
    if lines:
        yield Chunk(lines, numbers=numbers)


def input_chunks(*, input=None, dataset=None, split: str = ScoreConfig.split,
                 fmt: str = ScoreConfig.format, text_field: str = ScoreConfig.text_field,
                 id_field: str | None = ScoreConfig.id_field, unit: str = ScoreConfig.unit):
    """The ``Chunk``s of an input (``iter_units``'s units, batched), lazily."""
    units = iter_units(input=input, dataset=dataset, split=split, fmt=fmt,
                       text_field=text_field, id_field=id_field, unit=unit)
    if input is not None and fmt == "text" and unit == "line":
        return _line_chunks(input)  # the options were checked: read lines, not units
    return _chunks(units)


# ---- scoring ----------------------------------------------------------------------------------
def _encode(model, lines: list, num_threads: int | None = None, compiled: bool | None = None):
    """``lines`` encoded by the model's tokenizer: ``(ids, lengths)`` arrays
    (``Tokenizer.encode_flat``; ``compiled``: its unit cache, see there), or a list of id
    lists for a tokenizer without it."""
    encode_flat = getattr(model.tokenizer, "encode_flat", None)
    if encode_flat is None:
        return model.tokenizer.encode_batch(lines, num_threads=num_threads)
    return encode_flat(lines, num_threads=num_threads, compiled=compiled)


def _line_stats(model, lines: list, seqs=None, num_threads: int | None = None):
    """Per-line ``(nll_nats, tokens, bytes)`` arrays, float64/int64/int64 (L,): tokens count
    EOS, bytes the UTF-8 bytes + 1 for the newline. ``seqs``: the lines already encoded
    (``_encode``: ``(ids, lengths)`` or id lists)."""
    if seqs is None:
        seqs = _encode(model, lines, num_threads)
    if isinstance(seqs, tuple):  # (ids, lengths)
        ids, lengths = seqs
        log_proba_flat = getattr(model, "log_proba_flat", None)
        if log_proba_flat is not None:
            logp, seq_index = log_proba_flat(ids, lengths)
        else:
            ends = np.cumsum(lengths)
            logp, seq_index = model.log_proba_ids(
                [ids[a:b].tolist() for a, b in zip(ends - lengths, ends)])
        tok = lengths + 1
    else:
        logp, seq_index = model.log_proba_ids(seqs)
        tok = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs)) + 1
    nll = -np.bincount(seq_index, logp, minlength=len(lines))
    # no line holds "\n" (they were split at it): the newlines of the joined text end them
    text = np.frombuffer(("\n".join(lines) + "\n").encode("utf-8"), dtype=np.uint8)
    n_bytes = np.diff(np.flatnonzero(text == 10), prepend=-1)
    return nll, tok, n_bytes


def _unit_stats(chunk: Chunk, nll, tok, n_bytes):
    """Per-line arrays summed per unit (a document's lines add up)."""
    if chunk.sizes is None or len(chunk.sizes) == len(nll):
        return nll, tok, n_bytes
    starts = np.concatenate([[0], np.cumsum(chunk.sizes[:-1])]).astype(np.int64)
    return tuple(np.add.reduceat(x, starts) for x in (nll, tok, n_bytes))


def _unit_scores(model, chunk: Chunk, num_threads=None, seqs=None):
    """Per-unit ``(nll_nats, tokens, perplexity, bits_per_byte)`` arrays of a chunk, the one
    computation behind ``score_units`` and the written rows (so the two agree to the bit)."""
    nll, tok, n_bytes = _unit_stats(chunk, *_line_stats(model, chunk.lines, seqs, num_threads))
    with np.errstate(over="ignore"):
        ppl = np.exp(nll / tok)
    bpb = nll / LN2 / n_bytes
    if not (np.isfinite(ppl).all() and np.isfinite(nll).all()):
        raise InputError("a unit's perplexity overflows a float (mean nll > 709 nats per "
                         "token); score shorter units or check the model")
    return nll, tok, ppl, bpb


def score_units(model, chunk: list, num_threads: int | None = None) -> list:
    """One result dict per ``(meta, lines)`` unit (see the module docstring); the numbers
    ``score_file`` writes, and ``json.dumps`` of each dict is its line there, byte for byte."""
    c = next(_chunks(chunk, max_units=len(chunk) + 1, max_chars=float("inf")), None)
    if c is None:
        return []
    nll, tok, ppl, bpb = _unit_scores(model, c, num_threads)
    return [{**meta, "tokens": t, "nll_nats": x, "perplexity": p, "bits_per_byte": b}
            for meta, x, t, p, b in zip(c.metas, nll.tolist(), tok.tolist(), ppl.tolist(),
                                        bpb.tolist())]


def _head(meta: dict) -> str:
    """``{"index": 3, "id": "doc-17", "line": 0`` (the closing brace comes later)."""
    head = f'{{"index": {meta["index"]}'
    if "id" in meta:  # the input's own value, escaped (NaN/inf were refused by iter_units)
        head += f', "id": {json.dumps(meta["id"], ensure_ascii=False)}'
    if "line" in meta:
        head += f', "line": {meta["line"]}'
    return head


def _scored_text(model, chunk: Chunk, num_threads=None, seqs=None) -> tuple[bytes, int, int, float]:
    """(JSONL as UTF-8, units, tokens, nll) of a chunk: formatted where it is scored, so a
    worker hands the parent bytes ready to write. The arithmetic is vectorised; the rows are
    ``io.jsonrows.rows`` (compiled, 0.04 vs 0.25 CPU s per 124k rows) when a compiled kernel
    already runs in this process (``native.ready``), else one f-string per unit
    (``jsonrows.py_row``: ``repr`` of a finite float is a valid JSON number that round-trips
    exactly); both write the same bytes. Starting the native loader (llvmlite) only for the
    rows would cost more than it saves on a short job."""
    nll, tok, ppl, bpb = _unit_scores(model, chunk, num_threads, seqs)
    stats = len(nll), int(tok.sum()), float(nll.sum())
    if native.ready():  # compiled rows, same bytes; never worth the loader's start alone
        data = jsonrows.rows(tok, nll, ppl, bpb, numbers=chunk.numbers,
                             heads=None if chunk.metas is None else list(map(_head, chunk.metas)))
        if data is not None:
            return (data, *stats)
    if chunk.metas is None:
        heads = (f'{{"index": {i}' for i in chunk.numbers)
    else:
        heads = map(_head, chunk.metas)
    text = "".join([jsonrows.py_row(h, t, x, p, b) for h, t, x, p, b in
                    zip(heads, tok.tolist(), nll.tolist(), ppl.tolist(), bpb.tolist())])
    return (text.encode("utf-8"), *stats)


_MODEL = None  # a spawned worker's own copy of the model (fork workers inherit the parent's)


def _worker_init(model_path, expected: int = 0) -> None:
    global _MODEL
    _MODEL = load_model(model_path)
    _prepare(_MODEL, expected)


def _prepare(model, n_positions: int) -> None:
    """Build the model's derived scoring tables now when ``n_positions`` targets are coming
    (``LanguageModel.prepare``; a pure MKN model's trie walk). Models without it: nothing."""
    prepare = getattr(model, "prepare", None)
    if prepare is not None and n_positions > 0:
        prepare(n_positions)


def _forecast(chunk: Chunk, seqs: list, input_bytes: int) -> int:
    """Targets (tokens + EOS) an input of ``input_bytes`` bytes will have, extrapolated from
    its first chunk (``seqs``: that chunk encoded); 0 when the size is unknown (a dataset, a
    pipe). A forecast for ``_prepare``: it changes the speed, never a number."""
    if input_bytes <= 0 or not chunk.lines:
        return 0
    targets = (int(seqs[1].sum()) + len(seqs[1]) if isinstance(seqs, tuple)
               else sum(map(len, seqs)) + len(seqs))
    chunk_bytes = sum(map(len, chunk.lines)) + len(chunk.lines)  # characters: a lower bound
    return int(targets * max(input_bytes / chunk_bytes, 1.0))


def _input_bytes(input) -> int:
    """Bytes of the regular input files (0 when there are none: a dataset, a pipe)."""
    if input is None:
        return 0
    try:
        return sum(f.stat().st_size for f in expand_paths(input) if f.is_file())
    except OSError:  # unreadable: the reader names the problem
        return 0


def _adaptive_text(model, units: list, adapt) -> tuple[bytes, int, int, float]:
    """(JSONL as UTF-8, units, tokens, nll) of ``(meta, lines)`` units scored adaptively
    (``adapt.score_units_adaptive``: each unit after every earlier one), formatted as
    ``_scored_text`` formats a chunk."""
    from .adapt import score_units_adaptive  # only with --adapt: adapt imports counts
    res = score_units_adaptive(model, units, adapt)
    text = "".join(jsonrows.py_row(_head(r), r["tokens"], r["nll_nats"], r["perplexity"],
                                   r["bits_per_byte"]) for r in res)
    return (text.encode("utf-8"), len(res), sum(r["tokens"] for r in res),
            sum(r["nll_nats"] for r in res))


def _worker_score(chunk):
    return _scored_text(_MODEL, chunk, num_threads=1)


# chunks the reader may encode ahead of the scorer: enough to keep encoding while the first
# chunk waits for the model's tables (~0.5 s on an order-5 model), bounded so that memory
# stays constant (at most PREFETCH x CHUNK_CHARS characters and their ids)
PREFETCH = 16
# an input this large encodes through the tokenizer's compiled unit cache from its first chunk
# (``Tokenizer.encode_flat``, ``wordcache``): it saves ~0.4 us a token over SentencePiece's
# BPE, so ~1M tokens repay loading its compiled passes (~0.05 CPU s from the object cache; the
# first run compiles them, ~0.5 s of numba's import and more); a shorter input uses the cache
# only once compiled code runs in the process (``native.ready``)
COMPILED_ENCODE_BYTES = 4 << 20


def _prefetched(fn, items, depth: int = PREFETCH):
    """``(item, fn(item))`` for every item, in order, computed up to ``depth`` ahead by one
    background thread: SentencePiece's batch encode releases the GIL, so reading and encoding
    the next chunk overlaps scoring this one. Errors are re-raised here; closing the
    generator (an error, a signal in the main thread) stops the thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(msg) -> None:
        while not stop.is_set():
            try:
                q.put(msg, timeout=0.1)
                return
            except queue.Full:
                pass

    def run() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                put(("ok", (item, fn(item))))
            put(("end", None))
        except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
            put(("error", e))

    thread = threading.Thread(target=run, name="lmkit-score-reader", daemon=True)
    thread.start()
    try:
        while True:
            try:
                kind, value = q.get(timeout=0.5)
            except queue.Empty:
                if not thread.is_alive():  # cannot happen: run() always puts its end
                    raise RuntimeError("the reader thread ended without a result") from None
                continue
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()
        thread.join(5.0)  # at most one chunk's read + encode


def _results(model, model_path, chunks, workers: int, units=None, adapt=None,
             input_bytes: int = 0):
    """Scored chunks in input order (``pool.ordered_map``: a worker that fails or dies
    ends the run at once; at most ``workers`` chunks in flight). With ``adapt`` (an
    ``AdaptConfig``) the ``units`` are read whole and scored in one pass, in reading order.
    ``input_bytes``: the input's size, to forecast the work from the first chunk and build
    the model's scoring tables before scoring (``_prepare``) rather than part way."""
    if adapt is not None:
        units = list(units)
        if units:
            yield _adaptive_text(model, units, adapt)
        return
    # a long input encodes through the tokenizer's compiled unit cache (its load pays)
    compiled = True if input_bytes >= COMPILED_ENCODE_BYTES else None
    encode = partial(_encode, model, num_threads=1, compiled=compiled)
    if workers == 1:  # read and encode the next chunks while this one is scored
        first = True
        for chunk, seqs in _prefetched(lambda c: encode(c.lines), chunks):
            if first:  # the tables build here while the reader keeps encoding (both nogil)
                _prepare(model, _forecast(chunk, seqs, input_bytes))
                first = False
            yield _scored_text(model, chunk, seqs=seqs)
        return
    chunks = iter(chunks)
    head = next(chunks, None)
    if head is None:
        return
    expected = _forecast(head, encode(head.lines), input_bytes)
    chunks = chain([head], chunks)
    if pool_context().get_start_method() == "fork":  # the workers share the parent's model
        _prepare(model, expected)  # built once, before the fork: shared, not built per worker
        fn, init, args = partial(_scored_text, model, num_threads=1), None, ()
    else:
        fn, init, args = _worker_score, _worker_init, (str(model_path), expected // workers)
    yield from ordered_map(fn, chunks, workers, init=init, init_args=args,
                           what="a scoring worker")


def score_file(model_path, output, *, progress: bool = True, **options) -> dict:
    """Score every unit and write ``output`` (JSONL) atomically; ``lmkit score``.

    Options: ``config.ScoreConfig`` (input or dataset, split, format, text_field, id_field,
    unit, workers) and ``config.AdaptConfig`` (adapt: every unit scored by the model mixed
    with a cache of the units before it; the input is read whole). Returns ``{"units",
    "tokens", "nll_nats", "perplexity", "seconds", "units_per_s", "tokens_per_s"}``.

    The output is checked first (``io.files.check_output_writable``: not an input file, not in
    the model folder) and written by ``io.files.atomic_write`` (temp file + rename, through
    symlinks; FIFOs and devices written in place). The model is loaded here, before any
    worker starts, so a folder that is not a model fails at once with one error.
    """
    adapt_keys = set(field_names(AdaptConfig))
    ad = make(AdaptConfig, {k: v for k, v in options.items() if k in adapt_keys})
    o = make(ScoreConfig, {k: v for k, v in options.items() if k not in adapt_keys})
    if ad.adapt and ad.cache_fit:
        raise OptionError("adaptive scoring of a file takes no cache_fit (a file has no held-out "
                          "part); fit the cache with `lmkit eval` and adapt, cache_fit")
    if ad.adapt and o.workers > 1:
        raise OptionError("adapt scores the units one after another, in one process; pass "
                          "workers 1")
    input, dataset, split, fmt = o.input, o.dataset, o.split, o.format
    text_field, id_field, unit, workers = o.text_field, o.id_field, o.unit, o.workers
    if not Path(model_path).exists():
        raise MissingPathError(f"{model_path}: no such model folder; train one with `lmkit train`")
    inputs = list(input) if input is not None else [dataset]
    check_output_writable(output, inputs=inputs, models=[model_path])
    if ad.adapt:
        chunks, units = None, iter_units(input=input, dataset=dataset, split=split, fmt=fmt,
                                         text_field=text_field, id_field=id_field, unit=unit)
    else:
        units, chunks = None, input_chunks(input=input, dataset=dataset, split=split, fmt=fmt,
                                           text_field=text_field, id_field=id_field, unit=unit)
    model = load_model(model_path)
    if ad.adapt:
        from .adapt import check_adapt_model
        check_adapt_model(model, ad)  # a model the mode cannot adapt: refused before any work
    totals = {"units": 0, "tokens": 0, "nll": 0.0}
    t0 = time.time()

    def write(f):
        results = _results(model, model_path, chunks, workers, units,
                           ad if ad.adapt else None, _input_bytes(input))
        try:
            with terminal_bar(desc="score", unit="doc", show=progress) as bar:
                for text, n, t, x in results:
                    f.write(text)
                    totals["units"] += n
                    totals["tokens"] += t
                    totals["nll"] += x
                    bar.update(n)
                    bar.set_postfix_str(f"{totals['tokens'] / max(time.time() - t0, 1e-9):,.0f}"
                                        " tok/s", refresh=False)
        finally:
            results.close()  # stops the workers now if we stopped early
        if totals["units"] == 0:
            raise InputError("nothing to score: the input has no lines or records")

    atomic_write(output, write)
    n_units, n_tok, nll = totals["units"], totals["tokens"], totals["nll"]
    sec = max(time.time() - t0, 1e-9)
    return {"units": n_units, "tokens": n_tok, "nll_nats": nll,
            "perplexity": math.exp(nll / n_tok), "seconds": sec,
            "units_per_s": n_units / sec, "tokens_per_s": n_tok / sec}


__all__ = ["score_file", "score_units", "iter_units", "load_model"]
