"""One definition of a line (corpus module docstring, docs/lines.md): every verb and API that
reads text -- train, eval, score, spm-encode, generate --prompt-file, model.score,
model.perplexity, datasets, stdin and Python lists -- sees the same sequences and tokens."""
import io
import json
import math
import sys

import pytest

from lmkit import corpus
from lmkit.cli import main
from lmkit.corpus import load_corpus, numbered_sequences, read_lines, sequences
from lmkit.errors import InputError

# (raw line, its sequence or None): trailing whitespace of every kind, whitespace-only lines,
# line-like characters that are NOT line breaks, CRLF, leading whitespace kept
TRICKY = [
    ("The license text here.", "The license text here."),
    ("trailing spaces   ", "trailing spaces"),
    ("\u00a0\u00a0", None),                          # NBSP only
    ("a\u2028b line sep", "a\u2028b line sep"),       # U+2028 inside: text, not a break
    ("c\x85d nel", "c\x85d nel"),
    ("e\x0cf formfeed", "e\x0cf formfeed"),
    ("g\x0bh vtab", "g\x0bh vtab"),
    ("   ", None),
    ("\t", None),
    ("end line\r", "end line"),                      # CRLF
    ("x\u3000", "x"),                                 # ideographic space
    ("", None),
    ("  leading kept", "  leading kept"),
    ("mid\rcarriage return", "mid\rcarriage return"),
    ("\ufeffnot a BOM here", "\ufeffnot a BOM here"),  # U+FEFF is dropped only at the start
    ("last, no newline", "last, no newline"),
]
EXPECTED = [s for _, s in TRICKY if s is not None]
NUMBERS = [i for i, (_, s) in enumerate(TRICKY) if s is not None]
TEXT = "\n".join(raw for raw, _ in TRICKY)  # no final newline
DATA = b"\xef\xbb\xbf" + TEXT.encode("utf-8")  # a leading BOM: dropped once


@pytest.fixture
def tricky(tmp_path):
    p = tmp_path / "tricky.txt"
    p.write_bytes(DATA)
    return p


def test_the_rule_on_raw_lines():
    assert list(numbered_sequences([raw for raw, _ in TRICKY])) == list(zip(NUMBERS, EXPECTED))
    # a str holding "\n" is several lines; one trailing "\n" only ends it
    assert list(numbered_sequences(["a  ", " ", "b\nc\r\n"])) == [(0, "a"), (2, "b"), (3, "c")]
    assert list(sequences(["x\n", "y"])) == ["x", "y"]
    assert list(sequences(["x\n\n", "y"])) == ["x", "y"]  # "x\n\n" is "x" and a blank line
    assert list(numbered_sequences(["x\n\n", "y"])) == [(0, "x"), (2, "y")]


def test_no_text_is_one_error_everywhere():
    for blank in ([], [""], [" \t", "\u00a0\r\n", "\u3000"]):
        with pytest.raises(InputError, match=r"^src: no non-empty lines .*docs/lines.md"):
            list(sequences(blank, "src"))
        assert list(sequences(blank, None)) == []  # None: the caller decides
    with pytest.raises(InputError, match="not a single str"):
        list(sequences("abc"))
    with pytest.raises(InputError, match=r"lines\[1\] must be str, not bytes"):
        list(sequences(["a", b"b"]))


def test_read_lines_drops_one_leading_bom_and_splits_only_at_newline(tricky, tmp_path):
    assert [x.removesuffix("\n") for x in read_lines(tricky)] == [raw for raw, _ in TRICKY]
    twice = tmp_path / "twice.txt"
    twice.write_bytes(b"\xef\xbb\xbf\xef\xbb\xbfx\n")
    assert list(read_lines(twice)) == ["\ufeffx\n"]  # only the first BOM is the file's
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\n")
    with pytest.raises(InputError, match="bad.txt: bytes at offset 3 are not valid UTF-8"):
        list(read_lines(bad))


def test_every_source_yields_the_same_sequences(tricky, tmp_path, monkeypatch):
    assert list(load_corpus(input=[str(tricky)])) == EXPECTED
    assert list(sequences(read_lines(tricky))) == EXPECTED
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(DATA)))
    assert list(sequences(read_lines(None))) == EXPECTED
    # a Python list, read the ways users read a file (not str.splitlines: see docs/lines.md)
    text = DATA.decode("utf-8-sig")  # as open(F, encoding="utf-8-sig", newline="").read()
    assert list(sequences(text.split("\n"))) == EXPECTED
    assert list(sequences([text])) == EXPECTED  # the whole text as one str
    assert list(load_corpus(dataset=str(tricky))) == EXPECTED  # a local .txt: no `datasets`
    pytest.importorskip("datasets", reason="jsonl datasets need `pip install 'lmkit[hf]'`")
    rec = tmp_path / "rec.jsonl"
    rec.write_text(json.dumps({"text": text}) + "\n" + json.dumps({"text": " \n\t"}) + "\n")
    assert list(load_corpus(dataset=str(rec))) == EXPECTED  # records split on "\n"


def test_every_verb_agrees_on_lines_and_tokens(tricky, tmp_path, tiny_model, tiny_model_dir,
                                               tiny_tok_file, tiny_corpus_file, capsys):
    tok = tiny_model.tokenizer
    ids = [tok.encode(s) for s in EXPECTED]
    n_tok = sum(len(x) + 1 for x in ids)  # + EOS per sequence
    n_bytes = sum(len(s.encode("utf-8")) + 1 for s in EXPECTED)
    nll = -sum(float(tiny_model.log_proba(s).sum()) for s in EXPECTED)

    # eval (corpus route) and the Python API on a list
    from lmkit.evaluate import evaluate
    r = evaluate(tiny_model, input=[str(tricky)])
    assert (r["sequences"], r["tokens"], r["bytes"]) == (len(EXPECTED), n_tok, n_bytes)
    assert r["nll_nats"] == pytest.approx(nll, rel=1e-9)
    for lines in ([raw for raw, _ in TRICKY], list(read_lines(tricky))):
        api = tiny_model.score(lines)
        assert {k: api[k] for k in ("sequences", "tokens", "bytes")} == \
            {k: r[k] for k in ("sequences", "tokens", "bytes")}
        assert api["nll_nats"] == pytest.approx(r["nll_nats"], rel=1e-9)
        assert tiny_model.perplexity(lines) == pytest.approx(r["perplexity"], rel=1e-9)

    # lmkit eval and lmkit score, both CLI
    capsys.readouterr()
    assert main(["eval", tiny_model_dir, "--input", str(tricky), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert (cli["sequences"], cli["tokens"]) == (len(EXPECTED), n_tok)
    out = tmp_path / "s.jsonl"
    assert main(["score", tiny_model_dir, "--input", str(tricky), "--output", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["index"] for x in rows] == NUMBERS  # blank lines: no row, index = line number
    assert [x["tokens"] for x in rows] == [len(x) + 1 for x in ids]
    assert sum(x["nll_nats"] for x in rows) == pytest.approx(nll, rel=1e-9)

    # spm-encode from the file and from stdin: one output line per sequence, the same ids
    enc = tmp_path / "ids.txt"
    assert main(["spm-encode", "--model", tiny_model_dir, "--input", str(tricky),
                 "--output", str(enc)]) == 0
    assert [[int(i) for i in x.split()] for x in enc.read_text().split("\n")[:-1]] == ids

    # generate --prompt-file: the prompts are the sequences (max 0 tokens: the prompt back)
    capsys.readouterr()
    assert main(["generate", tiny_model_dir, "--prompt-file", str(tricky), "--max-tokens", "0",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == EXPECTED

    # train: the manifest counts the same sequences and tokens
    from lmkit.train import train
    m = train(input=[str(tricky)], tokenizer=str(tiny_tok_file), context=1, lambda_tokens=50)
    assert (m.corpus["sequences"], m.corpus["tokens"]) == (len(EXPECTED), n_tok)


def test_spm_encode_reads_stdin_by_the_same_rule(tricky, tiny_model_dir, tiny_model):
    import subprocess
    p = subprocess.run([sys.executable, "-m", "lmkit.cli", "spm-encode", "--model",
                        str(tiny_model_dir), "--output-format", "piece"], input=DATA,
                       capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    got = p.stdout.decode("utf-8").split("\n")[:-1]
    tok = tiny_model.tokenizer
    assert [tok.decode_pieces(x.split()) for x in got] == EXPECTED


def test_whitespace_only_input_is_the_same_error_for_every_verb(tmp_path, tiny_model,
                                                                 tiny_model_dir, capsys):
    blank = tmp_path / "blank.txt"
    blank.write_text("\u00a0\n\u2028\n\x85\n\x0c\n\x0b\n\u3000\n \t \n\r\n", encoding="utf-8")
    # U+2028 and U+0085 are not line breaks, but they are whitespace: these lines are blank too
    capsys.readouterr()
    for argv in (["eval", tiny_model_dir, "--input", blank],
                 ["score", tiny_model_dir, "--input", blank, "--output", tmp_path / "o.jsonl"],
                 ["spm-encode", "--model", tiny_model_dir, "--input", blank],
                 ["generate", tiny_model_dir, "--prompt-file", blank],
                 ["train", "--input", blank, "--output", tmp_path / "m"]):
        assert main([str(x) for x in argv]) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "blank.txt: no non-empty lines" in err, (argv, err)
    assert not (tmp_path / "o.jsonl").exists() and not (tmp_path / "m").exists()
    with pytest.raises(InputError, match="no non-empty lines"):
        tiny_model.score(blank.read_text().split("\n"))


def test_score_documents_are_separated_by_blank_lines_of_any_kind(tmp_path, tiny_model_dir,
                                                                 tiny_model):
    p = tmp_path / "docs.txt"
    p.write_text("a b\n  \nc\n\u00a0\r\nd e\nf\n")
    out = tmp_path / "d.jsonl"
    assert main(["score", tiny_model_dir, "--input", str(p), "--unit", "document",
                 "--output", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    want = [["a b"], ["c"], ["d e", "f"]]
    for r, doc in zip(rows, want):
        lp = [tiny_model.log_proba(x) for x in doc]
        assert r["tokens"] == sum(len(x) for x in lp)
        assert r["nll_nats"] == pytest.approx(-sum(float(x.sum()) for x in lp), rel=1e-9)
        assert math.isfinite(r["perplexity"])


def test_jsonl_records_follow_the_rule(tmp_path, tiny_model_dir):
    p = tmp_path / "r.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in [
        {"id": "a", "text": "one  \n \ntwo\r"}, {"id": "b", "text": " \t"}]) + "\n")
    out = tmp_path / "o.jsonl"
    assert main(["score", tiny_model_dir, "--input", str(p), "--format", "jsonl", "--id-field",
                 "id", "--output", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [(r["id"], r["line"]) for r in rows] == [("a", 0), ("a", 2)]
    assert main(["score", tiny_model_dir, "--input", str(p), "--format", "jsonl", "--id-field",
                 "id", "--unit", "document", "--output", str(out)]) == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "b"] and rows[1]["tokens"] == 1  # EOS only


def test_shakespeare_is_read_as_before(shakespeare_texts):
    """The rule is the one the default corpus was always read with: its pinned statistics and
    hashes (and so the README's perplexities) do not move."""
    for split in ("test", "valid"):
        c = load_corpus(corpus="shakespeare", split=split)
        stats = c.stats()
        assert stats == corpus.EXPECTED_STATS[split]
        assert c.sha256() == corpus.EXPECTED_SHA256[split]


def test_piece_escapes_round_trip_every_control_character():
    """spm-encode --output-format piece writes pieces with \\\\, \\t, \\n, \\r and \\uXXXX escaped;
    spm-decode reads them back: each escape maps to exactly its character."""
    from lmkit.tokenizer import escape_piece, unescape_piece
    assert unescape_piece("a\\nb\\rc\\td\\\\e\\u00a0f") == "a\nb\rc\td\\e\u00a0f"
    for text in ("\n", "\r", "\t", "\\", "x\r\ny", "\u2028\x85\x0b\x0c", "\u00a0\u3000"):
        assert unescape_piece(escape_piece(text)) == text
        assert not any(c.isspace() for c in escape_piece(text))
    with pytest.raises(InputError, match="a backslash must start"):
        unescape_piece("\\q")
