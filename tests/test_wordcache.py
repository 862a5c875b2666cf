"""The compiled unit cache (lmkit/wordcache.py) gives exactly SentencePiece's ids."""
import numpy as np
import pytest

from lmkit import wordcache
from lmkit.corpus import load_corpus
from lmkit.tokenizer import Tokenizer

from test_tokenizer import CORPUS, HARD_CASES, random_strings

pytest.importorskip("numba")

# odd text: runs of spaces and tabs, a literal "▁" beside spaces, bytes the vocabulary lacks,
# space-only and empty lines (no "\n": lines never hold one)
ODD = [x for x in HARD_CASES if "\n" not in x] + [
    "  Thee  thy   thou\tthe    ", "▁ ▁▁  a▁  ▁b", "x" * 3000, "a " * 500, " " * 17, "",
    "The  the   THE", "e\u0301 e\u0301  \u0301", "🎉 🎉  🎉🎉", "\u2581" * 5 + " " * 5]


def flat(tok, lines, compiled):
    ids, lengths = tok.encode_flat(lines, num_threads=1, compiled=compiled)
    assert ids.dtype == np.int32 and lengths.dtype == np.int64 and len(lengths) == len(lines)
    ends = np.cumsum(lengths)
    return [ids[a:b].tolist() for a, b in zip(ends - lengths, ends)]


@pytest.fixture(scope="module")
def bpe():
    return Tokenizer.train(CORPUS + ODD * 3, vocab_size=420, model_type="bpe")


def test_decomposable_bpe_is_cached(bpe):
    assert bpe._unit_cache(True)  # lmkit's BPE settings qualify
    assert any(set(bpe._sp.id_to_piece(i)) == {"\u2581"} and len(bpe._sp.id_to_piece(i)) > 1
               for i in range(bpe.vocab_size)), "the model should have space-run pieces"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_ids_as_sentencepiece(bpe, seed):
    lines = ODD + random_strings(400, seed) + CORPUS[:200]
    rng = np.random.default_rng(seed)
    lines = [lines[i] for i in rng.permutation(len(lines))]
    want = bpe.encode_batch(lines, num_threads=1)
    assert flat(bpe, lines, True) == want
    assert flat(bpe, lines, True) == want  # again, every unit from the cache
    assert flat(bpe, lines[::-1], True) == want[::-1]
    assert flat(bpe, lines, False) == want


def test_real_text_and_a_cache_that_fills(bpe, monkeypatch):
    lines = list(load_corpus(split="test"))[:3000]
    tok = Tokenizer.train(list(load_corpus(split="train"))[:5000], vocab_size=600)
    want = tok.encode_batch(lines, num_threads=1)
    monkeypatch.setattr(wordcache, "MAX_UNITS", 4096)  # emptied several times on the way
    got = []
    for i in range(0, len(lines), 500):
        got += flat(tok, lines[i:i + 500], True)
        assert tok._units.n_units <= 4096
    assert got == want


def test_batches_it_does_not_take(bpe):
    # a line holding "\n" (the cache counts lines by it) and a lone surrogate go the plain way
    assert flat(bpe, ["a\nb", "c d"], True) == bpe.encode_batch(["a\nb", "c d"])
    assert bpe._units.encode(["a\nb"]) is None
    with pytest.raises(Exception):
        bpe.encode_flat(["ok", "bad \ud800"], compiled=True)


def test_unigram_is_not_decomposed():
    tok = Tokenizer.train(CORPUS, vocab_size=420, model_type="unigram")
    assert not tok._unit_cache(True)
    lines = ODD + CORPUS[:50]
    assert flat(tok, lines, True) == tok.encode_batch(lines)


def test_decomposable_rules():
    pieces = [("\u2581the", 1), ("\u2581\u2581", 1), ("ab", 1), ("<0x41>", 6)]
    norm = {1: b"identity", 3: 0, 4: 0}
    assert wordcache.decomposable(pieces, norm, {3: 2})
    assert not wordcache.decomposable(pieces, norm, {3: 1})  # unigram
    assert not wordcache.decomposable(pieces + [("a\u2581b", 1)], norm, {3: 2})
    assert not wordcache.decomposable(pieces + [("\u2581a\u2581", 1)], norm, {3: 2})
    assert not wordcache.decomposable(pieces + [("x", 4)], norm, {3: 2})  # user-defined
    assert not wordcache.decomposable(pieces, {**norm, 1: b"nmt_nfkc"}, {3: 2})
    assert not wordcache.decomposable(pieces, {**norm, 3: 1}, {3: 2})  # dummy prefix
    assert not wordcache.decomposable(pieces, {1: b"identity", 3: 0}, {3: 2})  # removes spaces
    assert not wordcache.decomposable(pieces, {**norm, 5: 0}, {3: 2})  # spaces not escaped
    assert not wordcache.decomposable(pieces, norm, {3: 2, 24: 1})  # whitespace as suffix


def test_a_pickled_tokenizer_leaves_its_cache(bpe):
    import pickle
    bpe.encode_flat(["a b"], compiled=True)
    copy = pickle.loads(pickle.dumps(bpe))
    assert copy._units is None and bpe._units
    assert flat(copy, ODD, True) == bpe.encode_batch(ODD)


@pytest.mark.parametrize("cached", [False, True], ids=["in-process", "object-cache"])
def test_native_passes_give_the_same_ids(bpe, cached, monkeypatch, tmp_path):
    """The passes compiled by numba in this process, or written to the object cache, dropped
    and loaded back by llvmlite (what a fresh process runs): SentencePiece's ids either way."""
    from lmkit import native
    monkeypatch.setenv("LMKIT_NATIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_KERNELS", {})
    monkeypatch.setattr(native, "USE_CACHE", cached)
    monkeypatch.setattr(bpe, "_units", None)
    lines = ODD + random_strings(300, 4) + CORPUS[:100]
    want = bpe.encode_batch(lines, num_threads=1)
    assert flat(bpe, lines, True) == want
    assert len(list((tmp_path / "cache").glob("wordcache.*.o"))) == (3 if cached else 0)
    if cached:
        monkeypatch.setattr(native, "_KERNELS", {})
        monkeypatch.setattr(bpe, "_units", None)
        assert all(native.kernel("wordcache", n).from_file
                   for n in ("lookup", "rehash", "gather"))
        assert flat(bpe, lines, True) == want and flat(bpe, lines[::-1], True) == want[::-1]


@pytest.mark.parametrize("seed", [0, 1])
def test_new_units_are_decoded_as_one_by_one(seed):
    """``_texts`` (one decode of the new units joined by newlines) gives each unit's own decode:
    multi-byte characters, empty units, a range that starts part way through the arena."""
    rng = np.random.default_rng(seed)
    units = ["", " a", "éé", "  \U0001F600x", "\u2581b", "\t", "z" * 300, ""]
    units += ["".join(chr(int(c)) for c in rng.integers(32, 0x2FFF, rng.integers(0, 9)))
              .replace("\n", " ") for _ in range(200)]
    data = [u.encode("utf-8") for u in units]
    arena = np.frombuffer(b"".join(data), dtype=np.uint8)
    aoff = np.concatenate([[0], np.cumsum([len(d) for d in data])]).astype(np.int64)
    for n0, n1 in [(0, len(units)), (3, 7), (5, 5), (len(units) - 1, len(units))]:
        assert wordcache._texts(arena, aoff, n0, n1) == units[n0:n1]
