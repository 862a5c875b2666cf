"""Scale-out counting on Dask: text shards -> partial ``Counts`` on workers -> one ``Counts``.

Input: an iterable of ``str`` lines, cut into shards of ``chunk_lines`` lines on the client; a
``Tokenizer`` (its model bytes are scattered to the workers once) and the feature groups.
Output: ``Counts`` (see ``counts.py``), exactly equal to ``parallel.count_corpus_parallel``'s.

Each shard is tokenized and counted by a task on a worker. Partial counts are summed on the
workers by a streaming tree reduction (the same pairing as ``counts.sum_counts``: equal-sized
partial sums are added as soon as both exist), so at most log2(shards) partial sums are alive
and only the final sum travels to the client, where the solve runs. At most ``4 * workers``
shards are in flight, so the client never holds more than that much text.

``scheduler=None`` starts a ``dask.distributed.LocalCluster`` with ``n_workers`` single-threaded
worker processes (``processes=False``: threads in this process, for tests). With an address
(``tcp://host:8786``) the shards go to that cluster; its workers need lmkit installed.

Shutdown: Ctrl-C or SIGTERM during counting closes the client and the LocalCluster within
``CLOSE_TIMEOUT`` seconds each (measured: exit 130/143 in 1.4-1.9 s, no process left); the
LocalCluster's worker processes ignore SIGINT (this process stops them), and they exit by
themselves when this process dies. A Ctrl-C during the cluster's ~2 s start-up is ignored.

``dask_client`` (start, bounded close) and ``result`` (a worker's failure -> one
``WorkerError`` line) are shared with the n-gram build on Dask (``ngram/dask.py``).

Requires the optional extra: ``pip install 'lmkit[distributed]'``.
"""
from __future__ import annotations

import hashlib
import importlib
import logging
import os
import signal
import threading
from contextlib import contextmanager

from .config import ScaleConfig
from .counts import Counts, empty_counts
from .errors import InputError, LmkitError, OptionError, WorkerError
from .kinds import group_spec, groups_from_spec
from .memory import proc_kib_field
from .tokenizer import Tokenizer
from .parallel import check_workers, count_lines, line_chunks


_NOISY = ("distributed", "asyncio", "tornado")  # loggers silenced while an interrupted run stops
CLOSE_TIMEOUT = 1  # seconds allowed to shut the client and a LocalCluster down
# Dask's nanny sets MALLOC_TRIM_THRESHOLD_ in its workers, which also turns off glibc's dynamic
# mmap threshold: every array of 128 KiB or more becomes a fresh mmap whose pages fault in
# again. Arrays up to glibc's own dynamic maximum (32 MiB) then come from the heap as usual.
# Measured on the order-5 n-gram build of the default corpus, 2 workers: their system CPU
# 0.91-1.33 s -> 0.20-0.34 s, total CPU 3.1-3.7 s -> 2.1-2.6 s, same peak RSS
# (scripts/bench_scale.py --ngram-dask [--dask-malloc-defaults]; docs/scale.md).
WORKER_ENV = {"distributed.nanny.pre-spawn-environ.MALLOC_MMAP_THRESHOLD_": str(32 << 20)}


def _client(scheduler, n_workers, processes):
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise OptionError("engine dask needs Dask; install it with "
                         "pip install 'lmkit[distributed]' (or pip install 'dask[distributed]')") from None
    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except (OSError, TimeoutError) as e:
            raise OptionError(f"scheduler {scheduler}: cannot connect ({e}); check the address "
                              "or omit scheduler to start a LocalCluster") from None
    # Ctrl-C reaches the whole process group: worker processes started while SIGINT is ignored
    # keep ignoring it (the disposition survives fork and exec, and Python then installs no
    # KeyboardInterrupt handler), so only this process handles it and stops them cleanly.
    # A Ctrl-C during these ~2 s of start-up is lost; the next one works.
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        import dask
        with dask.config.set(WORKER_ENV):
            cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1,
                                   processes=processes, dashboard_address=None)
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    return Client(cluster), cluster


def _count_shard(lines: list, model_proto: bytes, spec) -> Counts:
    """``spec``: ``kinds.group_spec(groups)``: the groups are rebuilt on the worker."""
    tok = _tokenizer(model_proto)
    return count_lines(lines, tok, groups_from_spec(spec), threads=1)


_TOKENIZERS: dict = {}


def _tokenizer(model_proto: bytes):
    """One ``Tokenizer`` per worker process and model (loading one costs a few ms)."""

    key = hashlib.sha256(model_proto).hexdigest()
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = Tokenizer(model_proto)
    return _TOKENIZERS[key]


def _add(a: Counts, b: Counts) -> Counts:
    return a + b


def _n_tokens(c: Counts) -> int:
    return c.n_tokens


@contextmanager
def dask_client(scheduler: str | None, n_workers: int, processes: bool = True, log=None):
    """A ``dask.distributed.Client`` (on a new LocalCluster when ``scheduler`` is None) that is
    closed on every exit path within ``CLOSE_TIMEOUT`` seconds per closable, with dask's noise
    about the tasks it cancels silenced when an error or a signal ends the run."""
    client, cluster = _client(scheduler, n_workers, processes)
    levels = {name: logging.getLogger(name).level for name in _NOISY}
    try:
        if log:
            n = len(client.scheduler_info().get("workers", {}))
            log(f"      dask: scheduler {scheduler or 'LocalCluster'}, {n} workers")
        yield client
    except BaseException:
        # no dask tracebacks about the tasks it cancels: the CLI prints the one line that matters
        for name in _NOISY:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        raise
    finally:  # bounded; dask worker processes also exit by themselves when this process dies
        for closable in (client, cluster):
            try:  # a slow close must neither hang nor hide the error that got us here
                if closable is not None:
                    closable.close(timeout=CLOSE_TIMEOUT)
            except Exception:  # noqa: BLE001 - dask raises TimeoutError, CommClosedError, ...
                pass
        if cluster is not None:  # dask's atexit hook would close it again, for up to 10 s more;
            # its worker processes end by themselves when this process exits
            getattr(type(cluster), "_instances", set()).discard(cluster)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def own_rss() -> int:
    """Resident bytes of this process (``VmRSS`` of ``/proc/self/status``; 0 where there is
    none)."""
    return proc_kib_field("/proc/self/status", "VmRSS") or 0


def _rss_unless(pid: int, module: str | None = None) -> int:
    """``own_rss()`` (once ``module`` is imported, if given), or 0 in process ``pid``: run on a
    Dask worker, what a worker process holds; a worker thread of that process holds nothing
    of its own."""
    if module is not None:
        importlib.import_module(module)
    return 0 if os.getpid() == pid else own_rss()


def workers_rss(client, module: str | None = None) -> int:
    """Resident bytes of a cluster's worker processes now, measured once ``module`` (the code
    their tasks run) is imported there if given; 0 for workers that are threads of this
    process (their memory is this process's)."""
    return int(sum(client.run(_rss_unless, os.getpid(), module).values()))


def result(future, what: str):
    """``future.result()``, with a failure on a worker turned into one ``WorkerError`` line
    naming the task (``what``) and the cause; lmkit's own errors pass through unchanged."""
    try:
        return future.result()
    except (LmkitError, KeyboardInterrupt):
        raise
    except MemoryError:
        raise WorkerError(f"dask: {what} ran out of memory on a worker; use more workers or "
                          "a cluster with more memory per worker") from None
    except Exception as e:  # noqa: BLE001 - any failure on a worker: KilledWorker, a bug, ...
        cause = (str(e).strip().splitlines() or [""])[0][:200]
        raise WorkerError(f"dask: {what} failed on a worker ({type(e).__name__}: {cause}); "
                          "check the workers' logs and that they run this lmkit version") from None


def count_corpus_dask(lines, tokenizer, groups: list, *, chunk_lines: int = ScaleConfig.chunk_lines,
                      scheduler: str | None = None, n_workers: int | None = None,
                      processes: bool = True, progress=None, log=None) -> Counts:
    """Count ``lines`` on a Dask cluster; returns the exact ``Counts`` (see module docstring)."""
    n_workers = check_workers(n_workers)
    with dask_client(scheduler, n_workers, processes, log) as client:
        from dask.distributed import wait
        n = len(client.scheduler_info().get("workers", {}))
        proto = client.scatter(tokenizer.model_proto, broadcast=True)
        # the groups travel as names + the tables some kinds need (kinds.group_spec), once
        spec = client.scatter([group_spec(groups)], broadcast=True)[0]
        limit = 4 * max(1, n)
        stack: list = []  # (shards merged, future of their partial sum)
        in_flight: set = set()
        for chunk in line_chunks(lines, chunk_lines):
            fut = client.submit(_count_shard, chunk, proto, spec, pure=False)
            in_flight.add(client.submit(_n_tokens, fut, pure=False))  # ints, not counts, come back
            size = 1
            while stack and stack[-1][0] == size:  # same pairing as counts.sum_counts
                fut = client.submit(_add, stack.pop()[1], fut, pure=False)
                size *= 2
            stack.append((size, fut))
            if len(in_flight) >= limit:
                done, in_flight = wait(in_flight, return_when="FIRST_COMPLETED")
                _report(done, progress)
        _report(in_flight, progress)
        if not stack:
            return empty_counts(tokenizer.vocab_size, groups)
        total = stack.pop()[1]
        while stack:
            total = client.submit(_add, stack.pop()[1], total, pure=False)
        return result(total, "counting")


def _report(futures, progress) -> None:
    for f in futures:  # every shard's result is read, so a failed shard surfaces here
        n = result(f, "counting a shard")
        if progress:
            progress(n)
