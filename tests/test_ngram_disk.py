"""Disk-backed stages of the bounded n-gram build: the id stream, windows per bucket."""
import numpy as np

from lmkit.ngram import disk as ngram_disk
from lmkit.counts import count_buffer, flat_buffer
from lmkit.features import make_groups
from lmkit.ngram.disk import chunk_for, encode_to_disk, file_reader, load_windows, partition_windows

BOS, EOS = 1, 2


def test_encode_to_disk_writes_the_flat_buffer_and_the_history_histogram(tmp_path):
    n_ids, n_seq, n_tok, hist = encode_to_disk([[[5, 6]], [], [[7]]], BOS, EOS, tmp_path / "ids", 8)
    assert np.fromfile(tmp_path / "ids", dtype=np.int32).tolist() == [1, 5, 6, 2, 1, 7, 2]
    assert (n_ids, n_seq, n_tok) == (7, 2, 5)
    assert hist.tolist() == [0, 2, 0, 0, 0, 1, 1, 1]  # previous tokens: BOS, 5, 6, BOS, 7
    assert file_reader(tmp_path / "ids")(2, 5).tolist() == [6, 2, 1]


def test_bucket_windows_count_exactly_like_the_whole_buffer(tmp_path, monkeypatch):
    """Windows split over buckets and read in chunks smaller than a sequence: the counts of
    every bucket add up to the counts of the whole buffer, masked histories included."""
    monkeypatch.setattr(ngram_disk, "CHUNK_TOKENS", 5)
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(3, 9, size=rng.integers(0, 12))) for _ in range(40)]
    buf, pos, starts, n = flat_buffer([seqs], BOS, EOS, 1)
    groups, order, V = make_groups(0, 4), 4, 9
    want = count_buffer(buf, pos, starts, V, groups, n)
    edges = np.array([0, 4, 6, 9])
    paths = partition_windows(lambda lo, hi: buf[lo:hi], len(buf), order, BOS, edges, tmp_path, V)
    parts = [count_buffer(*load_windows(p, order, V), V, groups, 0) for p in paths]
    total = parts[0] + parts[1] + parts[2]
    total.n_sequences = n
    assert total.equals(want)
    first = load_windows(paths[0], order, V)[0].reshape(-1, order)
    assert first[0, :3].tolist() == [BOS] * 3  # the stream's first target: padded with BOS


def test_partition_reads_shrink_with_the_memory_budget():
    assert chunk_for(None) == chunk_for(10**12) == ngram_disk.CHUNK_TOKENS
    assert chunk_for(480 * 10**6) == 10**6  # a quarter of the budget at 120 bytes per id
    assert chunk_for(1000) == 1 << 16  # never below 64K ids
