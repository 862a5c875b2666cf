"""Worker processes that end: an ordered pool and a group of stateful workers.

Input: a function, the items to apply it to (``ordered_map``) or one item per worker
(``WorkerGroup.ask``). Output: the results, in input order. The processes are forked where fork
exists (``pool_context``: they inherit what the parent loaded), else spawned.

Every exit path stops the workers: a worker's exception is re-raised in the parent, a worker
that dies without answering raises ``WorkerDiedError`` naming it, and any exception in the
parent (Ctrl-C, the CLI's SIGTERM exception) or closing the generator stops every worker within
~1 s (``_stop``: SIGTERM, then SIGKILL). Workers ignore SIGINT and die with the parent, even on
SIGKILL (``_die_with_parent``). The counting pipeline (``parallel.py``), the document scorer
(``docscore.py``), the rich builder and the weight search use it; it imports nothing of lmkit
but its errors, so a verb that only scores does not import the counting code (or SciPy).
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import pickle
import signal
import sys
import threading
import time

from .errors import WorkerDiedError


def _die_with_parent(parent_pid: int) -> None:
    """Make this worker end when the parent does, even on SIGKILL; leave signals to the parent.

    Ctrl-C reaches the whole process group, so workers ignore SIGINT and let the parent stop
    them; fork copies the parent's SIGTERM handler, so the default is restored. On Linux the
    kernel sends SIGKILL when the parent dies (``PR_SET_PDEATHSIG``); elsewhere a thread polls.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0:  # 1 = PR_SET_PDEATHSIG
                if os.getppid() != parent_pid:  # the parent died before prctl took effect
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def _picklable(e: BaseException) -> BaseException:
    """``e`` itself if it can cross the result queue, else a RuntimeError carrying its text."""
    try:
        pickle.loads(pickle.dumps(e))
        return e
    except Exception:  # noqa: BLE001 - any unpicklable exception
        return RuntimeError(f"{type(e).__name__}: {e}")


def _stop(procs, grace: float = 1.0) -> None:
    """End every worker: SIGTERM, up to ``grace`` seconds, then SIGKILL; reap them all."""
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + grace
    for proc in procs:
        proc.join(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)


# ---- an ordered pool that ends ----------------------------------------------------------------
def pool_context():
    """fork where it exists (workers start at once and inherit what the parent loaded), else
    spawn."""
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def _pool_worker(fn, init, init_args, tasks, results, parent_pid: int) -> None:
    """One process of ``ordered_map``: ``init(*init_args)``, then answers ``(seq, item)``
    messages with ``("ok", seq, fn(item))`` until ``None`` or the parent's end of the pipe
    closes. An exception is sent back as ``("error", seq, exc)`` and ends the worker."""
    _die_with_parent(parent_pid)
    if "torch" in sys.modules:  # a forked OpenMP pool can hang; one thread per process anyway
        sys.modules["torch"].set_num_threads(1)
    seq = None
    try:
        if init is not None:
            init(*init_args)
        while (msg := tasks.recv()) is not None:
            seq, item = msg
            results.send(("ok", seq, fn(item)))
    except (EOFError, BrokenPipeError):
        pass  # the parent is gone or stopping: nothing to report to
    except BaseException as e:  # noqa: BLE001 - every failure must reach the parent
        try:
            results.send(("error", seq, _picklable(e)))
        except (OSError, ValueError):
            pass


def _died(proc, what: str) -> WorkerDiedError:
    code = proc.exitcode
    how = (f"was killed by signal {-code} ({signal.Signals(-code).name}; out of memory?)"
           if code is not None and code < 0 and -code in signal.Signals._value2member_map_
           else f"exited with code {code}")
    return WorkerDiedError(f"{what} (pid {proc.pid}) {how}; stopped everything, nothing was "
                           "written; retry with fewer workers or free memory")


def ordered_map(fn, items, workers: int, *, init=None, init_args=(), what: str = "a worker"):
    """Yield ``fn(item)`` for every item of ``items``, in input order, computed by ``workers``
    processes (``pool_context``); a generator.

    Each worker has its own pair of pipes and holds one item at a time, so at most
    ``workers`` items (and ``workers`` results) are in flight whatever the input's length,
    and no lock is shared between workers: a worker killed outright (SIGKILL, the OOM killer)
    cannot block the others. The pool ends in every case:

    - a worker's exception (``init`` failing, e.g. a model that cannot be loaded, or ``fn``)
      is re-raised here at once;
    - a worker that dies without answering raises ``WorkerDiedError`` naming it;
    - any exception in the consumer (KeyboardInterrupt, the CLI's SIGTERM exception) or
      closing the generator stops every worker within ~1 s (``_stop``: SIGTERM, then SIGKILL).

    Workers ignore SIGINT and die with the parent (``_die_with_parent``). With fork, ``fn``
    and ``init_args`` may be any objects (nothing is pickled but items and results).
    """
    from multiprocessing.connection import wait

    ctx = pool_context()
    procs, conns = [], []  # conns[k] = (tasks to worker k, results from worker k)
    try:
        for _ in range(workers):
            proc, conn = _start_worker(ctx, fn, init, init_args)
            procs.append(proc)
            conns.append(conn)

        def receive(k):
            try:
                kind, seq, value = conns[k][1].recv()
            except (EOFError, OSError):
                procs[k].join(1.0)
                raise _died(procs[k], what) from None
            if kind == "error":
                raise value
            return seq, value

        it = iter(items)
        busy: dict = {}  # worker -> seq it holds
        idle = list(range(workers))
        done: dict = {}
        sent = want = 0
        staged, exhausted = None, False
        while True:
            while idle and not exhausted:
                if staged is None:
                    staged = next(it, _END)
                    if staged is _END:
                        exhausted, staged = True, None
                        break
                k = idle.pop()
                try:
                    conns[k][0].send((sent, staged))
                except OSError:  # it ended (its error, if any, waits in its results pipe)
                    receive(k)
                    raise _died(procs[k], what) from None
                busy[k], staged, sent = sent, None, sent + 1
            while want in done:
                yield done.pop(want)
                want += 1
            if exhausted and want == sent:
                break
            if not idle and staged is None and not exhausted:
                staged = next(it, _END)  # read ahead while the workers compute
                if staged is _END:
                    exhausted, staged = True, None
            by_conn = {conns[k][1]: k for k in busy}
            by_sentinel = {procs[k].sentinel: k for k in range(workers)}
            ready = wait(list(by_conn) + list(by_sentinel), timeout=1.0)
            for r in ready:
                if r in by_conn:
                    k = by_conn[r]
                    seq, value = receive(k)
                    done[seq] = value
                    del busy[k]
                    idle.append(k)
            for r in ready:
                k = by_sentinel.get(r)
                if k is not None and not conns[k][1].poll():
                    procs[k].join(1.0)
                    raise _died(procs[k], what)
        for t_write, _ in conns:
            try:
                t_write.send(None)
            except OSError:
                pass
        for proc in procs:
            proc.join(1.0)
    finally:
        _stop(procs)
        for t_write, r_read in conns:
            t_write.close()
            r_read.close()


_END = object()


def _start_worker(ctx, fn, init, init_args):
    """One pool worker (``_pool_worker``) and its ``(tasks to it, results from it)`` pipe ends.
    The pipes are made per worker and the parent's copies of the worker's ends are closed
    before the next fork: a worker's death closes its results pipe (EOF), it is not kept open
    by a sibling that inherited it."""
    t_read, t_write = ctx.Pipe(duplex=False)
    r_read, r_write = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_pool_worker, daemon=True,
                       args=(fn, init, init_args, t_read, r_write, os.getpid()))
    proc.start()
    t_read.close()
    r_write.close()
    return proc, (t_write, r_read)


class WorkerGroup:
    """``workers`` processes (``pool_context``) that keep what they build between calls:
    ``ask(items)`` sends ``items[k]`` to worker k, computes ``fn(items[k])`` there and returns
    the answers in order. The weight search uses it: each worker builds its share of the
    held-out chunks once and then answers every evaluation of the objective on them.

    It ends as ``ordered_map`` does: a worker's exception is re-raised here, a worker that
    dies without answering raises ``WorkerDiedError`` naming it, and any exception in the
    caller (Ctrl-C, the CLI's SIGTERM exception) or leaving the ``with`` block stops every
    worker within ~1 s; workers ignore SIGINT and die with the parent. Use as a context
    manager: ``with WorkerGroup(fn, 2) as group: group.ask([a, b])``.
    """

    def __init__(self, fn, workers: int, *, init=None, init_args=(), what: str = "a worker"):
        self.what, self.procs, self.conns = what, [], []
        ctx = pool_context()
        try:
            for _ in range(workers):
                proc, conn = _start_worker(ctx, fn, init, init_args)
                self.procs.append(proc)
                self.conns.append(conn)
        except BaseException:
            self.close()
            raise

    def ask(self, items: list) -> list:
        """``[fn(items[k]) computed by worker k]``; at most one item per worker."""
        from multiprocessing.connection import wait
        if len(items) > len(self.procs):
            raise ValueError(f"{len(items)} items for {len(self.procs)} workers")
        for k, item in enumerate(items):
            try:
                self.conns[k][0].send((k, item))
            except OSError:  # it ended (its error, if any, waits in its results pipe)
                self._receive(k)
                raise _died(self.procs[k], self.what) from None
        out, pending = [None] * len(items), set(range(len(items)))
        while pending:
            by_conn = {self.conns[k][1]: k for k in pending}
            by_sentinel = {self.procs[k].sentinel: k for k in pending}
            for r in wait(list(by_conn) + list(by_sentinel), timeout=1.0):
                if r in by_conn and by_conn[r] in pending:
                    k = by_conn[r]
                    out[k] = self._receive(k)
                    pending.discard(k)
                elif r in by_sentinel and by_sentinel[r] in pending:
                    k = by_sentinel[r]
                    if not self.conns[k][1].poll():
                        self.procs[k].join(1.0)
                        raise _died(self.procs[k], self.what)
        return out

    def _receive(self, k: int):
        try:
            kind, _, value = self.conns[k][1].recv()
        except (EOFError, OSError):
            self.procs[k].join(1.0)
            raise _died(self.procs[k], self.what) from None
        if kind == "error":
            raise value
        return value

    def close(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL) and close the pipes; safe to call twice."""
        _stop(self.procs)
        for t_write, r_read in self.conns:
            t_write.close()
            r_read.close()
        self.procs, self.conns = [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
