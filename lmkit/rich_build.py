"""Group-at-a-time build of the default (feature-rich) model: lower peak memory, same model.

Input: chunks of token-id sequences (the training text, read once into one compact buffer),
optionally chunks of carved held-out lines (their counts are added back after the weights are
chosen, as ``rich.fit_rich(refit=...)`` does), held-out sequences for the weights, and the
model options of ``rich.count_rich``. Output: ``(SparseParams, tables, n_sequences, n_tokens)``
equal, value for value, to ``rich.fit_rich(rich.count_rich(...))`` (tested), with the weights
folded in.

Why it is the same model: counting is per group (a group's counts depend only on its own key
function and the buffer; the suffix chain is counted together), and every non-chained closed
form (``kinds.closed_form``) is a function of that group's own counts, the MKN unigram ``q``
and the group's discount, which comes from its own counts. So instead of holding the counts of
all 19 groups and then their solution (``rich.count_rich`` then ``rich.solve_rich``), this
build holds the suffix chain's counts while it solves MKN, then counts one other group,
solves it, keeps its weights ``S`` and the int8 entry-count bucket of every stored value, and
frees its counts before the next group. The second pass (with the held-out lines' counts)
folds the chosen weights into each group as soon as it is solved. Memory at the peak: the
model (``S`` of every group), one group's counts and the token buffer, instead of every
group's counts plus the model.

Counting itself is bounded too: each group's positions are sorted a few million at a time,
in parts that own whole rows (``counts.count_in_parts``); the suffix chain is counted and
solved by the plain n-gram build's pipeline (``_chain_task``: windows partitioned by previous
token, each token range counted and solved on its own, ``ngram.build.solve_bucket_files``),
in buckets of at most ``counts.PART_POSITIONS`` positions, smaller under ``max_memory``.

Scale (same model, value for value, tested): each pass is one chain task (the suffix chain
counted and solved by MKN, giving ``q``) and one task per other group (``_group_task``: count,
closed form, entry buckets; the group travels as ``kinds.group_spec`` and is rebuilt through
the kinds registry, so every kind works there). ``workers`` > 1 runs the group tasks in that
many processes, and the chain's buckets too (``pool.ordered_map``: fork, so the token
buffer is shared, results in order, every worker stopped on an error, a death, Ctrl-C or
SIGTERM); ``engine="dask"`` runs
the chain and the group tasks on a Dask cluster (the buffer scattered to the workers; on a
LocalCluster the first pass's counts are spilled to the build's folder as on engine local; on
a cluster at a scheduler address the second pass counts the training text again there
instead, since its workers need not share a disk). ``max_memory`` writes the token buffers
to ``.npy`` and
memory-maps them (``counts.flat_buffer_files``; engine local), checks one part's counting per
process against the limit before counting, writes each group's solved arrays to ``.npy`` and
memory-maps them as it goes (``_Store``), and gives the weight search what is left of the
limit: the search sums its terms over pieces of held-out positions within it
(``heldout_nll.py``; the held-out positions are never thinned: that would change the model).
The weight search runs in the ``workers`` processes too (engine local); the mapped pages
of the buffers and of the model are released as they are read (counting chunks, the chain's
partition, each group a search piece reads), and ``lmkit train`` compacts and writes the model
group by group onto disk (``compact.prune_entries(folder=)``, ``io.store.CompactArrays``).

Each non-chained group is counted and solved a block of whole rows at a time
(``_group_task``: ``counts.RowParts`` cuts its positions by row key; the first pass over the
blocks sums the discount's singletons and doubletons and, for the skip-like kinds, the
adjacent part's counts, ``kinds.group_marginal``; the second solves each block with them and
appends its values), so under ``max_memory`` a group's counts wait on disk (``_Blocks``) and
its solution is written as it is made (``_Solved``): in memory, one block's counts and
solution, the group's marginal and counting's part number of each position (one byte). The
carved held-out lines are cut into the training text's blocks (the same cuts) and added to
them block by block.
"""
from __future__ import annotations

import itertools
import mmap
import shutil
import tempfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .counts import (INDEX32, PART_BYTES, PART_POSITIONS, Counts, RowParts, add_keyed,
                     count_in_parts, empty_counts, sum_counts,
                     flat_buffer, flat_buffer_files)
from .distributed import dask_client, own_rss, result, workers_rss
from .explicit import choose_lambdas, count_buckets, discount_from_counts
from .features import Suffix, Window, pad_sequences
from .io.npyfile import NpyAppender, mapped_base, open_npy, release_pages
from .io.scratch import make_temp_dir
from .kinds import closed_form, group_marginal, group_spec, groups_from_spec
from .memory import check_memory, format_bytes, parse_size, release_heap
from .pool import ordered_map
from .ngram.build import edges_from_histogram, n_buckets_for, solve_bucket_files
from .ngram.disk import chunk_for, partition_positions, previous_token_histogram
from .ngram.mkn import solve_ngram
from .params import SparseParams
from .rich import (DEFAULT_CLUSTERINGS, DEFAULT_CONTEXT, DEFAULT_ENTRY_EDGES, DEFAULT_FIRST_WINDOW,
                   DEFAULT_HESSIAN_EVERY, DEFAULT_HESSIAN_TOKENS, DEFAULT_LINE_POSITIONS,
                   DEFAULT_ORDER, DEFAULT_SKIPS, DEFAULT_TOL, base_groups, bigram_counts,
                   cluster_groups, line_groups, make_clusters)
from .clusters import bigram_embedding
from .config import ModelConfig
from .scoring import context_rows
from .sparse import lookup_values

BYTES_PER_VALUE = 8 + 4 + 1  # a stored weight: float64 value, int32 column, int8 entry bucket


class _Text:
    """One text as a compact buffer (``counts.flat_buffer`` layout) and its counter.

    ``folder``: the buffer is written there a chunk at a time and memory-mapped
    (``counts.flat_buffer_files``, ``--max-memory``); after each count its pages are released
    from this process's resident set (they stay in the page cache)."""

    def __init__(self, chunks, vocab_size: int, bos_id: int, eos_id: int, pad: int,
                 folder=None, name: str = "text"):
        self.V, self.bos_id, self.eos_id = vocab_size, bos_id, eos_id
        if folder is not None:
            self.buf, self.pos, self.starts, self.n_seq = flat_buffer_files(
                chunks, bos_id, eos_id, pad, folder, name)
            return
        self.buf, pos, starts, self.n_seq = flat_buffer(chunks, bos_id, eos_id, pad)
        # buffer indices in int32 when they fit: 8 of the 20 bytes a token costs here
        small = len(self.buf) < INDEX32
        self.pos = pos.astype(np.int32) if small else pos
        del pos
        self.starts = starts.astype(np.int32) if small else starts

    def nbytes(self) -> int:
        return self.buf.nbytes + self.pos.nbytes + self.starts.nbytes

    def __getstate__(self):
        """Pickled (a Dask task on a LocalCluster) with its mapped buffers as their files'
        paths, mapped again where it is unpickled: the same machine, not a copy of the text
        in every worker's memory. Buffers in memory travel as they are."""
        state = dict(self.__dict__)
        for name in ("buf", "pos", "starts"):
            path = _whole_file(state[name])
            if path is not None:
                state[name] = ("npy-file", path, state[name].shape)
        return state

    def __setstate__(self, state):
        for name in ("buf", "pos", "starts"):
            ref = state[name]
            if isinstance(ref, tuple) and ref and ref[0] == "npy-file":
                a = open_npy(ref[1])
                if a.shape != tuple(ref[2]):
                    raise ValueError(f"{ref[1]} changed since it was written: {a.shape} != "
                                     f"{tuple(ref[2])}")
                state[name] = a
        self.__dict__.update(state)

    def resident_nbytes(self) -> int:
        """The bytes this text holds in memory (0 when it is memory-mapped)."""
        return 0 if mapped_base(self.buf) is not None else self.nbytes()

    def release(self) -> None:
        """Drop the mapped buffer's pages from this process's resident set (no-op in memory)."""
        release_pages(self.buf, self.pos, self.starts)

    def parts(self, group, cuts=None, max_memory=None, workers: int = 1) -> RowParts:
        """This text's positions in parts owning whole rows of ``group`` (``counts.RowParts``;
        ``cuts``: another text's, for the same rows part by part). The part keys are kept
        between cutting and counting (8 bytes a position) when ``workers`` processes doing
        so take at most an eighth of ``max_memory`` (bytes; None: no limit)."""
        keep = max_memory is None or 8 * len(self.pos) * workers <= max_memory // 8
        return RowParts(self.buf, self.pos, self.starts, self.V, [group], cuts=cuts,
                        keep_keys=keep)

    def count(self, groups: list, workers: int = 1) -> Counts:
        """Counts of the suffix chain or of one other group, sorted a part of the positions at a
        time (``counts.count_in_parts``: the same arrays as one pass); ``workers`` > 1: at
        least that many parts, counted by as many processes (``pool.ordered_map``)."""
        if not self.n_seq:
            return empty_counts(self.V, groups)
        mapper = None
        if workers > 1:
            def mapper(fn, parts):  # fork: the buffer and fn are inherited, not sent
                return ordered_map(fn, list(parts), workers, what="a counting worker")
        try:
            return count_in_parts(self.buf, self.pos, self.starts, self.V, groups, self.n_seq,
                                  min_parts=workers, mapper=mapper)
        finally:
            self.release()


def _whole_file(a):
    """The path of the ``.npy`` file ``a`` maps as a whole (``io.npyfile.open_npy``, or an
    array view of all of it, as a CSR matrix holds it), else None (an array in memory, or a
    view of part of a mapping)."""
    m = mapped_base(a) if isinstance(a, np.ndarray) else None  # the np.memmap it views
    if m is None or not isinstance(m.base, mmap.mmap) or not m.filename:
        return None
    same = (a.dtype == m.dtype and a.shape == m.shape and a.flags.c_contiguous
            and a.__array_interface__["data"][0] == m.__array_interface__["data"][0])
    return str(m.filename) if same else None


class _FileRef:
    """A whole ``.npy`` file's array travelling as its path (a task's result on a LocalCluster:
    the client maps the file the worker wrote, instead of receiving its bytes)."""

    def __init__(self, a):
        self.path, self.shape = _whole_file(a), a.shape

    def open(self):
        a = open_npy(self.path)
        if a.shape != self.shape:
            raise ValueError(f"{self.path} changed since it was written")
        return a


class _CSRRef:
    def __init__(self, S):
        self.parts, self.shape = [_to_refs(a) for a in (S.data, S.indices, S.indptr)], S.shape

    def open(self):
        S = sp.csr_matrix(tuple(_from_refs(a) for a in self.parts), shape=self.shape, copy=False)
        S.has_sorted_indices = True
        return S


def _to_refs(x):
    """``x`` (arrays, CSR matrices, and lists, tuples and dicts of them) with every array that
    is a whole ``.npy`` file replaced by its path (``_FileRef``); the rest as it is."""
    if isinstance(x, np.ndarray):
        return _FileRef(x) if _whole_file(x) is not None else x
    if sp.issparse(x):
        return _CSRRef(x.tocsr())
    if isinstance(x, dict):
        return {k: _to_refs(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_refs(v) for v in x)
    return x


def _from_refs(x):
    """Inverse of ``_to_refs``: the files mapped again (and ``_OnDisk`` groups opened)."""
    if isinstance(x, (_FileRef, _CSRRef, _OnDisk)):
        return x.open()
    if isinstance(x, dict):
        return {k: _from_refs(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_from_refs(v) for v in x)
    return x


def _chain_refs(job, spec, discount):
    """``_chain_task`` on a LocalCluster under max_memory: its arrays (written to the build's
    folder) go back as their paths."""
    return _to_refs(_chain_task(job, spec, discount))


class _Spill:
    """The training text's counts of each group, part by part (``_Blocks`` in the folder
    ``g{index}``, with the cuts between the parts, ``cuts.npy``), kept by the first pass so
    that the second adds the held-out lines' counts to them instead of counting the training
    text again. ``.npy`` files only (no pickles)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def values(self, g: int) -> int:
        """How many counts (stored values) group g's kept blocks hold."""
        return sum(F.nnz for F, _ in self.blocks(g))

    def blocks(self, g: int, fresh: bool = False) -> "_Blocks":
        """Group g's kept blocks; ``fresh``: none yet (the first pass starts them over, also
        when Dask runs its task again after a worker was lost: the lost run's blocks would
        otherwise come before this run's)."""
        if fresh:
            shutil.rmtree(self.folder / f"g{g}", ignore_errors=True)
        return _Blocks(self.folder / f"g{g}", kept=True)


class _Blocks:
    """The count blocks ``(F, keys)`` of one group, a block of whole rows each, in order: in
    memory (``folder`` None) or as ``.npy`` files in ``folder``, memory-mapped when read (so a
    group's counts are on disk, not in memory, between counting and solving)."""

    def __init__(self, folder: Path | None = None, kept: bool = False):
        self.folder, self.items, self.kept = folder, [], kept
        if folder is not None:
            folder.mkdir(exist_ok=True)
            n = folder / "n.npy"
            if n.exists():  # kept by an earlier pass
                self.items = list(range(int(np.load(n, allow_pickle=False))))

    def put(self, F: sp.csr_matrix, keys) -> None:
        if self.folder is None:
            self.items.append((F, keys))
            return
        i = len(self.items)
        arrays = {"data": F.data, "indices": F.indices, "indptr": F.indptr,
                  "shape": np.array(F.shape, dtype=np.int64)}
        if keys is not None:
            arrays["keys"] = keys
        for name, a in arrays.items():
            np.save(self.folder / f"{i}.{name}.npy", a, allow_pickle=False)
        self.items.append(i)
        np.save(self.folder / "n.npy", np.array(len(self.items)), allow_pickle=False)

    def __len__(self) -> int:
        return len(self.items)

    def get(self, i: int):
        if self.folder is None:
            return self.items[i]
        path = self.folder / f"{i}.keys.npy"
        shape = np.load(self.folder / f"{i}.shape.npy", allow_pickle=False)
        shape = (int(shape[0]), int(shape[1]))
        F = sp.csr_matrix(tuple(open_npy(self.folder / f"{i}.{n}.npy")
                                for n in ("data", "indices", "indptr")), shape=shape, copy=False)
        F.has_sorted_indices = True
        return F, (open_npy(path) if path.exists() else None)

    def __iter__(self):
        return (self.get(i) for i in range(len(self)))

    def drop(self, force: bool = False) -> None:
        """Forget the blocks and delete their files (not the spill's kept blocks: ``force``)."""
        if self.kept and not force:
            return
        self.items = []
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


class _Solved:
    """A group's solved arrays, appended a block of rows at a time: ``S`` (data, indices,
    indptr), row keys and entry buckets; in memory (``folder`` None) or written to ``.npy``
    files in ``folder`` (``io.npyfile.NpyAppender``) and memory-mapped by ``result``."""

    NAMES = ("data", "indices", "indptr", "keys", "buckets")

    def __init__(self, folder: Path | None, V: int, nnz: int):
        self.folder, self.V, self.rows, self.nnz = folder, V, 0, 0
        # the row pointers' dtype as scipy would pick it (so mapping them copies nothing)
        self.ptr_dtype = np.int32 if nnz < INDEX32 else np.int64
        self.parts = {n: [] for n in self.NAMES}
        self.has = dict.fromkeys(self.NAMES, False)
        self.out = None
        if folder is not None:
            folder.mkdir()

    def add(self, data, indices, indptr, keys, buckets) -> None:
        lengths = np.diff(indptr)
        ptr = self.nnz + np.cumsum(lengths)
        if not self.has["indptr"]:  # the first block (even one of no rows) starts at 0
            ptr = np.concatenate([[0], ptr])
        arrays = {"data": data, "indices": indices, "indptr": ptr, "keys": keys,
                  "buckets": buckets}
        for name, a in arrays.items():
            if a is None:
                continue
            self.has[name] = True
            if self.folder is None:
                self.parts[name].append(np.asarray(a))
                continue
            if self.out is None:
                self.out = {}
            if name not in self.out:
                dt = {"indices": np.int32, "indptr": self.ptr_dtype, "keys": np.int64,
                      "buckets": np.int8}.get(name, a.dtype)
                self.out[name] = NpyAppender(self.folder / f"{name}.npy", dt)
            self.out[name].append(a)
        self.rows += len(lengths)
        self.nnz += int(lengths.sum())

    def result(self, keyed: bool):
        """``(S, keys, buckets)``, or an ``_OnDisk`` naming the files (sent back from a worker
        process as paths, not as arrays)."""
        if not self.has["indptr"]:  # no block: an empty group
            self.add(np.zeros(0), np.zeros(0, np.int32), np.zeros(1, np.int64),
                     np.zeros(0, np.int64) if keyed else None, None)
        if self.folder is not None:
            for w in (self.out or {}).values():
                w.close()
            return _OnDisk(self.folder, (self.rows, self.V),
                           [n for n in self.NAMES if self.has[n]])
        a = {n: (np.concatenate(self.parts[n]) if self.has[n] else None) for n in self.NAMES}
        S = sp.csr_matrix((a["data"], a["indices"], a["indptr"]), shape=(self.rows, self.V))
        S.has_sorted_indices = True
        return S, (a["keys"] if keyed else None), a["buckets"]


class _OnDisk:
    """A solved group's ``.npy`` files (``_Solved``): ``open()`` -> ``(S, keys, buckets)``
    memory-mapped."""

    def __init__(self, folder: Path, shape: tuple, names: list):
        self.folder, self.shape, self.names = folder, shape, names

    def open(self):
        a = {n: open_npy(self.folder / f"{n}.npy") for n in self.names}
        S = sp.csr_matrix((a["data"], a["indices"], a["indptr"]), shape=self.shape, copy=False)
        S.has_sorted_indices = True
        return S, a.get("keys"), a.get("buckets")


def _opened(res):
    return res.open() if isinstance(res, _OnDisk) else res


def _entry_counts(F: sp.csr_matrix, S: sp.csr_matrix) -> np.ndarray:
    """The count ``F[i, j]`` of every stored value of ``S`` (same rows as ``F``), read in
    place when ``S`` keeps the pattern of ``F`` (every closed form here)."""
    F = F.tocsr()
    F.sort_indices()
    if np.array_equal(F.indptr, S.indptr) and np.array_equal(F.indices, S.indices):
        return F.data
    return lookup_values(F, np.repeat(np.arange(S.shape[0]), np.diff(S.indptr)), S.indices)


class _Job:
    """What counting and solving one group needs, in this process, a worker process (inherited
    by fork) or a Dask task (sent as it is): the training text, the held-out lines' text (the
    second pass; None in the first), the spill folder of the training counts (None: count the
    training text again, as the workers of a Dask cluster at an address do: they may see no
    shared disk), the entry-count edges and
    the chosen weights ((G, B), the second pass; None in the first), and ``wanted``: per
    group the sorted row keys the first pass solves (``heldout_keys``; None: every row).

    For the chain task (``_chain_task``): ``workers`` processes count its buckets (this
    process's job), ``max_memory`` (bytes or None) sizes its buckets, ``scratch`` is the folder
    for its windows and spills (None: TMPDIR, as on Dask workers), ``out`` the folder its
    solved arrays are written to and memory-mapped from (None: read back into memory)."""

    def __init__(self, train, held, spill, edges, lam=None, workers: int = 1,
                 max_memory=None, scratch=None, out=None, tasks: int = 1, wanted=None):
        self.train, self.held, self.spill, self.edges, self.lam = train, held, spill, edges, lam
        self.wanted = wanted  # per group the row keys to solve (None: every row; heldout_keys)
        self.workers, self.tasks = workers, tasks  # tasks: group tasks that run at once
        self.max_memory, self.scratch, self.out = max_memory, scratch, out

    def blocks(self, group, g: int) -> _Blocks:
        """The counts of group g (the chain has its own pipeline, ``_chain_task``) as blocks
        of whole rows (``counts.RowParts``), one part of the positions counted at a time:
        first pass, the training text's (kept in the spill folder for the second); second
        pass, those plus the held-out lines' (= ``Counts.__add__``, as
        ``rich.fit_rich(refit)``), the held-out lines cut into the same rows. The blocks go
        to disk under ``max_memory`` (``scratch``), else stay in memory."""
        first = self.held is None
        keep = self.spill.blocks(g, fresh=first) if self.spill is not None else None
        if first and keep is not None:
            out = keep
        elif self.max_memory is not None:
            out = _Blocks(make_temp_dir(f"lmkit-group-{g}-", dir=self.scratch))
        else:
            out = _Blocks()
        scale = dict(max_memory=self.max_memory, workers=self.tasks)
        if first:
            parts = self.train.parts(group, **scale)
            for p in range(parts.n_parts):
                out.put(*parts.count(p)[0])
            if keep is not None:
                np.save(keep.folder / "cuts.npy", parts.cuts, allow_pickle=False)
            self.train.release()
            return out
        if keep is not None:  # the training text's blocks, kept by the first pass
            cuts = np.load(keep.folder / "cuts.npy", allow_pickle=False)
            base = keep
        else:  # counted again (Dask): the same cuts, from the same text
            parts = self.train.parts(group, **scale)
            cuts, base = parts.cuts, None
        held = self.held.parts(group, cuts, **scale)
        for p in range(held.n_parts):
            F, k = base.get(p) if base is not None else parts.count(p)[0]
            H, kh = held.count(p)[0]
            if k is None:
                F = (F + H).tocsr()
            else:
                F, k = add_keyed(F, k, H, kh)
            out.put(F, k)
            del F, k, H, kh
        self.held.release()
        if self.train is not None:
            self.train.release()
        # the kept blocks stay until the build's folder goes: a run of this task again (its
        # worker lost) reads them too; the disk peaks at the end of the first pass anyway
        return out

    def fold(self, g: int, data: np.ndarray, counts: np.ndarray):
        """``(data, buckets)`` of stored values ``data`` of group g with entry counts
        ``counts``: their int8 entry buckets; in the second pass the weights folded in (as
        ``explicit.fold_entry_lambdas``) and buckets None. Elementwise, so a group's values
        may come a block of rows at a time (the chain's buckets)."""
        b = count_buckets(counts, self.edges).astype(np.int8)
        if self.lam is None:
            return data, b
        return data * self.lam[g][b], None

    def keep(self, g: int, Sg, Fg):
        """``(S, buckets)`` of group g (``fold``: values scaled, index arrays shared)."""
        data, b = self.fold(g, Sg.data, _entry_counts(Fg, Sg))
        if self.lam is None:
            return Sg, b
        Sn = sp.csr_matrix((data, Sg.indices, Sg.indptr), shape=Sg.shape)
        Sn.has_sorted_indices = True
        return Sn, None


def _chain_task(job: _Job, spec, discount):
    """The suffix chain (``spec``: ``kinds.group_spec`` of ``Suffix(1..M)``) counted and solved
    by MKN: ``(q, [(S, keys, buckets)] per order, info, n_sequences, n_tokens)``, equal to
    ``solve_ngram`` of the whole chain's counts (tested).

    Bounded like the plain n-gram build, by its very pipeline (``ngram.build``): each target's
    window goes to the file of its previous token's range (``ngram.disk.partition_positions``),
    and each range is counted and solved on its own (``solve_bucket_files``), the entry
    buckets and weights folded in a range at a time (``_Job.fold``). With a spill folder the
    first pass keeps each bucket's counts of the training text there (``_ChainWindows``), and
    the second pass adds the held-out lines' counts to them instead of counting the training
    text again."""
    groups = groups_from_spec(spec)
    order, texts = len(groups) + 1, [t for t in (job.train, job.held) if t is not None]
    V, bos = texts[0].V, int(texts[0].bos_id)
    tmp = make_temp_dir("lmkit-chain-", dir=job.scratch)
    try:
        win = _ChainWindows(job, order, tmp)
        if win.n_positions == 0:  # an empty text: as the in-memory solve (its error included)
            chain = empty_counts(V, groups)
            mkn = solve_ngram(chain, discount=discount)
            kept = [job.keep(g, mkn.S[g], chain.F[g]) for g in range(len(groups))]
            return (mkn.q, [(S, k, b) for (S, b), k in zip(kept, mkn.keys)], dict(mkn.info),
                    0, 0)
        mapper = None
        if job.workers > 1:
            def mapper(fn, buckets):  # fork: the windows' paths and fn are inherited
                return ordered_map(fn, list(buckets), job.workers, what="a counting worker")
        out = tmp if job.out is None else Path(tempfile.mkdtemp(prefix="chain-", dir=job.out))
        sol = solve_bucket_files(win.sources, order, V, bos, tmp, out, discount=discount,
                                 fold=job.fold, mapper=mapper, counts_in=win.counts_in,
                                 counts_out=win.counts_out)
        if job.out is None:
            sol = sol.in_memory()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        release_heap()  # what the counting freed: not kept by this worker for its next task
    entry = sol.entry or [None] * len(groups)
    return (sol.q, list(zip(sol.S, sol.keys, entry)), sol.info, win.n_sequences,
            sol.n_positions)


def chain_buckets(n_positions: int, workers: int = 1, max_memory=None) -> int:
    """Buckets of the suffix chain (fewer when a token outweighs a bucket's share): at most
    ``counts.PART_POSITIONS`` positions each (the size of a counting part: smaller buckets
    cost no more CPU, ``scripts/bench_chain.py``), one per process at least, and under
    ``max_memory`` (bytes) small enough that ``workers`` buckets at once take about half of it
    (``ngram.build.n_buckets_for``). Example: 10M positions, 1 worker, no limit -> 3."""
    return max(-(-n_positions // PART_POSITIONS), workers,
               n_buckets_for(n_positions * max(1, workers), max_memory))


class _ChainWindows:
    """The window files of a chain task, per bucket (``sources``), made ready in ``tmp``.
    With a spill folder, the first pass keeps each bucket's raw counts in its
    ``chain-counts`` folder (``counts_out``, with the buckets' edges and the totals), and the
    second pass partitions the held-out lines alone into the same buckets and adds their counts
    to the kept ones (``counts_in``) instead of counting the training text again.
    ``n_sequences``, ``n_positions``: the totals of every text in the windows."""

    def __init__(self, job: _Job, order: int, tmp: Path):
        texts = [t for t in (job.train, job.held) if t is not None]
        V, chunk = texts[0].V, chunk_for(job.max_memory)  # positions per read
        kept = job.spill.folder / "chain-counts" if job.spill is not None else None
        self.counts_out = kept if kept is not None and job.held is None else None
        self.counts_in = kept if kept is not None and job.held is not None else None
        if self.counts_in is not None:  # second pass: the training text's counts are there
            texts = [job.held]
            edges = np.load(kept / "edges.npy", allow_pickle=False)
            n_seq, n_pos = (int(x) for x in np.load(kept / "totals.npy", allow_pickle=False))
            if n_pos == 0:  # the first pass solved nothing and kept no counts
                self.counts_in = None
        else:
            if kept is not None:
                kept.mkdir(exist_ok=True)
            n_pos = sum(len(t.pos) for t in texts)
            hist = 0
            for t in texts:
                hist = hist + previous_token_histogram(t.buf, t.pos, V, chunk)
                t.release()
            edges = edges_from_histogram(hist, chain_buckets(n_pos, job.workers, job.max_memory))
            n_seq, n_pos = 0, 0
        paths = [tmp / f"windows{b:05d}.bin" for b in range(len(edges) - 1)]
        for t in texts:
            partition_positions(t.buf, t.pos, t.starts, order, edges, paths, V, chunk)
            t.release()
            n_seq, n_pos = n_seq + t.n_seq, n_pos + len(t.pos)
        if self.counts_out is not None:
            np.save(kept / "edges.npy", edges, allow_pickle=False)
            np.save(kept / "totals.npy", np.array([n_seq, n_pos], dtype=np.int64),
                    allow_pickle=False)
        self.sources = [[p] for p in paths]
        self.n_sequences, self.n_positions = n_seq, n_pos


def _group_task(job: _Job, q, g: int, spec):
    """Group g (``spec``: ``kinds.group_spec([group])``, rebuilt through the kinds registry, so
    every kind works in a worker) counted and solved by its kind's closed form against the
    unigram ``q``, a block of whole rows at a time: ``(S, keys, buckets)``, or an
    ``_OnDisk`` of them under ``max_memory`` (``job.out``: written there as they are solved).

    The same values as solving the whole group at once: the discount comes from the whole
    group's singletons and doubletons, summed over the blocks, and a kind whose rows need more
    of the group (``kinds.group_marginal``: skip-like kinds, the adjacent part's counts) gets
    it summed over every block first. So one group's counts are on disk between its two
    passes over the blocks, and in memory: one block's counts and solution, and the marginal."""
    (group,) = groups_from_spec(spec)
    if isinstance(group, Suffix):
        raise ValueError(f"suffix groups must come first, got {group.name} at {g}")
    blocks = job.blocks(group, g)
    try:
        return _solve_blocks(job, q, g, group, blocks)
    finally:
        blocks.drop()
        release_heap()


def _solve_blocks(job: _Job, q, g: int, group, blocks: _Blocks):
    """``_group_task``'s two passes over the blocks of group g: the discount and marginal,
    then each block's closed form, folded, appended to the result."""
    V = (job.train or job.held).V
    n = {"1": 0, "2": 0, "nnz": 0}

    def marginals():  # each block's, summed as they come (a tree: few partial sums alive)
        for F, k in blocks:
            n["nnz"] += F.nnz
            n["1"] += int(np.count_nonzero(F.data == 1))
            n["2"] += int(np.count_nonzero(F.data == 2))
            m = group_marginal(group, F, k, V)
            release_pages(F.data, F.indices, F.indptr, k)
            if m is not None:
                yield m
    ms = marginals()
    first = next(ms, None)  # None: the kind needs none (every block was read)
    marginal = None if first is None else sum_counts(itertools.chain([first], ms))
    d, nnz = discount_from_counts(n["1"], n["2"]), n["nnz"]
    out = _Solved(None if job.out is None else
                  Path(tempfile.mkdtemp(prefix=f"group{g}-", dir=job.out)) / "solved", V, nnz)
    keyed, wanted, first_row = False, None if job.wanted is None else job.wanted[g], 0
    for F, k in blocks:
        keyed = k is not None
        if wanted is not None:  # the rows the weight search reads (the marginal: every row)
            F, k, first_row = _rows_in(F, k, wanted, first_row)
        S = closed_form(group, F, k, q, d, marginal=marginal)
        data, b = job.fold(g, S.data, _entry_counts(F, S))
        out.add(data, S.indices, S.indptr, k, b)
        release_pages(F.data, F.indices, F.indptr, k)
        del S, F, k, data, b
    return out.result(keyed or group.n_rows(V) is None)


def heldout_keys(groups, M: int, heldout, V: int, bos_id: int, eos_id: int) -> list:
    """Per group, the sorted unique row keys (int64) at the targets of the ``heldout`` lines
    (token ids of rows keyed by token), the rows the weight search reads; None for the M
    suffix groups (the chain is solved whole: MKN's lower orders and discounts)."""
    pad = max([g.reach for g in groups] + [1])
    buf, pos, starts = pad_sequences(list(heldout), pad, bos_id, eos_id)
    out = [None] * M
    for group in groups[M:]:
        k = np.asarray(group.row_keys(buf, pos, starts, V), dtype=np.int64)
        out.append(np.unique(k[k >= 0]))
    return out


def _rows_in(F: sp.csr_matrix, keys, wanted: np.ndarray, first_row: int):
    """``(F, keys, next first row)`` of a block of rows restricted to the ``wanted`` keys: a
    keyed block (``keys`` (R,)) keeps those rows; rows keyed by token (``keys`` None: the
    block's rows are ``first_row ..``) stay, emptied. Each row's closed form depends on its
    counts and the whole group's statistics only, so a kept row is solved as in the whole."""
    F = F.tocsr()
    rows = np.arange(first_row, first_row + F.shape[0]) if keys is None else np.asarray(keys)
    at = np.minimum(np.searchsorted(wanted, rows), max(len(wanted) - 1, 0))
    keep = wanted[at] == rows if len(wanted) else np.zeros(len(rows), dtype=bool)
    if keys is not None:
        return F[keep], np.asarray(keys)[keep], first_row + F.shape[0]
    lengths = np.diff(F.indptr)
    entries = np.repeat(keep, lengths)
    indptr = np.concatenate([[0], np.cumsum(np.where(keep, lengths, 0))])
    out = sp.csr_matrix((F.data[entries], F.indices[entries], indptr), shape=F.shape)
    out.has_sorted_indices = True
    return out, None, first_row + F.shape[0]


# ---- where the tasks run: this process, worker processes, Dask --------------------------------
_STATE: dict = {}


def _set_state(job) -> None:  # a worker process's initializer (the job is inherited by fork)
    _STATE["job"] = job


def _run_in_worker(item):
    q, g, spec = item
    return _group_task(_STATE["job"], q, g, spec)


class _Runner:
    """Runs the chain task and the group tasks of one pass: in this process (``workers`` 1,
    one group at a time), in ``workers`` processes (``pool.ordered_map``: results in order,
    every worker stopped on any error, Ctrl-C or SIGTERM), or on a Dask ``client``. The tasks
    are the same functions; so the model is the same."""

    def __init__(self, workers: int = 1, client=None, local: bool = False, held: int = 0):
        # local: the cluster runs on this machine (a LocalCluster): its tasks may write their
        # arrays to the build's folder and send back paths; held: what its worker processes
        # held before any task (already taken off max_memory, ``dask_budget``)
        self.workers, self.client, self.local, self.held = workers, client, local, held

    def chain(self, job, spec, discount):
        if self.client is None:
            return _chain_task(job, spec, discount)
        task = _chain_refs if job.out is not None else _chain_task
        return _from_refs(result(self.client.submit(task, self._job(job), spec, discount,
                                                    pure=False), "the n-gram chain"))

    def groups(self, job, q, items):
        """``(S, keys, buckets)`` of each ``(g, spec)`` of ``items``, in order (a generator)."""
        if self.client is not None:
            jf = self._job(job)
            qf = self.client.scatter(q, broadcast=True)
            futures = [(g, self.client.submit(_group_task, jf, qf, g, spec, pure=False))
                       for g, spec in items]
            for g, f in futures:
                yield _opened(result(f, f"group {g}"))
            return
        if self.workers <= 1 or len(items) <= 1:
            for g, spec in items:
                yield _opened(_group_task(job, q, g, spec))
            return
        for res in ordered_map(_run_in_worker, [(q, g, spec) for g, spec in items],
                               min(self.workers, len(items)), init=_set_state, init_args=(job,),
                               what="a counting worker"):
            yield _opened(res)  # written by the worker: its files, mapped here

    def slots(self) -> int:
        """How many group tasks run at once: the worker processes, or the cluster's workers."""
        if self.client is None:
            return max(1, self.workers)
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    def _job(self, job):
        """The job on the cluster, scattered once per pass (its text buffers are the bulk)."""
        if getattr(self, "_sent", (None,))[0] is not job:
            self._sent = (job, self.client.scatter(job, broadcast=True))
        return self._sent[1]


def _solve_pass(runner: _Runner, job: _Job, groups: list, M: int, discount, store=None,
                log=None):
    """Every group's closed form: the suffix chain by MKN, then the other groups (one at a
    time, or as parallel tasks). Returns ``(q, S, keys, eb, info, n_seq, n_tok)``; with
    ``job.lam`` each group's weights are folded into its ``S`` as it is solved (``eb`` None).
    ``store``: a ``_Store`` that puts each group's arrays on disk, memory-mapped."""
    q, chain, info, n_seq, n_tok = runner.chain(job, group_spec(groups[:M]), discount)
    S, keys, eb = [], [], []

    def keep(g, Sg, kg, b):
        if store is not None:
            Sg, kg, b = store.put(g, Sg, kg, b)
        S.append(Sg)
        keys.append(kg)
        if b is not None:
            eb.append(b)
    for g, (Sg, kg, b) in enumerate(chain):
        keep(g, Sg, kg, b)
    del chain
    items = [(g, group_spec([groups[g]])) for g in range(M, len(groups))]
    where = "" if job.wanted is None else " in the held-out lines' rows (first pass)"
    for (g, _), (Sg, kg, b) in zip(items, runner.groups(job, q, items)):
        keep(g, Sg, kg, b)
        if log:
            log(f"      {groups[g].name}: {S[-1].nnz} values{where}")
    if len(groups) > M:  # as solve.solve: not pure MKN; every weight tuned, from MKN
        info = {k: v for k, v in info.items() if k != "loggamma"}
        info.update(lambda_init=[1.0] * M + [0.0] * (len(groups) - M))
    info["lambda_fixed"] = [False] * len(groups)  # as rich.solve_rich
    return q, S, keys, (eb if job.lam is None else None), info, n_seq, n_tok


def build_rich(chunks, vocab_size: int, bos_id: int, eos_id: int, heldout=(), *,
               refit_chunks=None, order: int | None = DEFAULT_ORDER,
               context: int = DEFAULT_CONTEXT,
               first_window: int = DEFAULT_FIRST_WINDOW, skips=DEFAULT_SKIPS,
               clusterings=DEFAULT_CLUSTERINGS, seed: int = 0, piece_bytes=None,
               line_positions=DEFAULT_LINE_POSITIONS, discount=None,
               entry_edges=DEFAULT_ENTRY_EDGES, hessian_every: int = DEFAULT_HESSIAN_EVERY,
               hessian_tokens: int | None = DEFAULT_HESSIAN_TOKENS, tol: float = DEFAULT_TOL,
               max_memory=None, workers: int = 1, engine: str = "local", scheduler=None,
               spill_dir=None, dask_processes: bool = True, log=None):
    """The default model of ``chunks`` (see the module docstring), group by group.

    Same arguments and result as ``rich.count_rich`` (training chunks; tables from their
    bigram counts) followed by ``rich.fit_rich(counts, heldout, refit=<counts of
    refit_chunks>)`` with entry-count weights (``entry_edges``, not None). Returns ``(params,
    tables, n_sequences, n_tokens)``; the totals include ``refit_chunks``.

    ``order`` None: by the training text's size (``ModelConfig.rich_order`` of its targets,
    end-of-line marks included), as ``lmkit train`` with no model option; the chosen order is
    the number of ``Suffix`` groups + 1 of the result.

    Scale (the same model whichever): ``workers`` > 1 counts and solves the groups in that
    many processes; ``engine="dask"`` on a Dask cluster (``scheduler`` address, or a new
    LocalCluster of ``workers`` processes; ``dask_processes=False``: threads, for tests);
    ``max_memory`` refuses up front what cannot fit and keeps the model's arrays on disk,
    memory-mapped; ``spill_dir`` is where the temporary folder goes (default: TMPDIR), with
    an owner marker, so that ``io.scratch.sweep_stale(spill_dir)`` (run by ``lmkit.train``)
    removes it if this process is killed before it can.
    """
    if entry_edges is None:
        raise ValueError("build_rich fits one weight per group x entry-count bucket; pass "
                         "entry_edges (other weightings: lmkit.experiments.rich_weights)")
    groups = base_groups(DEFAULT_ORDER if order is None else order, context, skips,
                         first_window)
    pad = max([g.reach for g in groups if isinstance(g, Window)] + [1])  # windows only
    V = vocab_size
    folder = None
    try:
        # the suffix chain's windows (and the training counts waiting for the second pass) go
        # there; under max_memory the token buffers and the model's arrays too, memory-mapped
        folder = make_temp_dir("lmkit-rich-", dir=spill_dir)
        # engine local, or a LocalCluster of this machine: the workers of a cluster at a
        # scheduler address get the buffers sent (in their memory: they may see no shared
        # disk); a LocalCluster's map the same files (``_Text`` travels as their paths)
        mapped = (folder if max_memory is not None and (engine != "dask" or scheduler is None)
                  else None)
        return _build_rich(chunks, V, bos_id, eos_id, heldout, groups, order is None, pad,
                           folder, mapped,
                           refit_chunks, clusterings, seed, piece_bytes, line_positions,
                           discount, entry_edges, hessian_every, hessian_tokens, tol,
                           max_memory, workers, engine, scheduler, dask_processes, log)
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _build_rich(chunks, V, bos_id, eos_id, heldout, groups, by_size, pad, folder, mapped,
                refit_chunks, clusterings, seed, piece_bytes, line_positions, discount,
                entry_edges, hessian_every, hessian_tokens, tol, max_memory, workers, engine,
                scheduler, dask_processes, log):
    """``build_rich`` inside its temporary ``folder`` (None: nothing spilled); ``mapped``: the
    folder for the memory-mapped token buffers (None: in memory); ``by_size``: the suffix
    chain of ``groups`` is replaced by the one ``ModelConfig.rich_order`` gives the text."""
    texts = [_Text(chunks, V, bos_id, eos_id, pad, mapped, "train")]
    if by_size:
        order = ModelConfig.rich_order(len(texts[0].pos))
        groups = [Suffix(m) for m in range(1, order)] + [g for g in groups
                                                         if not isinstance(g, Suffix)]
        if log:
            log(f"      n-gram order {order} for {len(texts[0].pos)} training tokens")
    M = sum(isinstance(g, Suffix) for g in groups)
    # the cluster tables, from the training text's bigram counts as count_rich takes them
    tables = []
    if clusterings:
        src = [g for g in groups if g == Window(1)] or [Suffix(1)]
        base = texts[0].count(src)
        emb = bigram_embedding(bigram_counts(base), seed=seed)
        for i, (n_clusters, shapes) in enumerate(clusterings):
            table = make_clusters(base, n_clusters, seed + i, emb)
            if any(t is not None and t.max() == table.max() for t in tables):
                table = None  # as many clusters as an earlier table: count_rich drops it too
            tables.append(None if table is None else np.asarray(table, dtype=np.int64))
            if table is not None:
                groups += cluster_groups(table, shapes)
        del base, emb
    if piece_bytes is not None:
        groups += line_groups(piece_bytes, line_positions, tables)
    edges = tuple(entry_edges)
    if log:
        how = ("on Dask" if engine == "dask" else f"in {workers} worker processes"
               if workers > 1 else "one at a time")
        log(f"      solving {len(groups)} groups {how}")
    if engine != "dask":
        spill = _Spill(folder) if refit_chunks is not None else None
        return _build(_Runner(workers), texts, groups, M, tables, spill, folder, mapped,
                      refit_chunks, pad, discount, edges, heldout, hessian_every,
                      hessian_tokens, tol, max_memory, log)
    # a LocalCluster's worker processes are part of the process tree max_memory bounds
    before = own_rss() if max_memory is not None and scheduler is None and dask_processes \
        else None
    with dask_client(scheduler, workers, dask_processes, log) as client:
        held = 0
        if before is not None:  # its workers once they hold the build's code, and what
            # starting the cluster added to this process (the scheduler runs here)
            held = workers_rss(client, "lmkit.rich_build")
            max_memory = dask_budget(max_memory, held + max(0, own_rss() - before), workers,
                                     log)
        # a LocalCluster shares this machine's disk: its tasks keep the first pass's counts
        # in the spill folder, as engine local; the workers of a cluster at an address may
        # see no shared disk: the second pass counts the training text again there (the
        # same counts)
        spill = (_Spill(folder) if refit_chunks is not None and scheduler is None else None)
        return _build(_Runner(client=client, local=scheduler is None, held=held), texts,
                      groups, M,
                      tables, spill, folder, None,
                      refit_chunks, pad, discount, edges, heldout, hessian_every,
                      hessian_tokens, tol, max_memory, log)


def dask_budget(max_memory, taken: int, workers: int, log=None) -> int:
    """Bytes of ``max_memory`` left to the build once a LocalCluster's processes hold
    ``taken`` (its ``workers`` interpreters and the scheduler, before any task); refused with
    one line when nothing is left."""
    limit = parse_size(max_memory)
    left = limit - int(taken)
    if log:
        log(f"      dask: the cluster's processes hold {format_bytes(taken)} before any task; "
            f"the build gets the rest of the limit, {format_bytes(max(left, 0))}")
    check_memory(int(taken) + 1, limit, f"the Dask LocalCluster of {workers} worker processes "
                 "(before any task)", "raise max_memory, use fewer workers, or use engine "
                 "local")
    return left


class _Store:
    """Each group's solved arrays (``S`` data, indices, indptr, row keys, entry buckets)
    written to ``.npy`` files (``io.npyfile.NpyAppender``) and memory-mapped read-only, so the
    model's arrays are not held in memory as the build goes on (``--max-memory``)."""

    def __init__(self, folder: Path):
        self.folder, self.n = folder, 0

    def _disk(self, name: str, a):
        if a is None or mapped_base(a) is not None:  # already on disk (the chain's arrays)
            return a
        path = self.folder / f"model{self.n}.{name}.npy"
        w = NpyAppender(path, a.dtype)
        try:
            w.append(a)
        finally:
            w.close()
        return open_npy(path)

    def put(self, g: int, S, k, b):
        self.n += 1
        data, indices, indptr = (self._disk(n, a) for n, a in
                                 (("data", S.data), ("indices", S.indices), ("indptr", S.indptr)))
        Sm = sp.csr_matrix((data, indices, indptr), shape=S.shape, copy=False)
        return Sm, self._disk("keys", k), self._disk("buckets", b)


def _start_memory(text: _Text, workers: int, max_memory) -> None:
    """Refuse, before any counting, a ``max_memory`` below what the build needs whatever the
    corpus's counts: the token buffer plus one part of positions being sorted per process."""
    if max_memory is None:
        return
    limit = parse_size(max_memory)
    part = min(len(text.pos), PART_POSITIONS)
    need = text.resident_nbytes() + workers * part * PART_BYTES
    check_memory(need, limit, "the feature-rich build (the text's buffer of ids and counting)",
                 "raise max_memory, use fewer workers, or use order N for a plain n-gram "
                 "model (bounded in buckets)")


def _search_bytes(text: _Text, rows: list, max_memory, log=None, elsewhere: int = 0):
    """Bytes the weight search may hold under ``max_memory`` (None: no bound): the limit less
    the token buffer, the held-out rows and ``elsewhere`` (what other processes of the tree
    hold meanwhile: a LocalCluster's idle workers); ``MemoryLimitError`` if nothing is left."""
    if max_memory is None:
        return None
    limit = parse_size(max_memory)
    fixed = text.resident_nbytes() + sum(r.nbytes for r in rows) + int(elsewhere)
    check_memory(fixed + 1, limit, "the weight search (with the text's buffer of ids)",
                 "raise max_memory")
    if log:
        log(f"      weight search within {format_bytes(limit - fixed)}")
    return limit - fixed


def _build(runner, texts, groups, M, tables, spill, folder, mapped, refit_chunks, pad,
           discount, edges, heldout, hessian_every, hessian_tokens, tol, max_memory, log):
    """The two passes of ``build_rich`` (first: solve, fit the weights; second, with the
    held-out lines' counts added: solve again and fold the weights in)."""
    V, B = texts[0].V, len(edges) + 1
    first = texts[0]
    bos_id, eos_id = int(first.bos_id), int(first.eos_id)
    _start_memory(first, runner.workers, max_memory)
    store = _Store(folder) if max_memory is not None else None
    # the chain task runs here (engine local): its parts may go to the worker processes
    local = runner.workers if runner.client is None else 1
    limit = parse_size(max_memory) if max_memory is not None else None
    # the chain's windows in the build's folder (engine local or a LocalCluster; a cluster
    # at an address: its worker's TMPDIR); its solved arrays there too under max_memory
    # (engine local), memory-mapped
    scratch = folder if runner.client is None or runner.local else None
    # the solved arrays are written to the build's folder (engine local, or a LocalCluster,
    # whose tasks then send back paths) and memory-mapped
    out = folder if store is not None and (runner.client is None or runner.local) else None
    scale = dict(max_memory=limit, scratch=scratch, out=out, tasks=runner.slots())
    # with a second pass to come (and the counts kept for it), the first solves only the rows
    # the weight search reads: the same weights, ~1/5 of the values on the default corpus
    wanted = heldout_keys(groups, M, heldout, V, bos_id, eos_id) \
        if refit_chunks is not None and spill is not None else None
    job = _Job(first, None, spill, edges, workers=local, wanted=wanted, **scale)
    q, S, keys, eb, info, n_seq, n_tok = _solve_pass(runner, job, groups, M, discount,
                                                     store, log)
    nnz = sum(x.nnz for x in S)
    if wanted is not None:  # the whole model's: every closed form keeps its counts' pattern
        nnz = sum(x.nnz for x in S[:M]) + sum(spill.values(g) for g in range(M, len(groups)))
    if store is None:  # the model is in memory (under max_memory it is mapped from disk)
        check_memory(nnz * BYTES_PER_VALUE * 2, max_memory, "the feature-rich model",
                     "use a smaller vocab_size, or pass order N for a plain model")
    if log:
        log(f"      {n_seq} sequences, {n_tok} tokens, {nnz} stored values "
            f"(~{format_bytes(nnz * BYTES_PER_VALUE)} with their buckets"
            f"{', memory-mapped' if store is not None else ''})")
    params = SparseParams(groups, q, S, keys, np.ones(len(groups)), info)
    del S
    rows, targets, _ = context_rows(params.groups, params.keys, list(heldout), V, bos_id,
                                    eos_id)
    release_pages(*(k for k in params.keys if k is not None))  # the mapped keys looked up
    # every held-out position, whatever max_memory and whatever memory is free (thinning them,
    # solve.fit_heldout, would change the model): under max_memory the search is bounded by
    # summing its terms over pieces instead
    # on a LocalCluster the search runs here while the workers keep what they hold (beyond
    # what they held at the start, which max_memory no longer counts)
    idle = (max(0, workers_rss(runner.client) - runner.held)
            if runner.client is not None and runner.local and max_memory is not None else 0)
    search_bytes = _search_bytes(first, rows, max_memory, log, idle)
    init = np.repeat(params.info["lambda_init"], B)
    # engine local: the search's pieces in the worker processes too (on Dask: here)
    lam, trace = choose_lambdas(params, rows, targets, init=init, entry_buckets=eb,
                                n_buckets=B, hessian_every=hessian_every,
                                hessian_tokens=hessian_tokens, tol=tol,
                                max_bytes=search_bytes, workers=local)
    release_heap()  # the search's pieces, freed: not kept through the second pass
    lam = np.asarray(lam).reshape(len(groups), B)
    n_used = len(targets)
    if log and trace:
        log(f"      weights fitted on {n_used} held-out tokens: ppl "
            f"{np.exp(trace[0][1]):.2f} -> {np.exp(trace[-1][1]):.2f} in {len(trace) - 1} steps")
    elif log:
        log("      no held-out text: the weights keep their start values (MKN alone)")
    del rows, targets
    if refit_chunks is not None:
        params = eb = None  # freed before the second pass
        held = _Text(refit_chunks, V, bos_id, eos_id, pad, mapped, "held")
        # the training buffer goes when its counts are on disk (Dask counts it again)
        train = first if spill is None else None
        del texts[:]
        first = job = None
        q, S, keys, _, info, n_seq, n_tok = _solve_pass(
            runner, _Job(train, held, spill, edges, lam, local, **scale), groups, M, discount,
            store)
    else:
        S = []
        for g, (Sg, b) in enumerate(zip(params.S, eb)):
            x = sp.csr_matrix((Sg.data * lam[g][b], Sg.indices, Sg.indptr), shape=Sg.shape)
            x.has_sorted_indices = True
            S.append(store.put(g, x, None, None)[0] if store is not None else x)
        info, params, eb = params.info, None, None
    info = {**info, "entry_lambdas": lam.tolist(), "entry_edges": list(edges),
            "lambda_trace": trace,
            "lambda_rule": f"projected Newton minimisation of held-out NLL on {n_used} tokens",
            "heldout_tokens": n_used}
    out = SparseParams(groups, q, S, keys, np.ones(len(groups)), info)
    return out, tables, n_seq, n_tok
