"""Streaming, multi-process and spilling counts equal one-shot counts; memory refusals are clear."""
import tracemalloc

import numpy as np
import pytest

from lmkit.counts import count_chunk, sum_counts
from lmkit.errors import InputError, MemoryLimitError
from lmkit.explicit import choose_lambdas, solve_explicit
from lmkit.features import Window, make_groups
from lmkit.counts import load_counts, save_counts
from lmkit.parallel import (SpillingSum, check_workers, count_corpus_parallel, counts_nbytes,
                            line_chunks)
from lmkit.solve import model_nbytes
from lmkit.scoring import context_rows, next_logp, next_rows, sparse_log_proba

GROUPS = make_groups(3)


def one_shot(lines, tok, groups=GROUPS):
    return count_chunk(tok.encode_batch(lines), tok.vocab_size, groups, tok.bos_id, tok.eos_id)


def test_line_chunks_streams_lazily():
    seen = []

    def lines():
        for i in range(7):
            seen.append(i)
            yield str(i)

    chunks = line_chunks(lines(), 3)
    assert next(chunks) == ["0", "1", "2"] and seen == [0, 1, 2]  # nothing read ahead
    assert list(chunks) == [["3", "4", "5"], ["6"]]


def test_hand_checked_counts_across_chunks():
    # ids [5, 6] and [6]: bigram (prev -> target) pairs BOS->5, 5->6, 6->EOS, BOS->6, 6->EOS
    parts = [count_chunk([[5, 6]], 8, [Window(1)], 1, 2), count_chunk([[6]], 8, [Window(1)], 1, 2)]
    c = sum_counts(parts)
    F = c.F[0].toarray()
    assert F[1, 5] == 1 and F[5, 6] == 1 and F[6, 2] == 2 and F[1, 6] == 1 and F.sum() == 5
    assert c.target.tolist() == [0, 0, 2, 0, 0, 1, 2, 0]
    assert (c.n_sequences, c.n_tokens) == (2, 5)


def test_chunked_equals_one_shot(tiny_lines, tiny_tok):
    chunked = count_corpus_parallel(iter(tiny_lines), tiny_tok, GROUPS, chunk_lines=7, workers=1)
    assert chunked.equals(one_shot(tiny_lines, tiny_tok))
    assert chunked.n_sequences == len(tiny_lines)


def test_two_workers_equal_one_bit_for_bit(tiny_lines, tiny_tok):
    one = count_corpus_parallel(tiny_lines, tiny_tok, GROUPS, chunk_lines=13, workers=1)
    two = count_corpus_parallel(tiny_lines, tiny_tok, GROUPS, chunk_lines=13, workers=2)
    assert two.equals(one)
    for a, b in zip(one.F, two.F):  # same arrays, not just equal values
        assert np.array_equal(a.indptr, b.indptr) and np.array_equal(a.indices, b.indices)
        assert np.array_equal(a.data, b.data) and a.data.dtype == b.data.dtype == np.int64


def test_spilled_sum_equals_in_memory(tiny_lines, tiny_tok, tmp_path):
    parts = [one_shot(tiny_lines[i:i + 20], tiny_tok) for i in range(0, len(tiny_lines), 20)]
    acc = SpillingSum(tiny_tok.vocab_size, GROUPS, budget=0, spill_dir=tmp_path)  # spill every add
    for p in parts:
        acc.add(p)
    assert len(acc.spilled) == len(parts)
    assert acc.total().equals(sum_counts(parts))
    assert list(tmp_path.iterdir()) == []  # spill folder removed


def test_save_load_counts_round_trip(tiny_lines, tiny_tok, tmp_path):
    c = one_shot(tiny_lines[:50], tiny_tok, make_groups(1, 3))  # suffix groups carry keys
    save_counts(c, tmp_path / "c.npz")
    assert load_counts(tmp_path / "c.npz", c.groups).equals(c)


def test_memory_limit_refusal_names_fix(tiny_lines, tiny_tok):
    with pytest.raises(MemoryLimitError, match=r"merging spilled counts needs .* but the memory "
                       r"limit is 1\.0 KiB; raise max_memory"):
        count_corpus_parallel(tiny_lines, tiny_tok, GROUPS, chunk_lines=50, workers=1, max_memory="1K")


def test_train_refuses_when_model_exceeds_limit(tiny_corpus_file, tiny_tok_file):
    from lmkit.train import train
    with pytest.raises(MemoryLimitError, match="raise max_memory"):
        train(input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file), context=2,
              max_memory="20K", workers=1)


def test_check_workers():
    assert check_workers(3) == 3 and check_workers(None) >= 1
    with pytest.raises(InputError, match="workers must be an integer >= 1, got 0"):
        check_workers(0)


def test_v32000_sparse_path_stays_small():
    """V = 32,000, K = 3 from synthetic ids: count, solve, choose lambdas, score, next-token.

    A dense (V, V) float64 matrix is 8.2 GB; the whole run must stay under 100 MB of traced
    allocations, so any hidden dense V x V allocation fails the test.
    """
    V, rng = 32000, np.random.default_rng(0)
    ranks = rng.zipf(1.3, size=60000) % (V - 3) + 3  # ids 3..V-1, heavy-tailed like text
    seqs = np.split(ranks, np.arange(40, len(ranks), 40))
    groups = make_groups(3)
    tracemalloc.start()
    try:
        counts = sum_counts(count_chunk(seqs[i:i + 300], V, groups, 1, 2)
                            for i in range(0, len(seqs) - 10, 300))
        params = solve_explicit(counts)
        rows, targets, _ = context_rows(groups, params.keys, seqs[-10:], V, 1, 2)
        params = params.with_lambdas(choose_lambdas(params, rows, targets)[0])
        lp = sparse_log_proba(params, rows, targets)
        nxt = next_logp(params, next_rows(groups, params.keys, seqs[0][:5], V, 1))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert counts.F[0].shape == (V, V) and params.S[2].shape == (V, V)
    assert np.isfinite(lp).all() and (lp < 0).all()
    assert nxt.shape == (V,) and abs(np.logaddexp.reduce(nxt)) < 1e-9
    assert peak < 100 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert model_nbytes(counts) < 50 * 2**20 and counts_nbytes(counts) < 50 * 2**20


def test_fit_heldout_subsamples_to_the_limit(tiny_model):
    from lmkit.solve import fit_heldout, heldout_nbytes
    tok, p = tiny_model.tokenizer, tiny_model.params
    seqs = tok.encode_batch(["Then come the king.", "Love the queen, and the king!"] * 20)
    rows, targets, _ = context_rows(tiny_model.groups, p.keys, seqs, tok.vocab_size, tok.bos_id,
                                    tok.eos_id)
    need = heldout_nbytes(p, rows)
    same_rows, same_targets = fit_heldout(p, rows, targets, max_memory=4 * need)
    assert same_targets is targets
    sub_rows, sub_targets = fit_heldout(p, rows, targets, max_memory=need // 2)  # half: every 4th
    assert np.array_equal(sub_targets, targets[::4])
    assert all(np.array_equal(a, b[::4]) for a, b in zip(sub_rows, rows))


def test_two_workers_equal_one_with_suffix_groups_and_spilling(tiny_lines, tiny_tok, tmp_path):
    groups = make_groups(2, 4)  # suffix keys are merged by union: order of parts must not matter
    one = count_corpus_parallel(tiny_lines, tiny_tok, groups, chunk_lines=11, workers=1)
    two = count_corpus_parallel(tiny_lines, tiny_tok, groups, chunk_lines=11, workers=2,
                                max_memory="4G", spill_dir=tmp_path)
    assert two.equals(one)


# ---- WorkerGroup: processes that keep state between calls (the weight search's workers) ----
_KEPT: dict = {}


def _remember(item):
    """Worker k adds item's value to what it kept from earlier calls; 'boom' raises, 'die'
    kills the worker outright (as the OOM killer would)."""
    import os
    import signal
    k, value = item
    if value == "boom":
        raise ValueError("bad item")
    if value == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    _KEPT[k] = _KEPT.get(k, 0) + value
    return k, _KEPT[k], os.getpid()


def test_worker_group_keeps_state_and_ends_on_errors_and_deaths():
    import multiprocessing as mp
    from lmkit.errors import WorkerDiedError
    from lmkit.parallel import WorkerGroup
    with WorkerGroup(_remember, 2) as group:
        a = group.ask([(0, 1), (1, 10)])
        b = group.ask([(0, 2), (1, 20)])
        assert [x[:2] for x in a] == [(0, 1), (1, 10)] and [x[:2] for x in b] == [(0, 3), (1, 30)]
        assert [x[2] for x in a] == [x[2] for x in b]  # the same processes answered
        with pytest.raises(ValueError, match="bad item"):
            group.ask([(0, 1), (1, "boom")])
    assert _KEPT == {} and mp.active_children() == []  # the state lived in the workers
    with pytest.raises(WorkerDiedError, match=r"a search worker \(pid \d+\) was killed by signal 9"):
        with WorkerGroup(_remember, 2, what="a search worker") as group:
            group.ask([(0, "die"), (1, 1)])
    assert mp.active_children() == []
