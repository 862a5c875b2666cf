import pathlib
import random
import unicodedata

import pytest

from lmkit.errors import InputError, MissingPathError
from lmkit.tokenizer import Tokenizer, escape_piece, unescape_piece

SYLLABLES = ["th", "e", "an", "d", "o", "f", "lo", "ve", "ki", "ng", "qu", "ee", "n", "ha", "st",
             "ro", "mi", "se", "pa", "ri", "s", "to", "we", "al", "ur"]


def tiny_corpus(n_lines=400, seed=0):
    """Deterministic pseudo-English lines: syllable words, punctuation, runs of spaces."""
    rng = random.Random(seed)
    words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(120)]
    lines = []
    for _ in range(n_lines):
        line = " ".join(rng.choice(words) for _ in range(rng.randint(1, 12)))
        indent, end = rng.choice(["", "  ", "\t"]), rng.choice(".,!?")
        lines.append(indent + line.capitalize() + end)
    return lines


CORPUS = tiny_corpus()
VOCAB = 400

HARD_CASES = [
    "", " ", "  ", "   leading", "trailing   ", "a  b   c", "\t", "tab\there\t", " \t \t ",
    "emoji 🎉👍🏽👨‍👩‍👧 ok", "日本語のテキスト", "한국어", "中文，标点。", "e\u0301\u0302 combining",
    unicodedata.normalize("NFC", "café naïve Å"), unicodedata.normalize("NFD", "café naïve Å"),
    "\x00\x01\x07\x1b[31m\x7f", "\r", "cr\rlf", "\x85\u2028\u2029", "\u200b\u200d\ufeff",
    "\u00a0nbsp\u3000ideographic", "ﬁ ① Ａ ㍿", "▁", "▁▁ a▁b ▁", " ▁ ", "<s></s><unk><0x41>",
    "\ufffd\uffff\U0010ffff\ue000", "مرحبا עברית", "𝕳𝖊𝖑𝖑𝖔", "a\nb", "\n\n",
]

RANGES = [(0x00, 0x7F), (0x80, 0xFF), (0x100, 0x24F), (0x300, 0x36F), (0x370, 0x4FF),
          (0x590, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F), (0x2000, 0x206F), (0x2580, 0x259F),
          (0x3000, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0xE000, 0xF8FF), (0xFE00, 0xFFFF),
          (0x1F300, 0x1FAFF), (0x10000, 0x10FFFF)]


def random_strings(n, seed=0):
    """Seeded random strings drawn from many Unicode ranges (no lone surrogates)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.randint(0, 40)):
            if rng.random() < 0.3:
                chars.append(rng.choice(" \t  abcxyz▁\u0301"))
            else:
                lo, hi = rng.choice(RANGES)
                c = rng.randint(lo, hi)
                chars.append(chr(c) if not 0xD800 <= c <= 0xDFFF else "?")
        out.append("".join(chars))
    return out


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(CORPUS, vocab_size=VOCAB)


def assert_round_trip(tok, texts):
    for text, ids in zip(texts, tok.encode_batch(texts)):
        assert ids == tok.encode(text)
        assert all(0 <= i < tok.vocab_size and i != tok.unk_id for i in ids), text
        assert tok.decode(ids) == text, text
        assert tok.decode_pieces(tok.encode_pieces(text)) == text


def test_fixed_ids_and_options(tok):
    assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.vocab_size == VOCAB
    assert tok.id_to_piece(1) == "<s>" and tok.piece_to_id("</s>") == 2
    assert tok.id_to_piece(3) == "<0x00>"
    assert tok.options == {"vocab_size": VOCAB, "model_type": "bpe", "seed": 0,
                           "input_sentence_size": 2_000_000, "normalization": "identity"}
    assert len(tok.sha256) == 64


def test_round_trip_corpus_and_hard_cases(tok):
    assert_round_trip(tok, CORPUS)
    assert_round_trip(tok, HARD_CASES)


def test_round_trip_random_unicode(tok):
    assert_round_trip(tok, random_strings(500))


def test_learned_pieces_are_used(tok):
    n_ids = sum(map(len, tok.encode_batch(CORPUS)))
    assert n_ids < 0.5 * sum(len(line.encode("utf-8")) for line in CORPUS)


def test_bos_eos_decode_to_nothing(tok):
    assert tok.decode([tok.bos_id, *tok.encode("a b"), tok.eos_id]) == "a b"


def test_encode_batch_empty_list(tok):
    assert tok.encode_batch([]) == []


def test_training_is_deterministic():
    a = Tokenizer.train(CORPUS, vocab_size=VOCAB, seed=3)
    b = Tokenizer.train(iter(CORPUS), vocab_size=VOCAB, seed=3)
    assert a.model_proto == b.model_proto and a.sha256 == b.sha256


def test_sampled_training_is_seeded():
    big = tiny_corpus(2000, seed=1)
    a, b, c = (Tokenizer.train(big, vocab_size=VOCAB, seed=s, input_sentence_size=100)
               for s in (5, 5, 6))
    assert a.model_proto == b.model_proto
    assert a.model_proto != c.model_proto


def test_vocab_too_large_names_maximum():
    with pytest.raises(InputError, match=r"supports at most (\d+); pass vocab_size \1 or less"):
        Tokenizer.train(CORPUS, vocab_size=100_000)
    with pytest.raises(InputError, match=r"at most \d+"):
        Tokenizer.train(CORPUS, vocab_size=100_000, model_type="unigram")


def test_vocab_too_small():
    with pytest.raises(InputError, match=r"vocab_size 100 is too small: the minimum is 260"):
        Tokenizer.train(CORPUS, vocab_size=100)
    needed = 259 + len(set("".join(CORPUS)))  # bytes + specials + distinct characters
    fix = rf"needs at least {needed} .*; pass vocab_size {needed} or more"
    with pytest.raises(InputError, match=fix):
        Tokenizer.train(CORPUS, vocab_size=needed - 1)


def test_empty_corpus():
    with pytest.raises(InputError, match="no non-empty lines"):
        Tokenizer.train([])
    with pytest.raises(InputError, match="no non-empty lines"):
        Tokenizer.train(["", ""])


def test_bad_model_type():
    with pytest.raises(InputError, match="model_type 'word'"):
        Tokenizer.train(CORPUS, model_type="word")


def test_overlong_line_does_not_break_training():
    long_line = "thee " * 40_000 + "日本" * 20_000  # 200k+ bytes, over the 64 KiB limit
    tok = Tokenizer.train(CORPUS + [long_line], vocab_size=VOCAB)
    assert tok.decode(tok.encode(long_line)) == long_line


def test_unigram(tok):
    uni = Tokenizer.train(CORPUS, vocab_size=VOCAB, model_type="unigram")
    assert uni.options["model_type"] == "unigram"
    assert uni.model_proto != tok.model_proto
    assert_round_trip(uni, CORPUS[:50] + HARD_CASES + random_strings(100, seed=1))


def test_save_load_round_trip(tok, tmp_path):
    path = tok.save(tmp_path / "sub" / "tok")
    assert path == tmp_path / "sub" / "tok.model"
    vocab_lines = (tmp_path / "sub" / "tok.vocab").read_text(encoding="utf-8").split("\n")
    assert vocab_lines[:2] == ["<unk>\t0", "<s>\t0"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["tok.model", "tok.vocab"]
    loaded = Tokenizer.load(path)
    assert loaded.model_proto == tok.model_proto and loaded.sha256 == tok.sha256
    assert loaded.options == {"vocab_size": VOCAB, "model_type": "bpe", "seed": None,
                              "input_sentence_size": None, "normalization": "identity"}
    assert loaded.encode_batch(HARD_CASES) == tok.encode_batch(HARD_CASES)
    assert tok.save(tmp_path / "again.model") == tmp_path / "again.model"


def test_load_missing(tmp_path):
    with pytest.raises(MissingPathError, match="nope.model: no such tokenizer model file"):
        Tokenizer.load(tmp_path / "nope.model")


def test_load_not_a_model(tmp_path):
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"this is not a protobuf \xff\xfe")
    with pytest.raises(InputError, match=r"bad.model: not a SentencePiece model \(.*\); pass the "
                                         r"\.model file written by `lmkit spm-train`"):
        Tokenizer.load(bad)
    bad.write_bytes(b"")
    with pytest.raises(InputError, match=r"not a SentencePiece model \(unk is not defined\)"):
        Tokenizer.load(bad)


def test_decode_bad_id(tok):
    with pytest.raises(InputError, match=rf"token id {VOCAB} is outside \[0, {VOCAB}\)"):
        tok.decode([5, VOCAB])
    with pytest.raises(InputError, match=r"token id -1"):
        tok.decode([-1])
    with pytest.raises(InputError, match=r"token id 99999"):
        tok.id_to_piece(99999)


def test_unknown_piece(tok):
    with pytest.raises(InputError, match="piece 'no-such-piece' is not in"):
        tok.decode_pieces(["▁", "no-such-piece"])
    assert tok.piece_to_id("<unk>") == 0


def test_round_trip_default_corpus(shakespeare_texts):
    lines = [line for f in shakespeare_texts
             for line in pathlib.Path(f).read_text(encoding="utf-8").split("\n")]
    tok = Tokenizer.train(lines, vocab_size=4096)
    bad = [line for line, ids in zip(lines, tok.encode_batch(lines)) if tok.decode(ids) != line]
    assert bad == []


def test_piece_format_round_trips_whitespace_pieces():
    """Pieces holding tab, NBSP, U+3000 or a backslash survive " ".join + str.split()."""
    weird = ["a\tb\u00a0c\u3000d \\ e\\t", "x\u2028y\x0bz\u00a0\u00a0w", "\\u00a0 \t\t"] * 30
    tok = Tokenizer.train(weird + ["plain text line"] * 10, vocab_size=300)
    pieces = {tok.id_to_piece(i) for i in range(tok.vocab_size)}
    assert {"\t", "\u00a0", "\u3000", "\\"} <= {c for p in pieces for c in p}  # really in pieces
    for text in weird[:3] + ["\u00a0\\\\n end"]:
        line = " ".join(tok.encode_pieces(text))
        assert "\t" not in line and "\u00a0" not in line and "\u3000" not in line
        assert tok.decode_pieces(line.split()) == text
    assert escape_piece("a\u00a0b\\") == "a\\u00a0b\\\\" and unescape_piece("a\\u00a0b\\\\") == "a\u00a0b\\"
    with pytest.raises(InputError, match=r"a backslash must start"):
        tok.decode_pieces(["a\\q"])


def test_lone_surrogate_is_an_input_error(tok):
    with pytest.raises(InputError, match=r"text: character 1 is a lone surrogate"):
        tok.encode("a\ud800")
    with pytest.raises(InputError, match=r"lines\[1\]: character 0 is a lone surrogate"):
        tok.encode_batch(["ok", "\udfff"])
