r"""The registry of feature-group kinds: name pattern, stored tables, key function, closed form.

Every kind of feature group (``features.Suffix``, ``features.Window``, ``features.Skip``,
``clusters.ClusterHistory``, ``linepos.LinePosition``) is registered here ONCE, as a ``Kind``:

- ``pattern``: the regular expression its names match in full (``group.name``), e.g.
  ``cluster(\d+)_(\d+)_(\d+)`` for ``cluster3_1_256``; ``syntax`` says it in words for errors;
- ``tables(fields)``: the names of the stored tables a group of that name is rebuilt with
  (``clusters{C}``: int64 (V,) token -> cluster id; ``piece_bytes``: int64 (V,) bytes per
  token), and ``carries(group)``: the same tables taken from a group, ``{name: tuple}``;
- ``build(fields, tables)``: the group from its name's integer fields and those tables; it
  checks the values (a model folder is untrusted input) and raises ``ValueError``;
- the key function is the class's ``row_keys(buf, pos, starts, vocab_size)``: one int64 row
  key per target position, -1 where the group has no feature (``Suffix`` also takes the
  parent rows: its keys are chained, see ``features.py``);
- ``closed_form``: the dotted name (``"module:function"``) of the group's closed form
  ``(group, F, keys, q, d) -> S``: its weights ``S`` CSR (R, V) float64 on the pattern of its
  counts ``F`` CSR (R, V) int64, rows keyed by ``keys`` (R,) int64 (None: rows are token ids),
  against the model's unigram ``q`` (V,) with the absolute discount ``d`` in (0, 1); imported
  when a group is first solved, so loading and scoring a model (``io/store.py`` reads groups
  through this registry) never imports solver code (``closed_forms.py`` holds the built-in
  ones). ``Suffix`` has none (``chained``): the suffix groups are solved together, as one
  interpolated modified Kneser-Ney model (``ngram.mkn.solve_ngram``).
- ``marginal`` (optional): the dotted name of ``(group, F, keys, V) -> m``, what the closed
  form of some rows needs from the rest of the group (the skip-like kinds: the counts of the
  adjacent part), summable with ``+`` over blocks of rows. With it, a group is solved a
  block of rows at a time (``rich_build``: bounded memory) as ``closed_form(..., marginal=
  sum of m over every block)``, the same values as solving it whole. A kind without one must
  have a closed form whose rows depend only on their own counts, ``q`` and ``d``.

API (every caller goes through these; an unknown name or class fails with one line)::

    from_name("cluster3_1_256", {"clusters256": table}) -> ClusterHistory(3, 1, table)
    tables_needed("linepos0_12_7_32") -> ("piece_bytes", "clusters32")
    group_tables(groups) -> {"clusters256": int64 (V,), "piece_bytes": int64 (V,), ...}
    group_spec(groups) -> (names, tables)          # what a worker process or task needs
    groups_from_spec(spec) -> groups               # rebuilt there, equal to ``groups``
    closed_form(group, F, keys, q, d) -> S         # the kind's closed form (ValueError: Suffix)
    group_marginal(group, F, keys, V) -> m | None   # whole-group statistic, summed over row blocks
    closed_form_of(kind) -> function               # its dotted name resolved (imports the solver)
    kind_of(group) -> Kind;  register(Kind(...))   # a new kind: one entry, every route uses it

A new kind is a class with ``name``, ``reach``, ``row_keys``, ``n_rows`` (None: rows are the
observed keys) and, for keyed rows, ``key_limit(V)``; plus one ``register(Kind(...))`` naming
its pattern, tables, builder and closed form. Storage (``io.store.groups_from_names``, the
writer's tables), counting workers (``parallel``), Dask tasks (``distributed``) and the
solvers (``solve.solve``) all look kinds up here, so it works on every route or fails loudly.
"""
from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .clusters import ClusterHistory
from .errors import InputError
from .features import Skip, Suffix, Window
from .linepos import LinePosition, check_bytes_table


@dataclass(frozen=True)
class Kind:
    """One family of feature groups (see the module docstring)."""

    family: str
    cls: type
    pattern: str
    syntax: str
    build: Callable  # (fields: tuple of int|None, tables: {name: tuple}) -> group
    tables: Callable = lambda fields: ()  # fields -> names of the stored tables it needs
    carries: Callable = lambda group: {}  # group -> {table name: tuple}
    # "module:function" of (group, F, keys, q, d) -> S (a callable is taken as it is);
    # None: chained (MKN)
    closed_form: str | Callable | None = None
    # "module:function" of (group, F, keys, V) -> a summable statistic of those rows that
    # the closed form of a block of the group's rows takes as marginal=; None: rows solve alone
    marginal: str | Callable | None = None

    @property
    def chained(self) -> bool:
        return self.closed_form is None


_KINDS: list = []


def register(kind: Kind) -> Kind:
    """Add a kind (its pattern must not overlap an existing one's names, its class be new)."""
    for k in _KINDS:
        if k.family == kind.family or k.cls is kind.cls:
            raise ValueError(f"feature kind {kind.family!r} ({kind.cls.__name__}) is "
                             "already registered")
    if not callable(getattr(kind.cls, "row_keys", None)):
        raise ValueError(f"feature kind {kind.family!r}: {kind.cls.__name__} has no row_keys")
    _KINDS.append(kind)
    return kind


def kinds() -> tuple:
    """The registered kinds, in registration order."""
    return tuple(_KINDS)


def kind_of(group) -> Kind:
    """The registered kind of a group object; ``InputError`` if its class is not registered."""
    for k in _KINDS:
        if type(group) is k.cls:
            return k
    raise InputError(f"feature group {group!r} is of no registered kind (known: "
                     f"{_known()}); register it in lmkit.kinds")


def parse(name: str) -> tuple[Kind, tuple]:
    """``(kind, fields)`` of a group name: ``'skip1_2_1'`` -> (the skip kind, (1, 2, 1))."""
    if isinstance(name, str):
        for k in _KINDS:
            m = re.fullmatch(k.pattern, name, flags=re.ASCII)  # no Unicode digits
            if m:
                return k, tuple(None if x is None else int(x) for x in m.groups())
    raise ValueError(f"unknown feature group {name!r} (known: {_known()})")


def tables_needed(name: str) -> tuple:
    """Names of the stored tables the group ``name`` is rebuilt with (empty for most kinds)."""
    kind, fields = parse(name)
    return tuple(kind.tables(fields))


def from_name(name: str, tables=None):
    """The group named ``name`` (inverse of ``group.name``), given the stored tables it needs
    (``tables``: a mapping of table name -> integer (V,) array; see ``tables_needed``).
    ``ValueError`` (one line) for an unknown name, a missing table or bad values."""
    kind, fields = parse(name)
    got = {}
    for t in kind.tables(fields):
        if tables is None or t not in tables:
            raise ValueError(f"feature group {name!r} needs the table {t!r}")
        got[t] = tuple(int(x) for x in np.asarray(tables[t]).ravel())
    return kind.build(fields, got)


def group_tables(groups) -> dict:
    """Every table the groups carry, ``{name: int64 (V,) array}``, once each, sorted by name;
    ``InputError`` if two groups carry different tables under one name."""
    out: dict = {}
    for g in groups:
        for name, table in kind_of(g).carries(g).items():
            if name in out and out[name] != table:
                raise InputError(_TABLE_CLASH.get(name.rstrip("0123456789"), "{name}").format(
                    name=name, n=name[len("clusters"):]))
            out[name] = table
    return {name: np.asarray(out[name], dtype=np.int64) for name in sorted(out)}


def group_spec(groups) -> tuple:
    """``(names, tables)``: plain lists and arrays that rebuild ``groups`` in another process
    (``groups_from_spec``); what counting workers and Dask tasks are sent."""
    return [g.name for g in groups], group_tables(groups)


def groups_from_spec(spec) -> list:
    """Inverse of ``group_spec``."""
    names, tables = spec
    return [from_name(n, tables) for n in names]


def closed_form(group, F, keys, q, d, marginal=None):
    """The kind's closed form of one group (see the module docstring); ``ValueError`` for a
    chained kind (``Suffix``: solve the chain with ``ngram.mkn.solve_ngram``). ``F``, ``keys``
    may be a block of the group's rows, with ``marginal`` the sum of ``group_marginal`` over
    every block (the same values as solving the whole group)."""
    kind = kind_of(group)
    if kind.chained:
        raise ValueError(f"{group.name} is solved with its whole chain (ngram.mkn.solve_ngram), "
                         "not alone")
    fn = closed_form_of(kind)
    if marginal is None:
        return fn(group, F, keys, q, d)
    return fn(group, F, keys, q, d, marginal=marginal)


def group_marginal(group, F, keys, vocab_size: int):
    """What the closed form of a block of the group's rows needs from the whole group, of
    these rows (``Kind.marginal``; summable with ``+`` over blocks); None: its rows solve on
    their own (given ``q`` and the discount)."""
    fn = _resolve(kind_of(group), "marginal")
    return None if fn is None else fn(group, F, keys, vocab_size)


def closed_form_of(kind: Kind) -> Callable:
    """The kind's closed form as a function: its dotted name imported (``"lmkit.closed_forms:
    window"`` -> ``lmkit.closed_forms.window``); ``ValueError`` if it names nothing callable."""
    return _resolve(kind, "closed_form")


def _resolve(kind: Kind, field: str):
    target = getattr(kind, field)
    if callable(target) or target is None:
        return target
    module, _, name = target.partition(":")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        fn = None
    if not callable(fn):
        what = field.replace("_", " ")
        raise ValueError(f"feature kind {kind.family!r}: {what} {target!r} names no function")
    return fn


def _known() -> str:
    return ", ".join(k.syntax for k in _KINDS)


_TABLE_CLASH = {
    "clusters": "two cluster tables of {n} clusters in one model; use tables of different sizes",
    "piece_bytes": "line-position groups with different piece_bytes tables in one model; use "
                   "one tokenizer's table",
}


# ---- the kinds ---------------------------------------------------------------------------------
def _positive(name: str, x: int) -> int:
    if x < 1:
        raise ValueError(f"{name}: needs a number >= 1")
    return x


def _build_cluster(fields, tables):
    m, w, C = fields
    table = tables[f"clusters{C}"]
    name = f"cluster{m}_{w}_{C}"
    if not table or max(table) + 1 != C:
        raise ValueError(f"{name!r} is not a cluster-history group of a "
                         f"{max(table, default=-1) + 1}-cluster table")
    g = ClusterHistory(m, w, table)
    if not 0 <= w < m <= 64 or g.key_limit(len(table)) >= 2 ** 63:
        raise ValueError(f"{name!r}: needs 0 <= w < m <= 64 and V**w * C**(m-w) < 2**63")
    return g


def _linepos_tables(fields):
    C = fields[3]
    return ("piece_bytes",) if C is None else ("piece_bytes", f"clusters{C}")


def _build_linepos(fields, tables):
    a, step, cap, C = fields
    name = f"linepos{a}_{step}_{cap}" + ("" if C is None else f"_{C}")
    if not (a <= 8 and 1 <= step <= 2 ** 20 and cap <= 2 ** 20):
        raise ValueError(f"{name!r}: needs a <= 8, 1 <= step <= 2**20, cap <= 2**20")
    table = tables["piece_bytes"]
    check_bytes_table(np.asarray(table, dtype=np.int64), len(table))
    clusters = None if C is None else tables[f"clusters{C}"]
    if clusters is not None and (len(clusters) != len(table) or max(clusters, default=-1) + 1 != C
                                 or min(clusters) < 0):
        raise ValueError(f"{name!r} does not match its cluster table")
    g = LinePosition(a, step, cap, table, clusters)
    if g.key_limit(len(table)) >= 2 ** 63:
        raise ValueError(f"{name!r}: needs V**a * C * (cap + 1) < 2**63")
    return g


def _linepos_carries(g):
    out = {"piece_bytes": g.table}
    if g.clusters is not None:
        out[f"clusters{g.n_clusters}"] = g.clusters
    return out


def _build_skip(fields, tables):
    try:
        return Skip(*fields)
    except InputError as e:
        raise ValueError(str(e)) from None


SUFFIX = register(Kind(
    "suffix", Suffix, r"suffix(\d+)", "suffix{m}",
    build=lambda f, t: Suffix(_positive(f"suffix{f[0]}", f[0]))))
WINDOW = register(Kind(
    "window", Window, r"window(\d+)", "window{k}",
    build=lambda f, t: Window(_positive(f"window{f[0]}", f[0])),
    closed_form="lmkit.closed_forms:window"))
SKIP = register(Kind(
    "skip", Skip, r"skip(\d+)_(\d+)_(\d+)", "skip{r}_{s}_{a}", build=_build_skip,
    closed_form="lmkit.closed_forms:skip", marginal="lmkit.closed_forms:skip_marginal"))
CLUSTER = register(Kind(
    "cluster", ClusterHistory, r"cluster(\d+)_(\d+)_(\d+)", "cluster{m}_{w}_{C}",
    build=_build_cluster, tables=lambda f: (f"clusters{f[2]}",),
    carries=lambda g: {f"clusters{g.n_clusters}": g.table},
    closed_form="lmkit.closed_forms:cluster", marginal="lmkit.closed_forms:cluster_marginal"))
LINEPOS = register(Kind(
    "linepos", LinePosition, r"linepos(\d+)_(\d+)_(\d+)(?:_(\d+))?",
    "linepos{a}_{step}_{cap}[_{C}]", build=_build_linepos, tables=_linepos_tables,
    carries=_linepos_carries, closed_form="lmkit.closed_forms:skip",
    marginal="lmkit.closed_forms:skip_marginal"))
