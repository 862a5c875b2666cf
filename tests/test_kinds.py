"""The feature-kind registry: names, tables, workers, Dask and closed forms all go through it."""
from dataclasses import dataclass

import numpy as np
import pytest

from lmkit import kinds, rich
from lmkit.clusters import ClusterHistory
from lmkit.counts import count_chunk
from lmkit.errors import InputError
from lmkit.explicit import estimate_discount, solve_group
from lmkit.features import Skip, Suffix, Window
from lmkit.linepos import LinePosition
from lmkit.parallel import count_corpus_parallel
from lmkit.skipgram import solve_skip

BOS, EOS = 1, 2


def _rich_groups(V: int) -> list:
    """One group of every registered kind, with two cluster tables and a bytes table."""
    rng = np.random.default_rng(0)
    t8, t3 = (0,) * (V - 8) + tuple(range(8)), (0,) * (V - 3) + (0, 1, 2)  # every id present
    pb = tuple(int(x) for x in rng.integers(0, 5, V))
    return (rich.base_groups(4, 3, ((1, 1, 1),), first_window=2)
            + [ClusterHistory(3, 1, t8), ClusterHistory(2, 0, t3)]
            + [LinePosition(1, 4, 6, pb), LinePosition(0, 6, 5, pb, t3)])


def test_every_kind_is_registered_once_and_round_trips():
    groups = _rich_groups(40)
    assert {type(g) for g in groups} == {k.cls for k in kinds.kinds()}
    names, tables = kinds.group_spec(groups)
    assert sorted(tables) == ["clusters3", "clusters8", "piece_bytes"]  # each table once
    assert all(t.dtype == np.int64 and t.shape == (40,) for t in tables.values())
    assert kinds.groups_from_spec((names, tables)) == groups
    assert kinds.tables_needed("linepos0_6_5_3") == ("piece_bytes", "clusters3")
    assert kinds.tables_needed("suffix2") == ()
    with pytest.raises(ValueError, match="already registered"):
        kinds.register(kinds.Kind("window", Window, r"w(\d+)", "w{k}", build=None))


@pytest.mark.parametrize("name, tables, match", [
    ("bigram", {}, r"unknown feature group 'bigram' \(known: suffix\{m\}, window\{k\}"),
    ("cluster3_1_8", {}, "needs the table 'clusters8'"),
    ("linepos1_4_6", {"piece_bytes": np.full(5, 2000)}, r"piece bytes must lie in \[0, 1024\]"),
    ("skip0_1_1", {}, "skip-gram needs r >= 1"),
    ("window0", {}, "needs a number >= 1"),
])
def test_bad_names_and_tables_fail_with_one_line(name, tables, match):
    with pytest.raises(ValueError, match=match) as e:
        kinds.from_name(name, tables)
    assert "\n" not in str(e.value)


def test_clashing_tables_and_unregistered_classes_are_refused():
    a, b = ClusterHistory(2, 0, (0, 1, 1)), ClusterHistory(3, 0, (1, 0, 1))
    with pytest.raises(InputError, match="two cluster tables of 2 clusters"):
        kinds.group_tables([a, b])

    @dataclass(frozen=True)
    class Mystery:
        name = "mystery1"

        def row_keys(self, buf, pos, starts, vocab_size):
            return buf[pos - 1]
    with pytest.raises(InputError, match="is of no registered kind"):
        kinds.group_spec([Window(1), Mystery()])


def test_closed_forms_are_the_kinds_solvers(tiny_tok, tiny_lines):
    V = tiny_tok.vocab_size
    groups = [g for g in _rich_groups(V) if not isinstance(g, Suffix)]
    c = count_chunk(tiny_tok.encode_batch(tiny_lines), V, groups, BOS, EOS)
    q = np.full(V, 1.0 / V)
    for g, F, k in zip(groups, c.F, c.keys):
        d = estimate_discount(F)
        a = {Window: None, Skip: getattr(g, "a", 0), LinePosition: getattr(g, "a", 0),
             ClusterHistory: getattr(g, "w", 0)}[type(g)]
        want = solve_group(F, q, d) if a is None else solve_skip(F, k, a, q, d)
        got = kinds.closed_form(g, F, k, q, d)
        assert (got != want).nnz == 0
    with pytest.raises(ValueError, match="solved with its whole chain"):
        kinds.closed_form(Suffix(1), c.F[0], None, q, 0.5)


def test_workers_and_dask_count_every_kind_as_one_process_does(tiny_tok, tiny_lines):
    """Worker processes rebuild cluster and line-position groups from the spec (they used to
    know only names, so the default model could not be counted by workers)."""
    groups = _rich_groups(tiny_tok.vocab_size)
    one = count_corpus_parallel(tiny_lines, tiny_tok, groups, chunk_lines=40, workers=1)
    two = count_corpus_parallel(tiny_lines, tiny_tok, groups, chunk_lines=40, workers=2)
    assert one.equals(two) and one.n_tokens > 0
    pytest.importorskip("dask.distributed")
    from lmkit.distributed import count_corpus_dask
    dask = count_corpus_dask(iter(tiny_lines), tiny_tok, groups, chunk_lines=40, n_workers=2,
                             processes=False)
    assert one.equals(dask)


@dataclass(frozen=True)
class Parity:
    """A toy kind: the parities of the previous two tokens (keyed rows 0..3)."""

    name = "parity2"
    reach = 2

    def row_keys(self, buf, pos, starts, vocab_size):
        return (buf[pos - 1] % 2 + 2 * (buf[pos - 2] % 2)).astype(np.int64)

    def n_rows(self, vocab_size):
        return None  # rows are the observed keys

    def key_limit(self, vocab_size):
        return 4


def test_a_new_kind_works_on_every_route_by_registering_once(monkeypatch, tiny_tok, tiny_lines,
                                                             tmp_path):
    """Registered once (pattern, builder, closed form), a new kind is counted by worker
    processes and on Dask, solved, weighted, saved and loaded back."""
    from lmkit.model import LanguageModel
    from lmkit.solve import fit
    monkeypatch.setattr(kinds, "_KINDS", list(kinds._KINDS))  # registered for this test only
    kinds.register(kinds.Kind("parity", Parity, r"parity2", "parity2", build=lambda f, t: Parity(),
                              closed_form=lambda g, F, keys, q, d: solve_group(F, q, d)))
    groups = [Suffix(1), Suffix(2), Parity()]
    assert kinds.groups_from_spec(kinds.group_spec(groups)) == groups
    train, held = tiny_lines[:250], tiny_tok.encode_batch(tiny_lines[250:])
    one = count_corpus_parallel(train, tiny_tok, groups, chunk_lines=40, workers=1)
    two = count_corpus_parallel(train, tiny_tok, groups, chunk_lines=40, workers=2)
    assert one.equals(two) and one.F[2].shape == (4, tiny_tok.vocab_size)
    pytest.importorskip("dask.distributed")
    from lmkit.distributed import count_corpus_dask
    assert one.equals(count_corpus_dask(iter(train), tiny_tok, groups, chunk_lines=40,
                                        n_workers=2, processes=False))
    params = fit(one, held)
    assert (params.S[2] != solve_group(one.F[2], params.q, estimate_discount(one.F[2]))).nnz == 0
    assert len(params.info["lambda_trace"][0][0]) == 3  # the weight search weighed it too
    model = LanguageModel(tiny_tok, params, {}, {})
    again = LanguageModel.load(model.save(tmp_path / "m"))
    assert again.groups == groups
    assert np.array_equal(model.log_proba_ids(held)[0], again.log_proba_ids(held)[0])


def test_workers_count_the_default_model_s_groups_as_its_one_buffer_does(tiny_tok, tiny_lines):
    """The rich model's own groups (its cluster tables, the tokenizer's piece bytes), counted by
    two worker processes, equal ``rich.count_rich``'s one-buffer counts exactly."""
    seqs = tiny_tok.encode_batch(tiny_lines)
    counts, _ = rich.count_rich([seqs], tiny_tok.vocab_size, tiny_tok.bos_id, tiny_tok.eos_id,
                                piece_bytes=tiny_tok.piece_bytes())
    assert {kinds.kind_of(g).family for g in counts.groups} == {k.family for k in kinds.kinds()}
    workers = count_corpus_parallel(tiny_lines, tiny_tok, counts.groups, chunk_lines=50,
                                    workers=2)
    assert workers.equals(counts)
