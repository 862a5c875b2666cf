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

Requires the optional extra: ``pip install 'lmkit[distributed]'``.
"""
from __future__ import annotations

from .counts import Counts, empty_counts
from .errors import InputError
from .parallel import check_workers, count_lines, line_chunks


def _client(scheduler, n_workers, processes):
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise InputError("--engine dask needs Dask; install it with "
                         "pip install 'lmkit[distributed]' (or pip install 'dask[distributed]')") from None
    if scheduler:
        try:
            return Client(scheduler, timeout="20s"), None
        except (OSError, TimeoutError) as e:
            raise InputError(f"--scheduler {scheduler}: cannot connect ({e}); check the address "
                             "or omit --scheduler to start a LocalCluster") from None
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=processes,
                           dashboard_address=None)
    return Client(cluster), cluster


def _count_shard(lines: list, model_proto: bytes, group_names: list) -> Counts:
    from .features import group_from_name
    tok = _tokenizer(model_proto)
    return count_lines(lines, tok, [group_from_name(n) for n in group_names], threads=1)


_TOKENIZERS: dict = {}


def _tokenizer(model_proto: bytes):
    """One ``Tokenizer`` per worker process and model (loading one costs a few ms)."""
    import hashlib

    from .tokenizer import Tokenizer
    key = hashlib.sha256(model_proto).hexdigest()
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = Tokenizer(model_proto)
    return _TOKENIZERS[key]


def _add(a: Counts, b: Counts) -> Counts:
    return a + b


def _n_tokens(c: Counts) -> int:
    return c.n_tokens


def count_corpus_dask(lines, tokenizer, groups: list, *, chunk_lines: int = 10000,
                      scheduler: str | None = None, n_workers: int | None = None,
                      processes: bool = True, progress=None, log=None) -> Counts:
    """Count ``lines`` on a Dask cluster; returns the exact ``Counts`` (see module docstring)."""
    n_workers = check_workers(n_workers)
    client, cluster = _client(scheduler, n_workers, processes)
    try:
        from dask.distributed import wait
        n = len(client.scheduler_info().get("workers", {}))
        if log:
            log(f"      dask: scheduler {scheduler or 'LocalCluster'}, {n} workers")
        proto = client.scatter(tokenizer.model_proto, broadcast=True)
        names = [g.name for g in groups]
        limit = 4 * max(1, n)
        stack: list = []  # (shards merged, future of their partial sum)
        in_flight: set = set()
        for chunk in line_chunks(lines, chunk_lines):
            fut = client.submit(_count_shard, chunk, proto, names, pure=False)
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
        return total.result()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _report(futures, progress) -> None:
    if progress:
        for f in futures:
            progress(f.result())
