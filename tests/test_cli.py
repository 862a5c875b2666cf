import io
import os
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from lmkit.cli import main

EVAL_KEYS = ["sequences", "tokens", "bytes", "nll_nats", "perplexity", "bits_per_byte"]


def run(capsys, *argv, stdin=None, monkeypatch=None):
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin.encode("utf-8"))))
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, out, err, match):
    import re
    assert code == 2, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("lmkit: error: ") and "Traceback" not in err
    assert re.search(match, lines[-1]), lines[-1]


def test_end_to_end(tmp_path, tiny_corpus_file, tiny_lines, capsys, monkeypatch):
    code, out, _ = run(capsys, "tokenizer", "train", "--input", tiny_corpus_file,
                       "--vocab-size", 300, "--output", tmp_path / "tok")
    assert code == 0 and "vocab 300" in out and (tmp_path / "tok.model").is_file()

    text = "\n".join(tiny_lines[:5] + ["  odd   spacing\tand 日本 🎉", ""]) + "\n"
    code, ids, _ = run(capsys, "tokenize", "encode", "--model", tmp_path / "tok.model",
                       stdin=text, monkeypatch=monkeypatch)
    # one output line per sequence: the blank line is no sequence (docs/lines.md)
    assert code == 0 and len(ids.splitlines()) == 6
    assert all(x.isdigit() for x in ids.split())
    code, back, _ = run(capsys, "tokenize", "decode", "--model", tmp_path / "tok.model",
                        stdin=ids, monkeypatch=monkeypatch)
    text = text.removesuffix("\n")  # the sequences, one per line
    assert code == 0 and back == text
    code, pieces, _ = run(capsys, "tokenize", "encode", "--model", tmp_path / "tok.model",
                          "--output-format", "piece", stdin=text, monkeypatch=monkeypatch)
    code, back, _ = run(capsys, "tokenize", "decode", "--model", tmp_path / "tok.model",
                        "--input-format", "piece", stdin=pieces, monkeypatch=monkeypatch)
    assert code == 0 and back == text

    model = tmp_path / "new" / "deeper" / "model"  # parents do not exist yet
    code, out, err = run(capsys, "train", "--input", tiny_corpus_file, "--tokenizer",
                         tmp_path / "tok.model", "--context", 2, "--lambda-tokens", 2000,
                         "--output", model)
    assert code == 0 and out.startswith(f"wrote {model}") and "[4/4]" in err
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["command"].startswith("lmkit train --input")

    code, out, _ = run(capsys, "eval", model, "--input", tiny_corpus_file, "--json")
    r = json.loads(out)
    assert code == 0 and sorted(r) == sorted(EVAL_KEYS) and r["sequences"] == len(tiny_lines)
    code, out, _ = run(capsys, "eval", model, "--input", tiny_corpus_file)
    assert code == 0 and out.startswith(f"sequences {len(tiny_lines)}  tokens {r['tokens']}")

    code, out, _ = run(capsys, "generate", model, "--prompt", "Ki", "--max-tokens", 12,
                       "--seed", 3, "--num-samples", 2, "--json")
    samples = json.loads(out)
    assert code == 0 and len(samples) == 2 and all(s.startswith("Ki") for s in samples)
    code, again, _ = run(capsys, "generate", model, "--prompt", "Ki", "--max-tokens", 12,
                         "--seed", 3, "--num-samples", 2, "--json")
    assert again == out
    code, out, _ = run(capsys, "generate", model, "--prompt", "ü 日本", "--max-tokens", 5)
    assert code == 0 and out.startswith("ü 日本")

    code, out, _ = run(capsys, "inspect", model, "--token", "e", "--top", 3, "--json")
    res = json.loads(out)
    assert code == 0 and list(res) == ["window1", "window2"] and len(res["window1"]) <= 3
    code, out, _ = run(capsys, "inspect", model, "--token", "e", "--top", 3)
    assert code == 0 and out.startswith("window1: ")


def test_subprocess_exit_code_and_no_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "lmkit.cli", "eval", str(tmp_path / "nope"), "--json"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stdout == ""
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [
        f"lmkit: error: {tmp_path / 'nope'}: no such model folder; train one with "
        f"`lmkit train --output {tmp_path / 'nope'}`"]


# ---- bad inputs: one line on stderr, exit code 2 -----------------------------------------------
@pytest.fixture
def bad_inputs(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "blank.txt").write_bytes(b"\n   \n\t\n\n")
    (tmp_path / "latin1.txt").write_bytes(b"hello\nab\xe9cd\n")
    (tmp_path / "notext").mkdir()
    (tmp_path / "notext" / "readme.md").write_text("hi")
    return tmp_path


@pytest.mark.parametrize("argv, match", [
    (["--input", "{d}/missing.txt"], r"missing.txt: no such file or folder; check the path"),
    (["--input", "{d}/notext"], r"notext: folder has no .txt files; add some"),
    (["--input", "{d}/empty.txt"], r"empty.txt: no non-empty lines"),
    (["--input", "{d}/blank.txt"], r"blank.txt: no non-empty lines"),
    (["--input", "{d}/latin1.txt"], r"latin1.txt: bytes at offset 8 are not valid UTF-8; re-encode"),
    (["--input", "{corpus}", "--vocab-size", "5000"],
     r"--vocab-size 5000 is too large for this text: it supports at most \d+; pass --vocab-size"),
    (["--input", "{corpus}", "--context", "0"], r"--context 0 without --order leaves no features"),
    (["--input", "{corpus}", "--context", "-2"], r"--context must be >= 0, got -2"),
])
def test_train_bad_inputs(bad_inputs, tiny_corpus_file, capsys, argv, match):
    argv = [a.format(d=bad_inputs, corpus=tiny_corpus_file) for a in argv]
    code, out, err = run(capsys, "train", *argv, "--output", bad_inputs / "model")
    assert_user_error(code, out, err, match)
    assert not (bad_inputs / "model").exists()


def test_tokenizer_train_bad_inputs(bad_inputs, capsys):
    code, out, err = run(capsys, "tokenizer", "train", "--input", bad_inputs / "latin1.txt",
                         "--output", bad_inputs / "tok")
    assert_user_error(code, out, err, r"latin1.txt: bytes at offset 8 are not valid UTF-8")


def test_tokenize_bad_stdin(tiny_tok_file, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"ok\n\xff\xfe\n")))
    code, out, err = run(capsys, "tokenize", "encode", "--model", tiny_tok_file)
    assert_user_error(code, out, err, r"stdin: bytes at offset 3 are not valid UTF-8")


@pytest.mark.parametrize("flag, value, match", [
    ("--temperature", "-1", r"--temperature must be >= 0.0, got -1.0"),
    ("--temperature", "inf", r"--temperature must be a finite number, got inf"),
    ("--top-p", "0", r"--top-p must be > 0.0, got 0.0"),
    ("--top-p", "1.5", r"--top-p must be <= 1.0, got 1.5"),
    ("--seed", "-1", r"--seed must be >= 0, got -1"),
    ("--top-k", "-1", r"--top-k must be >= 0"),
    ("--max-tokens", "-1", r"--max-tokens must be >= 0, got -1"),
])
def test_generate_bad_options(tiny_model_dir, capsys, flag, value, match):
    code, out, err = run(capsys, "generate", tiny_model_dir, flag, value)
    assert_user_error(code, out, err, match)


def break_model(kind, d):
    if kind == "missing":
        shutil.rmtree(d)
    elif kind == "corrupt":
        (d / "manifest.json").write_text("{oops")
    elif kind == "truncated":
        blob = (d / "params.npz").read_bytes()
        (d / "params.npz").write_bytes(blob[:100])
    elif kind == "version":
        m = json.loads((d / "manifest.json").read_text())
        (d / "manifest.json").write_text(json.dumps(dict(m, version=99)))
    elif kind == "tokenizer":
        from lmkit.tokenizer import Tokenizer
        from conftest import make_lines
        other = Tokenizer.train(make_lines(), vocab_size=300, model_type="unigram")
        (d / "tokenizer.model").write_bytes(other.model_proto)
    elif kind == "file":
        shutil.rmtree(d)
        d.write_text("not a folder")


@pytest.mark.parametrize("kind, match", [
    ("missing", r"no such model folder; train one with"),
    ("corrupt", r"manifest.json: corrupt manifest .*; re-train the model"),
    ("truncated", r"params.npz: corrupt or truncated \(100 bytes, expected \d+\)"),
    ("version", r"model format version 99, this lmkit reads version 1"),
    ("tokenizer", r"tokenizer.model: the tokenizer does not match the model"),
    ("file", r"not a model folder \(it is a file\)"),
])
@pytest.mark.parametrize("verb", [["eval", "--input", "{corpus}"], ["generate"],
                                  ["inspect", "--token", "e"]])
def test_bad_model_folders(tiny_model_dir, tiny_corpus_file, tmp_path, capsys, kind, match, verb):
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    break_model(kind, d)
    rest = [a.format(corpus=tiny_corpus_file) for a in verb[1:]]
    code, out, err = run(capsys, verb[0], d, *rest)
    assert_user_error(code, out, err, match)
    assert out == ""


def test_train_output_is_a_file(tiny_corpus_file, tiny_tok_file, tmp_path, capsys):
    (tmp_path / "x.txt").write_text("keep me")
    code, out, err = run(capsys, "train", "--input", tiny_corpus_file, "--tokenizer", tiny_tok_file,
                         "--context", 1, "--output", tmp_path / "x.txt")
    assert_user_error(code, out, err, r"x.txt: exists and is not a model folder")
    assert (tmp_path / "x.txt").read_text() == "keep me"


def test_tokenize_files_into_missing_folder(tiny_tok_file, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("Ki ro\n日本\n", encoding="utf-8")
    out_ids = tmp_path / "new" / "ids.txt"
    code, out, _ = run(capsys, "tokenize", "encode", "--model", tiny_tok_file,
                       "--input", tmp_path / "in.txt", "--output", out_ids)
    assert code == 0 and out == "" and len(out_ids.read_text().splitlines()) == 2
    code, out, _ = run(capsys, "tokenize", "decode", "--model", tiny_tok_file, "--input", out_ids)
    assert code == 0 and out == "Ki ro\n日本\n"
    code, out, err = run(capsys, "tokenize", "decode", "--model", tiny_tok_file,
                         "--input", tmp_path / "in.txt")
    assert_user_error(code, out, err, r"not a list of integer ids: 'Ki ro'")
    code, out, err = run(capsys, "tokenize", "encode", "--model", tmp_path / "nope.model")
    assert_user_error(code, out, err, r"nope.model: no such tokenizer model file")


def test_train_turns_off_hugepage_advice_only_while_it_runs(tiny_corpus_file, tiny_tok_file,
                                                            tmp_path, monkeypatch):
    import numpy as np

    import lmkit.cli as cli
    core = getattr(np, "_core", None) or np.core
    setter = core.multiarray._set_madvise_hugepage
    monkeypatch.delenv("NUMPY_MADVISE_HUGEPAGE", raising=False)
    seen = []
    real = cli.VERBS["train"]
    monkeypatch.setitem(cli.VERBS, "train", lambda a: (seen.append(setter(False)), real(a)))
    before = setter(True)
    try:
        assert main(["train", "--input", str(tiny_corpus_file), "--tokenizer", str(tiny_tok_file),
                     "--order", "2", "--output", str(tmp_path / "m"), "--no-verbose"]) == 0
        assert seen == [False]  # off during the verb
        assert setter(True) is True  # and back on after it
        seen.clear()
        monkeypatch.setitem(cli.VERBS, "vocab", lambda a: seen.append(setter(True)))
        main(["vocab", str(tmp_path / "m")])
        assert seen == [True]  # other verbs keep numpy's default
    finally:
        setter(before)


@pytest.mark.parametrize("verb,flag", [("next", "--context"), ("generate", "--prompt"),
                                       ("inspect", "--token")])
def test_text_option_with_non_utf8_bytes_is_one_line(tiny_model_dir, verb, flag):
    """argv bytes that are not UTF-8 (PEP 383 surrogates) are named by their flag, exit 2."""
    arg = os.fsdecode(b"ab\xffc")
    p = subprocess.run([sys.executable, "-m", "lmkit.cli", verb, str(tiny_model_dir), flag, arg],
                       capture_output=True, text=True, errors="replace")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [
        f"lmkit: error: {flag}: byte 0xff at character 2 is not UTF-8 text; pass the text in UTF-8"]


def test_inspect_accepts_numpy_integer_top(tiny_model):
    token = tiny_model.vocab[5]
    assert tiny_model.inspect(token, top=np.int64(2)) == tiny_model.inspect(token, top=2)
