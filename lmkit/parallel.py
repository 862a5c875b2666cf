"""Streaming, multi-process, memory-bounded counting: text lines -> ``Counts``.

Input: an iterable of ``str`` lines (read lazily, ``chunk_lines`` at a time), a ``Tokenizer`` and
the feature groups. Output: ``Counts`` (see ``counts.py``): per group a CSR ``(R_g, V)`` int64
matrix, the (V,) target counts and the sequence/token totals.

How it scales:

- *streaming*: at most ``2 * workers`` chunks of lines are queued;
  ids exist only inside the chunk being counted; no dense ``(V, V)`` array is ever built;
- *workers*: ``workers = 1`` counts in this process (one SentencePiece thread); ``workers > 1``
  starts that many processes (the tokenizer's model bytes are shipped once per worker, one
  thread each) fed chunks through a bounded queue. Each worker keeps its own spilling tree sum
  and sends one total at the end, so the parent only reads lines and does ``workers - 1``
  merges. The counts are identical to one worker's, bit for bit: integer sums are exact and
  the CSR result is canonical, whatever the split;
- *max_memory*: when the partial sums held in memory exceed a quarter of the budget, they are
  collapsed into one partial ``Counts`` and spilled to a temporary folder as ``.npz``
  (``allow_pickle=False``); spilled parts are summed at the end. Before that final merge the
  total size is estimated and a ``MemoryLimitError`` names the fix if it cannot fit.

- *shutdown*: any exception in the parent (a worker's error re-raised, Ctrl-C, the CLI's
  SIGTERM exception) stops every worker within ~1 s (SIGTERM, then SIGKILL) and removes the
  spill folder; queues never wait at exit for undelivered items (``cancel_join_thread``).
  Workers ignore SIGINT (the parent decides) and die with the parent, even on SIGKILL
  (Linux ``PR_SET_PDEATHSIG``; elsewhere a thread watching the parent pid).

``counts_nbytes`` is the size of counts the pipeline prints before heavy steps (the solved
model's estimate and the held-out thinning of the lambda search live with the solver, ``solve.py``).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import shutil
from itertools import chain, islice

from .config import ScaleConfig
from .counts import Counts, count_chunk, empty_counts, load_counts, save_counts
from .errors import OptionError, OutputError, WorkerDiedError
from .io.scratch import make_temp_dir
from .kinds import group_spec, groups_from_spec
from .memory import check_memory, format_bytes, parse_size
# the process pool lives in pool.py (it needs none of the counting code): its helpers serve
# the counting workers here, and ordered_map, WorkerGroup, pool_context stay importable from here
from .pool import (WorkerGroup, _die_with_parent, _picklable, _stop, ordered_map,  # noqa: F401
                   pool_context)
from .tokenizer import Tokenizer

# A CSR entry costs 8 bytes of int64 data + 4 or 8 bytes of index, and adding two CSRs briefly
# holds both inputs and the output (the solved model's estimate: ``solve.model_nbytes``).
BYTES_PER_COUNT = 16
SPILL_FRACTION = 0.25  # partial sums may use this share of --max-memory before they spill


def counts_nbytes(c: Counts) -> int:
    """Bytes held by the arrays of ``c`` (exact, from the arrays themselves)."""
    n = c.target.nbytes
    for F, k in zip(c.F, c.keys):
        n += F.data.nbytes + F.indices.nbytes + F.indptr.nbytes + (k.nbytes if k is not None else 0)
    return n


def check_workers(workers) -> int:
    """``workers`` as an int >= 1; None means all cores (``os.cpu_count()``)."""
    if workers is None:
        return os.cpu_count() or 1
    if not isinstance(workers, int) or workers < 1:
        raise OptionError(f"workers must be an integer >= 1, got {workers!r}; "
                         "omit it to use every core")
    return workers


def line_chunks(lines, chunk_lines: int):
    """Lists of ``chunk_lines`` lines from an iterable, lazily (the last one may be shorter)."""
    if chunk_lines < 1:
        raise OptionError(f"chunk_lines must be >= 1, got {chunk_lines}")
    it = iter(lines)
    while chunk := list(islice(it, chunk_lines)):
        yield chunk


# ---- worker side -------------------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(model_proto: bytes, spec) -> None:
    """``spec``: ``kinds.group_spec(groups)``, names and the tables some kinds need."""
    _WORKER["tok"] = Tokenizer(model_proto)
    _WORKER["groups"] = groups_from_spec(spec)


def count_lines(lines: list, tokenizer, groups: list, threads: int | None = None) -> Counts:
    """Counts of one chunk of text lines (tokenize, then ``count_chunk``)."""
    # inside a worker process threads=1: the pool supplies the parallelism
    seqs = tokenizer.encode_batch(lines, num_threads=threads)
    return count_chunk(seqs, tokenizer.vocab_size, groups, tokenizer.bos_id, tokenizer.eos_id)


def _worker_main(model_proto: bytes, spec, budget, spill_dir, tasks, results,
                 parent_pid: int) -> None:
    """A counting process: sums the counts of every chunk it takes, then sends its one total.

    Keeping the running total in the worker (a spilling tree sum, like the parent's) leaves the
    parent only ``workers - 1`` merges, so the merge work runs in parallel too. Spills go to
    ``spill_dir``, a folder the parent owns and removes on every exit path.
    """
    _die_with_parent(parent_pid)
    try:
        _init_worker(model_proto, spec)
        tok, groups = _WORKER["tok"], _WORKER["groups"]
        acc = SpillingSum(tok.vocab_size, groups, budget, spill_dir)
        while (chunk := tasks.get()) is not None:
            c = count_lines(chunk, tok, groups, threads=1)
            acc.add(c)
            results.put(("progress", c.n_tokens))
        results.put(("done", acc.total()))
    except BaseException as e:  # noqa: BLE001 - every failure must reach the parent
        results.put(("error", _picklable(e)))


def _count_with_workers(chunks, tokenizer, groups: list, workers: int, budget, spill_dir,
                        progress=None) -> list:
    """Per-worker totals of ``chunks`` counted by ``workers`` processes (``2 * workers`` in flight).

    Any exception here (a worker's error re-raised, KeyboardInterrupt, the CLI's SIGTERM
    exception) stops every worker within about a second and removes their spill files.
    """
    # fork: workers start at once and need no importable __main__; spawn where fork is missing
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    tasks, results = ctx.Queue(maxsize=2 * workers), ctx.Queue()
    # never wait at exit for queued items to reach workers that are gone (the Ctrl-C hang)
    tasks.cancel_join_thread()
    results.cancel_join_thread()
    share = None if budget is None else budget // workers
    spill_root = make_temp_dir("lmkit-spill-", dir=spill_dir)
    procs = [ctx.Process(target=_worker_main, daemon=True,
                         args=(tokenizer.model_proto, group_spec(groups), share, spill_root,
                               tasks, results, os.getpid())) for _ in range(workers)]
    totals: list = []

    def check_dead() -> None:
        dead = [p for p in procs if p.exitcode not in (None, 0)]
        if dead and results.empty():
            raise WorkerDiedError(f"a counting worker died (exit code {dead[0].exitcode}; out "
                                  "of memory?); retry with workers 1 or a lower max_memory")

    def handle(block: bool) -> None:
        while True:
            try:
                kind, value = results.get(timeout=0.2) if block else results.get_nowait()
            except queue.Empty:
                check_dead()
                if block:
                    continue
                return
            if kind == "error":
                raise value
            if kind == "progress" and progress:
                progress(value)
            if kind == "done":
                totals.append(value)
                return

    def put(item) -> None:
        while True:
            try:
                tasks.put(item, timeout=0.2)
                return
            except queue.Full:
                handle(block=False)

    try:
        for proc in procs:
            proc.start()
        for chunk in chunks:
            put(chunk)
            handle(block=False)
        for _ in procs:
            put(None)
        while len(totals) < workers:
            handle(block=True)
        for proc in procs:
            proc.join()
    finally:
        _stop(procs)
        tasks.close()
        results.close()
        shutil.rmtree(spill_root, ignore_errors=True)
    return totals


# ---- reduction with spilling -------------------------------------------------------------------
class SpillingSum:
    """Streaming tree sum of ``Counts`` that spills partial sums to disk above a byte budget.

    ``add(c)`` merges like ``counts.sum_counts``; when the partial sums in memory exceed
    ``budget`` bytes they are collapsed and written to ``spill_dir``. ``total()`` returns the sum.
    """

    def __init__(self, vocab_size: int, groups: list, budget: int | None = None,
                 spill_dir=None, log=None):
        self.vocab_size, self.groups, self.budget = vocab_size, list(groups), budget
        self.spill_dir, self.log = spill_dir, log
        self.stack: list = []  # (parts merged, partial sum, its bytes)
        self.spilled: list = []  # (path, bytes)
        self._tmp = None

    def add(self, c: Counts) -> None:
        size = 1
        while self.stack and self.stack[-1][0] == size:
            c = self.stack.pop()[1] + c
            size *= 2
        self.stack.append((size, c, counts_nbytes(c)))
        if self.budget is not None and sum(s[2] for s in self.stack) > self.budget:
            self._spill()

    def _collapse(self) -> Counts | None:
        total = None
        while self.stack:
            c = self.stack.pop()[1]
            total = c if total is None else c + total
        return total

    def _spill(self) -> None:
        c = self._collapse()
        if self._tmp is None:
            self._tmp = make_temp_dir("lmkit-spill-", dir=self.spill_dir)
        path = self._tmp / f"part{len(self.spilled):05d}.npz"
        try:
            save_counts(c, path)
        except OSError as e:
            path.unlink(missing_ok=True)
            raise OutputError(f"{path}: cannot spill partial counts ({e.strerror or e}); free "
                              "space there, pass another spill_dir (or set TMPDIR), or "
                              "raise max_memory") from None
        self.spilled.append((path, counts_nbytes(c)))
        if self.log:
            self.log(f"      spilled partial counts #{len(self.spilled)} "
                     f"({format_bytes(self.spilled[-1][1])}) to {path}")

    def total(self, max_memory=None) -> Counts:
        try:
            total = self._collapse()
            if self.spilled:
                # the sum of the parts is an upper bound on the size of the merged counts
                needed = sum(b for _, b in self.spilled) + (counts_nbytes(total) if total else 0)
                check_memory(2 * needed, max_memory, "merging spilled counts",
                             "raise max_memory, or use a smaller vocab_size or context")
                for path, _ in self.spilled:  # spill order = chunk order: deterministic
                    part = load_counts(path, self.groups)
                    total = part if total is None else part + total
            return total if total is not None else empty_counts(self.vocab_size, self.groups)
        finally:
            self.close()

    def close(self) -> None:
        """Remove the spill folder (also called by ``total``); safe to call twice."""
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None


def count_corpus_parallel(lines, tokenizer, groups: list, *, workers: int | None,
                          chunk_lines: int = ScaleConfig.chunk_lines, max_memory=None,
                          spill_dir=None, progress=None, log=None) -> Counts:
    """Tokenize and count ``lines`` with ``workers`` processes (None: every core, as
    ``config.ScaleConfig``; 1: in this process); returns the exact ``Counts``.

    ``max_memory``: bytes or size text ("8G"); partial sums over a quarter of it are spilled to
    ``spill_dir`` (default: the system temp folder). ``progress(n_tokens)`` is called per chunk.
    """
    workers = check_workers(workers)
    budget = None if max_memory is None else int(SPILL_FRACTION * parse_size(max_memory))
    acc = SpillingSum(tokenizer.vocab_size, groups, budget, spill_dir, log)
    chunks = line_chunks(lines, chunk_lines)
    first = list(islice(chunks, 2))
    chunks = chain(first, chunks)
    try:
        if workers == 1 or len(first) < 2:  # one chunk: worker processes would only add start-up
            for c in (count_lines(c, tokenizer, groups, threads=1) for c in chunks):
                acc.add(c)
                if progress:
                    progress(c.n_tokens)
        else:  # integer sums are exact and CSR results canonical: any split gives the same counts
            for c in _count_with_workers(chunks, tokenizer, groups, workers, budget, spill_dir,
                                         progress):
                acc.add(c)
        return acc.total(max_memory)
    finally:
        acc.close()  # an interrupted run leaves no spill files either
