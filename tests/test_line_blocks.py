"""Block reading of plain text (corpus.numbered_sequence_blocks, docscore._line_chunks) gives
the pairs, errors and chunks of the line-by-line reader."""
import random

import pytest

from lmkit import docscore
from lmkit.corpus import file_lines, numbered_sequence_blocks, numbered_sequences
from lmkit.errors import InputError

ODD = ["\ufeffBOM first", "plain", "", "   ", "trail  \t", "crlf\r", "a\rb", "\x85x\u2028y\x85",
       "\u3000\u00a0", "\t lead", "emoji 🎉", "\ufeffmid BOM", "\x0cff\x0b", "last"]


def write(path, text, newline_end=True):
    path.write_bytes(text.encode("utf-8") + (b"\n" if newline_end else b""))
    return path


def reference(paths, source="src"):
    return list(numbered_sequences((x for p in paths for x in file_lines(p)), source))


def blocks(paths, block, source="src"):
    return [pair for nums, seqs in numbered_sequence_blocks(paths, source, block)
            for pair in zip(nums, seqs)]


@pytest.mark.parametrize("block", [1, 2, 3, 5, 17, 64, 1 << 20])
def test_same_pairs_as_the_line_reader(tmp_path, block):
    rng = random.Random(block)
    lines = [rng.choice(ODD) for _ in range(300)]
    a = write(tmp_path / "a.txt", "\n".join(lines), newline_end=False)  # last line: no "\n"
    b = write(tmp_path / "b.txt", "\ufeff" + "\n".join(lines[::-1]))
    c = write(tmp_path / "c.txt", "\n\n  \n", newline_end=False)  # blank only
    d = tmp_path / "d.txt"
    d.write_bytes(b"")
    for paths in ([a], [b], [a, b], [c, a, d, b], [a, c]):
        assert blocks(paths, block) == reference(paths)


def test_errors_are_the_line_readers(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes("ok line\nsecond é\n".encode() + b"caf\xe9 latin1\nafter\n")
    with pytest.raises(InputError) as want:
        reference([bad])
    for block in (4, 1 << 20):
        with pytest.raises(InputError) as got:
            blocks([bad], block)
        assert str(got.value) == str(want.value) and "offset 21" in str(got.value)
    blank = write(tmp_path / "blank.txt", "\n \n\t")
    with pytest.raises(InputError, match="src: no non-empty lines"):
        blocks([blank], 3)
    assert blocks([blank], 3, source=None) == []


def old_line_chunks(paths, max_units, max_chars):
    """docscore._line_chunks before the block reader (line by line), for comparison."""
    it = docscore._text_lines(paths)
    while True:
        lines, numbers, chars = [], [], 0
        for n, line in it:
            lines.append(line)
            numbers.append(n)
            chars += len(line)
            if len(lines) >= max_units or chars >= max_chars:
                break
        if not lines:
            return
        yield docscore.Chunk(lines, numbers=numbers)


@pytest.mark.parametrize("max_units,max_chars", [(1, 10**9), (3, 10**9), (7, 25), (1000, 1),
                                                 (50, 400), (2048, 10**6)])
def test_chunks_cut_where_they_did(tmp_path, max_units, max_chars):
    rng = random.Random(max_units)
    text = "\n".join(rng.choice(ODD) * rng.randint(1, 9) for _ in range(2000))
    paths = [str(write(tmp_path / "x.txt", text)), str(write(tmp_path / "y.txt", text[::-1]))]
    assert (list(docscore._line_chunks(paths, max_units, max_chars))
            == list(old_line_chunks(paths, max_units, max_chars)))


def test_a_file_corpus_iterates_the_line_readers_sequences(tmp_path):
    """``load_corpus(input=...)`` iterates by blocks: the sequences (and the hash and stats in
    a model's manifest) of the line-by-line reader; a blank-only input is the same error."""
    from lmkit.corpus import load_corpus, sequences
    rng = random.Random(3)
    lines = [rng.choice(ODD) for _ in range(2000)]
    folder = tmp_path / "text"
    folder.mkdir()
    write(folder / "a.txt", "\n".join(lines), newline_end=False)
    write(folder / "b.txt", "\ufeff" + "\n".join(lines[::-1]))
    for path in (folder / "a.txt", folder):
        corpus = load_corpus(input=str(path))
        want = list(sequences(x for p in corpus.files for x in file_lines(p)))
        assert list(corpus) == want and len(want) > 1000
        assert corpus.stats()["lines"] == len(want)
    write(tmp_path / "blank.txt", "\n  \n\t")
    with pytest.raises(InputError, match="no non-empty lines"):
        list(load_corpus(input=str(tmp_path / "blank.txt")))
