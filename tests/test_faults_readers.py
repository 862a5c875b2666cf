"""Strict readers: the bounded file reader, ARPA files, mixture and neural folders, the one
manifest check, and loaded models that survive their files changing. Every bound is tested at
its boundary (index V and -1, declared count +-1, size limit and limit + 1)."""
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from lmkit.io import store
from lmkit.ngram.arpa import import_arpa, read_arpa, write_arpa
from lmkit.errors import InputError, MissingPathError, ModelFormatError
from lmkit.interpolate import MixtureModel, interpolate
from lmkit.model import LanguageModel
from lmkit.io.readfile import open_regular, read_regular, sha256_file
from test_faults import load_arrays, write_arrays
from cli_helpers import one_error_line, run_cli


@pytest.fixture(scope="module")
def ngram3(tiny_corpus_file, tiny_tok_file):
    from lmkit.train import train
    return train(input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file), order=3)


@pytest.fixture(scope="module")
def ngram3_dir(ngram3, tmp_path_factory):
    return ngram3.save(tmp_path_factory.mktemp("o3") / "o3")


# ---- the bounded reader ----------------------------------------------------------------------
def test_bounded_reader_limits_and_special_files(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"x" * 10)
    assert read_regular(f, "thing", "fix it", limit=10) == b"x" * 10  # limit itself: accepted
    with pytest.raises(InputError, match=r"f: 10 bytes, more than the 9 allowed for the thing; fix it"):
        read_regular(f, "thing", "fix it", limit=9)
    assert read_regular(f, "thing", "fix it", size=10) == b"x" * 10
    for size in (9, 11):  # a declared size must match exactly
        with pytest.raises(InputError, match=rf"corrupt or truncated \(10 bytes, expected {size}\)"):
            read_regular(f, "thing", "fix it", size=size)
    with pytest.raises(ModelFormatError, match="expected 11"):
        read_regular(f, "thing", "fix it", size=11, error=ModelFormatError)
    with pytest.raises(MissingPathError, match="nope: no such thing; fix it"):
        read_regular(tmp_path / "nope", "thing", "fix it")
    with pytest.raises(ModelFormatError, match="^the folder lacks it$"):
        read_regular(tmp_path / "nope", "thing", "fix", error=ModelFormatError,
                     missing="the folder lacks it")
    os.mkfifo(tmp_path / "fifo")  # never waits for a writer
    for path, what in ((tmp_path, "a folder"), (tmp_path / "fifo", r"a FIFO \(named pipe\)"),
                       (Path("/dev/zero"), "a device")):
        with pytest.raises(InputError, match=f"is {what}, not a regular file; fix it"):
            read_regular(path, "thing", "fix it")
    assert sha256_file(f) == store.sha256_bytes(b"x" * 10)
    g, n = open_regular(f, "thing", "fix")
    with g:
        assert n == 10 and g.read() == b"x" * 10


# ---- ARPA ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def arpa_text(ngram3, tmp_path_factory):
    p = tmp_path_factory.mktemp("arpa") / "o3.arpa"
    write_arpa(ngram3, p)
    return p.read_text()


def _lines(text):
    L = text.split("\n")
    return L, L.index("\\2-grams:"), L.index("\\3-grams:"), L.index("\\end\\")


def _count(text, n):
    return int(next(x for x in text.split("\n") if x.startswith(f"ngram {n}=")).split("=")[1])


def _set_value(text, section, field, value):
    """``text`` with field ``field`` (0 = log10 p, -1 = back-off) of the first entry of
    ``section`` that has a back-off replaced by ``value``."""
    L = text.split("\n")
    i = L.index(section) + 1
    while len(L[i].split("\t")) < 3:
        i += 1
    parts = L[i].split("\t")
    parts[field] = value
    L[i] = "\t".join(parts)
    return "\n".join(L)


def _cut_after_2grams(t):
    L, _, i3, _ = _lines(t)
    return "\n".join(L[:i3]) + "\n"


def _drop_end(t):
    return t.replace("\\end\\", "")


ARPA_CASES = {
    "count_not_int": (lambda t: t.replace("ngram 2=", "ngram 2=abc"),
                      r":3: expected 'ngram N=COUNT' in \\data\\, got 'ngram 2=abc"),
    "count_missing": (lambda t: t.replace(f"ngram 2={_count(t, 2)}", "ngram 2"),
                      r":3: expected 'ngram N=COUNT'"),
    "order_gap": (lambda t: t.replace("ngram 2=", "ngram 4="),
                  r"declares orders \[1, 3, 4\], not 1..N"),
    "count_plus_1": (lambda t: t.replace(f"ngram 2={_count(t, 2)}", f"ngram 2={_count(t, 2) + 1}"),
                     r"header says ngram 2=\d+ but \\2-grams: lists \d+; the file is truncated"),
    "count_minus_1": (lambda t: t.replace(f"ngram 3={_count(t, 3)}", f"ngram 3={_count(t, 3) - 1}"),
                      r"header says ngram 3=\d+ but \\3-grams: lists"),
    "cut_after_2grams": (_cut_after_2grams,
                         r"declares 3 orders but the file ends after 2 \(\\3-grams: missing\)"),
    "no_end": (_drop_end, r"no \\end\\ line after the last section; the file is truncated"),
    "text_after_end": (lambda t: t + "junk\n", r"text after \\end\\"),
    "section_out_of_order": (lambda t: t.replace("\\2-grams:", "\\5-grams:"),
                             r"expected \\2-grams:, got '\\5-grams:'"),
    "nan_bigram": (lambda t: _set_value(t, "\\2-grams:", 0, "nan"),
                   r"in \\2-grams: every log10 probability must be finite and <= 0"),
    "inf_unigram": (lambda t: _set_value(t, "\\1-grams:", 0, "-inf"), r"in \\1-grams: every"),
    "nan_backoff": (lambda t: _set_value(t, "\\2-grams:", -1, "nan"), r"every back-off finite"),
    "inf_backoff": (lambda t: _set_value(t, "\\1-grams:", -1, "inf"), r"every back-off finite"),
    "positive_logp": (lambda t: _set_value(t, "\\2-grams:", 0, "0.5"), r"finite and <= 0"),
    "not_a_number": (lambda t: _set_value(t, "\\2-grams:", 0, "x1"), r"a value is not a number"),
    "no_data": (lambda t: t.replace("\\data\\", "data"), r"no \\data\\ header"),
}


@pytest.mark.parametrize("case", sorted(ARPA_CASES))
def test_bad_arpa_files_are_one_line(arpa_text, tiny_tok_file, tmp_path, capsys, case):
    change, match = ARPA_CASES[case]
    (tmp_path / "x.arpa").write_text(change(arpa_text))
    with pytest.raises(InputError, match=match):
        read_arpa(tmp_path / "x.arpa")
    code, _, err = run_cli(capsys, "import-arpa", tmp_path / "x.arpa", "--tokenizer",
                           tiny_tok_file, "--output", tmp_path / "out")
    one_error_line(code, err, match)
    assert not (tmp_path / "out").exists()


def test_arpa_boundaries_that_are_fine(arpa_text, tmp_path):
    """The declared counts themselves, a log10 p of exactly 0, and a preamble are accepted."""
    (tmp_path / "x.arpa").write_text("made by hand\n\n" + _set_value(arpa_text, "\\2-grams:", 0,
                                                                       "0.000000"))
    tables = read_arpa(tmp_path / "x.arpa")
    assert [len(t[0]) for t in tables] == [_count(arpa_text, n) for n in (1, 2, 3)]


def test_arpa_unknown_word_is_truncated_and_special_paths_named(arpa_text, tiny_tok_file,
                                                                tmp_path, capsys):
    L, i2, _, _ = _lines(arpa_text)
    L[i2 + 1] = L[i2 + 1].split("\t")[0] + "\t" + "x" * 1_000_000 + " 5"
    (tmp_path / "w.arpa").write_text("\n".join(L))
    code, _, err = run_cli(capsys, "import-arpa", tmp_path / "w.arpa", "--tokenizer",
                           tiny_tok_file, "--output", tmp_path / "out")
    one_error_line(code, err, r"ARPA word 'x{60}\.\.\.' is not a piece or id")
    assert len(err) < 400
    (tmp_path / "folder.arpa").mkdir()
    os.mkfifo(tmp_path / "fifo.arpa")
    for path, what in ((tmp_path / "folder.arpa", "a folder"), (tmp_path / "fifo.arpa", "a FIFO"),
                       ("/dev/zero", "a device"), (tmp_path / "nope.arpa", None)):
        code, _, err = run_cli(capsys, "import-arpa", path, "--tokenizer", tiny_tok_file,
                               "--output", tmp_path / "out")
        one_error_line(code, err, f"is {what}" if what else "no such ARPA file")


def test_empty_higher_orders_round_trip_through_lmkits_own_export(ngram3, tiny_tok_file,
                                                                  tiny_lines, tmp_path, capsys):
    """`prune --threshold inf` keeps only unigrams; its ARPA export has empty 2- and 3-gram
    sections, and imports as the same model (same scores, byte-identical re-export)."""
    from lmkit.ngram.prune import prune_entropy
    from lmkit.tokenizer import Tokenizer
    pruned = prune_entropy(ngram3, math.inf)
    write_arpa(pruned, tmp_path / "u.arpa")
    text = (tmp_path / "u.arpa").read_text()
    assert "ngram 2=0" in text and "ngram 3=0" in text
    model, report = import_arpa(tmp_path / "u.arpa", Tokenizer.load(tiny_tok_file))
    assert report["ngrams"] == [ngram3.vocab_size, 0, 0]
    assert model.perplexity(tiny_lines[:30]) == pytest.approx(pruned.perplexity(tiny_lines[:30]),
                                                              rel=1e-5)
    write_arpa(model, tmp_path / "again.arpa")
    assert (tmp_path / "again.arpa").read_text() == text
    code, _, err = run_cli(capsys, "import-arpa", tmp_path / "u.arpa", "--tokenizer",
                           tiny_tok_file, "--output", tmp_path / "m")
    assert code == 0, err


# ---- model arrays at their bounds ------------------------------------------------------------
def _arrays(d):
    """The folder's arrays in the plain layout (``test_faults.load_arrays``: room for -1 and V)."""
    return load_arrays(d)


def _last_in_row(indptr, indices, V):
    """An entry that is the last of its row and below V - 1 (so V - 1 keeps the row sorted)."""
    ends = indptr[1:][np.diff(indptr) > 0] - 1
    return int(next(e for e in ends if indices[e] < V - 1))


@pytest.mark.parametrize("mapped", [False, True])
@pytest.mark.parametrize("value, ok", [("V", False), ("V-1", True), ("-1", False)])
def test_column_index_bounds(ngram3_dir, tmp_path, mapped, value, ok):
    d = tmp_path / "m"
    shutil.copytree(ngram3_dir, d)
    a = _arrays(d)
    V = len(a["q"])
    idx = a["S0_indices"]
    e = _last_in_row(a["S0_indptr"], idx, V)
    idx[e] = {"V": V, "V-1": V - 1, "-1": -1}[value]
    write_arrays(d, a)
    if ok:
        assert LanguageModel.load(d, mmap=mapped).params.S[0].indices[e] == V - 1
    else:
        with pytest.raises(ModelFormatError, match=rf"group 0: column indices outside \[0, {V}\)"):
            LanguageModel.load(d, mmap=mapped)


@pytest.mark.parametrize("delta, ok", [(0, True), (1, False), (-1, False)])
def test_indptr_end_must_be_nnz(ngram3_dir, tmp_path, delta, ok):
    d = tmp_path / "m"
    shutil.copytree(ngram3_dir, d)
    a = _arrays(d)
    a["S1_indptr"][-1] += delta
    write_arrays(d, a)
    if ok:
        LanguageModel.load(d)
    else:
        with pytest.raises(ModelFormatError, match="indptr is not monotone from 0"):
            LanguageModel.load(d)


@pytest.mark.parametrize("last, ok", [("V", False), ("V-1", True)])
def test_unigram_history_keys_below_V(ngram3_dir, tmp_path, last, ok):
    d = tmp_path / "m"
    shutil.copytree(ngram3_dir, d)
    a = _arrays(d)
    V, k = len(a["q"]), a["keys0"]
    k[-1] = V if last == "V" else V - 1  # keys stay sorted and unique: k[-2] < k[-1] <= V - 1
    write_arrays(d, a)
    if ok:
        assert LanguageModel.load(d).params.keys[0][-1] == V - 1
    else:
        with pytest.raises(ModelFormatError, match=rf"'keys0' must be sorted, unique and in \[0, {V}\)"):
            LanguageModel.load(d)


# ---- loaded models survive their files changing ----------------------------------------------
CHANGE_AFTER_LOAD = textwrap.dedent(r"""
    import os, shutil, sys, zipfile
    from lmkit.model import LanguageModel
    src, other, lines = sys.argv[1], sys.argv[2], ["a b c", "the cat", "x y z w"]
    for mode in ("cp_over", "truncate", "bad_indices"):
        shutil.rmtree("mm", ignore_errors=True); shutil.copytree(src, "mm")
        m = LanguageModel.load("mm")
        before = (m.perplexity(lines), m.top_next("a", 3))
        p = "mm/params.npz"
        if mode == "cp_over":  # what `cp other/params.npz mm/params.npz` does: same inode
            data = open(other + "/params.npz", "rb").read()
            with open(p, "r+b") as f:
                f.truncate(0); f.write(data)
        elif mode == "truncate":
            os.truncate(p, 0)
        else:  # same size, every column index far out of range
            z = zipfile.ZipFile(p)
            with open(p, "r+b") as f:
                for i in z.infolist():
                    if i.filename.endswith("_indices.npy"):
                        f.seek(i.header_offset + 26); b = f.read(4)
                        start = (i.header_offset + 30 + int.from_bytes(b[:2], "little")
                                 + int.from_bytes(b[2:], "little"))
                        f.seek(start + 128); f.write(b"\xff" * (i.file_size - 128))
        after = (m.perplexity(lines), m.top_next("a", 3))
        assert after == before, (mode, before, after)
        print(mode, "ok", flush=True)
""")


def test_a_loaded_model_survives_its_file_changing(ngram3_dir, tiny_model_dir, tmp_path):
    """Default loads copy params.npz: overwriting it in place, truncating it or rewriting its
    indices after the load changes nothing (with a shared map these were SIGBUS, wrong
    results, then SIGSEGV in top_next). Run in a child so a crash cannot take pytest down."""
    r = subprocess.run([sys.executable, "-c", CHANGE_AFTER_LOAD, str(ngram3_dir),
                        str(tiny_model_dir)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(Path(store.__file__).parents[1])})
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.split() == ["cp_over", "ok", "truncate", "ok", "bad_indices", "ok"]


def test_default_load_owns_its_memory_and_mmap_is_opt_in(ngram3_dir):
    from lmkit.io.npyfile import file_mapping
    own = LanguageModel.load(ngram3_dir)
    mapped = LanguageModel.load(ngram3_dir, mmap=True)
    assert file_mapping(own.params.S[0].data) is None
    assert file_mapping(mapped.params.S[0].data) is not None
    lines = ["a b c", "the cat"]
    assert own.perplexity(lines) == mapped.perplexity(lines)


# ---- the one manifest check: mixtures --------------------------------------------------------
@pytest.fixture(scope="module")
def mixture(ngram3, tiny_model, tiny_lines, tmp_path_factory):
    mix = interpolate([ngram3, tiny_model], tiny_lines[::7])
    return mix, mix.save(tmp_path_factory.mktemp("mix") / "mix")


@pytest.mark.parametrize("change, match", [
    ({"weights": "abc"}, r"'weights' must be 2 finite numbers >= 0 summing to 1 .*got abc"),
    ({"weights": ["a", "b"]}, r"'weights' must be 2 finite numbers"),
    ({"weights": None}, r"'weights' must be 2"),
    ({"weights": [0.5, 0.5 + 2e-6]}, r"summing to 1"),
    ({"weights": [float("nan"), 1.0]}, r"'weights' must be"),
    ({"weights": [-0.5, 1.5]}, r"'weights' must be"),
    ({"weights": [1.0]}, r"'weights' must be 2"),
    ({"info": [1, 2]}, r"'info' must be an object, got list"),
    ({"components": ["components/0"]}, r"'components' must be \['components/0', "),
    ({"components": ["../o3", "components/1"]}, r"'components' must be"),
    ({"vocab_size": "300"}, r"'vocab_size' must be an integer >= 1"),
    ({"tokenizer": None}, r"'tokenizer' must be an object"),
    ({"version": 2}, r"model format version 2, this lmkit reads version 1"),
])
def test_crafted_mixture_manifests_are_one_line(mixture, tmp_path, capsys, change, match):
    d = tmp_path / "mix"
    shutil.copytree(mixture[1], d)
    m = json.loads((d / "manifest.json").read_text())
    m.update(change)
    (d / "manifest.json").write_text(json.dumps({k: v for k, v in m.items() if v is not None}))
    with pytest.raises(ModelFormatError, match=match):
        MixtureModel.load(d)
    code, _, err = run_cli(capsys, "next", d, "--context", "a")
    one_error_line(code, err, match)
    if "version" not in change:
        assert "re-run `lmkit interpolate`" in err


def test_a_weight_sum_within_tolerance_loads(mixture, tmp_path):
    d = tmp_path / "mix"
    shutil.copytree(mixture[1], d)
    m = json.loads((d / "manifest.json").read_text())
    m["weights"] = [m["weights"][0] + 5e-7, m["weights"][1]]
    (d / "manifest.json").write_text(json.dumps(m))
    assert len(MixtureModel.load(d).models) == 2


def test_a_mixture_given_to_interpolate_is_flattened(mixture, ngram3, tiny_lines, tmp_path,
                                                     capsys):
    mix, path = mixture
    nested = interpolate([mix, ngram3], [], weights=[0.25, 0.75])
    assert len(nested.models) == 3
    np.testing.assert_allclose(nested.weights, [0.25 * mix.weights[0], 0.25 * mix.weights[1],
                                                0.75])
    seqs = ngram3.tokenizer.encode_batch(tiny_lines[:20])
    want = np.logaddexp(np.log(0.25) + mix.log_proba_ids(seqs)[0],
                        np.log(0.75) + ngram3.log_proba_ids(seqs)[0])
    np.testing.assert_allclose(nested.log_proba_ids(seqs)[0], want, rtol=1e-12, atol=1e-12)
    back = MixtureModel.load(nested.save(tmp_path / "nested"))
    np.testing.assert_allclose(back.log_proba_ids(seqs)[0], want, rtol=1e-12, atol=1e-12)
    # the CLI: interpolate MIXTURE MODEL writes a folder every verb loads
    (tmp_path / "held.txt").write_text("\n".join(tiny_lines[::5]) + "\n")
    ngram3.save(tmp_path / "o3")
    code, _, err = run_cli(capsys, "interpolate", path, tmp_path / "o3", "--input",
                           tmp_path / "held.txt", "--output", tmp_path / "nested2")
    assert code == 0, err
    code, out, err = run_cli(capsys, "eval", tmp_path / "nested2", "--input", tmp_path / "held.txt")
    assert code == 0 and "perplexity" in out, err
    # a hand-made nested folder (never written by lmkit) is refused in one line
    d = tmp_path / "hand"
    shutil.copytree(path, d)
    shutil.rmtree(d / "components" / "1")
    shutil.copytree(path, d / "components" / "1")
    code, _, err = run_cli(capsys, "eval", d, "--input", tmp_path / "held.txt")
    one_error_line(code, err, r"components/1: a mixture inside a mixture")


def test_loglinear_merge_of_a_mixture_is_refused(mixture, ngram3, tiny_lines, tmp_path, capsys):
    with pytest.raises(InputError, match="log-linear merge needs explicit sparse models, one "
                                         "of them is a linear mixture; use method linear"):
        interpolate([mixture[0], ngram3], tiny_lines[::7], method="loglinear")
    ngram3.save(tmp_path / "o3")
    (tmp_path / "held.txt").write_text("\n".join(tiny_lines[::5]) + "\n")
    code, _, err = run_cli(capsys, "interpolate", mixture[1], tmp_path / "o3", "--method",
                           "loglinear", "--input", tmp_path / "held.txt", "--output", tmp_path / "x")
    one_error_line(code, err, "one of them is a linear mixture; use --method linear")
    assert not (tmp_path / "x").exists()


def _neural_stub(tmp_path, tiny_tok_file):
    """A folder that says it is a neural model (no torch needed to recognise it)."""
    d = tmp_path / "neu"
    d.mkdir()
    shutil.copy(tiny_tok_file, d / "tokenizer.model")
    (d / "manifest.json").write_text(json.dumps({"format": "lmkit-neural", "version": 1}))
    return d  # an old version: a verb that takes no neural folder says what it is all the same


@pytest.mark.parametrize("verb", [["verify"], ["inspect", "--token", "a"],
                                  ["export-arpa", "{out}"], ["prune", "--threshold", "1",
                                                             "--output", "{out}"]])
def test_explicit_only_verbs_say_what_they_take(mixture, tiny_tok_file, tmp_path, capsys, verb):
    neu = _neural_stub(tmp_path, tiny_tok_file)
    # a mixture is also what `lmkit train --solver residual` writes (hybrid mix, the default)
    for folder, what in ((mixture[1], r"is a linear mixture \(written by `lmkit interpolate` "
                                      r"or `lmkit train --solver residual`\)"),
                         (neu, "is a neural model")):
        argv = [verb[0], folder] + [a.replace("{out}", str(tmp_path / "out")) for a in verb[1:]]
        code, _, err = run_cli(capsys, *argv)
        one_error_line(code, err, f"{what}.*; this step takes an explicit model folder")
        assert "re-train" not in err and not (tmp_path / "out").exists()


def test_prune_of_a_window_model_speaks_of_pruning(tiny_model_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "prune", tiny_model_dir, "--threshold", "1e-7", "--output",
                           tmp_path / "p")
    one_error_line(code, err, r"pruning needs a pure n-gram model .* this one has groups "
                              r"\['window1', 'window2'\]")
    assert "ARPA" not in err


def test_every_folder_kind_fsyncs_its_manifest(mixture, monkeypatch, tmp_path):
    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    mixture[0].save(tmp_path / "mix")
    # the mixture's own manifest and tokenizer, and each component's
    assert synced.count("manifest.json") == 3 and synced.count("tokenizer.model") == 3


# ---- neural folders --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def neural_dir(tiny_tok, tiny_lines, tmp_path_factory):
    torch = pytest.importorskip("torch")
    from lmkit.neural import GPTConfig, train_transformer
    torch.manual_seed(0)
    lm = train_transformer(tiny_tok, tiny_lines[:100], tiny_lines[100:140],
                           config=GPTConfig(vocab_size=tiny_tok.vocab_size, block_size=8,
                                            n_layer=1, n_head=2, n_embd=16), seed=0,
                           max_seconds=60.0, max_steps=2, batch_size=8, eval_every=1e9,
                           valid_tokens=100, log=lambda msg: None)
    return lm.save(tmp_path_factory.mktemp("neural") / "nt")


def _craft(neural_dir, tmp_path, weights=None, config=None, manifest=None, rehash=True):
    d = tmp_path / "n"
    shutil.copytree(neural_dir, d)
    m = json.loads((d / "manifest.json").read_text())
    w = d / "weights.npz"
    if weights is not None:
        weights(w)
    if config:
        m["config"].update(config)
    if rehash:
        m["weights"].update(sha256=store.sha256_bytes(w.read_bytes()), bytes=w.stat().st_size)
    if manifest:
        manifest(m)
    (d / "manifest.json").write_text(json.dumps(m))
    return d


def _state(neural_dir):
    return store.read_npz((neural_dir / "weights.npz").read_bytes(), "w")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _torch_pickle(p):
    import torch
    torch.save({"x": _Evil()}, p)


def _object_array(neural_dir):
    def write(p):
        arrays = {k: v.copy() for k, v in _state(neural_dir).items()}
        with open(p, "wb") as f:
            np.savez(f, **arrays, extra=np.array([_Evil()], dtype=object))
    return write


def _values(neural_dir, value):
    def write(p):
        arrays = {k: v.copy() for k, v in _state(neural_dir).items()}
        arrays["gpt.wte.weight"][5, :3] = value
        store.write_npz(p, arrays)
    return write


NEURAL_CASES = {
    "torch_pickle": (dict(weights=_torch_pickle), r"the config implies \d+ bytes of weights"),
    "garbage_of_the_right_size": (
        dict(weights=lambda p: p.write_bytes(b"\0" * p.stat().st_size)), r"unreadable arrays"),
    "n_embd_str": (dict(config={"n_embd": "abc"}), r"'config.n_embd' must be an integer in \[1, 65536\], got abc"),
    "n_head_0": (dict(config={"n_head": 0}), r"'config.n_head' must be an integer in \[1, 1024\], got 0"),
    "n_head_not_divisor": (dict(config={"n_head": 3}), r"'config.n_embd' \(16\) must be a multiple of 'config.n_head' \(3\)"),
    "dropout_2": (dict(config={"dropout": 2.0}), r"'config.dropout' must be a number in \[0, 1\), got 2.0"),
    "head_bias_str": (dict(config={"head_bias": "yes"}), r"'config.head_bias' must be true or false, got yes"),
    "dropout_1": (dict(config={"dropout": 1}), r"'config.dropout' must be a number in \[0, 1\), got 1"),
    "dropout_negative": (dict(config={"dropout": -0.01}), r"'config.dropout' must be"),
    "dropout_bool": (dict(config={"dropout": True}), r"'config.dropout' must be"),
    "unknown_field": (dict(config={"bias": True}), r"'config' must have the fields"),
    "huge": (dict(config={"n_layer": 64, "n_embd": 16384, "n_head": 16}),
             r"the config implies \d{12} bytes of weights, the manifest declares"),
    "other_shapes": (dict(config={"n_embd": 32}), r"the config implies"),
    "vocab_mismatch": (dict(config={"vocab_size": 301}), r"the tokenizer has 300 pieces, config vocab_size 301"),
    "bytes_minus_1": (dict(manifest=lambda m: m["weights"].update(bytes=m["weights"]["bytes"] - 1)),
                      r"weights.npz: corrupt or truncated \(\d+ bytes, expected \d+\)"),
    "sha_differs": (dict(manifest=lambda m: m["weights"].update(sha256="0" * 64)), r"sha256 differs"),
    "residual_str": (dict(manifest=lambda m: m.update(residual="no")), r"'residual' must be true or false"),
    "weights_file_elsewhere": (dict(manifest=lambda m: m["weights"].update(file="../x.npz")),
                               r"'weights' must be \{'file': 'weights.npz'"),
    "version_1_pickle_folder": (dict(manifest=lambda m: m.update(version=1)),
                                r"neural model format version 1, this lmkit reads version 2"),
}


@pytest.mark.parametrize("case", sorted(NEURAL_CASES))
def test_crafted_neural_folders_are_one_line(neural_dir, tmp_path, capsys, case):
    pytest.importorskip("torch")
    from lmkit.neural import NeuralLM
    d = _craft(neural_dir, tmp_path, **NEURAL_CASES[case][0])
    match = NEURAL_CASES[case][1]
    with pytest.raises(ModelFormatError, match=match):
        NeuralLM.load(d)
    code, out, err = run_cli(capsys, "next", d, "--context", "a")
    one_error_line(code, err, match)
    assert out == "" and not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()


@pytest.mark.parametrize("name, writer", [("object_array", _object_array),
                                          ("nan", lambda d: _values(d, np.nan)),
                                          ("inf", lambda d: _values(d, -np.inf))])
def test_pickled_or_non_finite_weights_are_refused(neural_dir, tmp_path, capsys, name, writer):
    pytest.importorskip("torch")
    d = _craft(neural_dir, tmp_path, weights=writer(neural_dir))
    match = ("holds Python objects \\(a pickle\\)" if name == "object_array"
             else "array 'gpt.wte.weight' holds NaN or infinite values")
    for verb in (["next", d, "--context", "a"], ["generate", d, "--max-tokens", "3"]):
        code, out, err = run_cli(capsys, *verb)
        one_error_line(code, err, match)
        assert "nan" not in out


def test_a_huge_declared_weights_file_is_refused_unread(neural_dir, tmp_path):
    """A sparse 3 GB weights.npz whose manifest declares its size: refused from the config
    before a byte of it is read or hashed."""
    pytest.importorskip("torch")
    from lmkit.io import readfile
    from lmkit.neural import NeuralLM

    def big(p):
        with open(p, "wb") as f:
            f.truncate(3 << 30)
    d = _craft(neural_dir, tmp_path, weights=big, rehash=False,
               manifest=lambda m: m["weights"].update(bytes=3 << 30))
    opened = []
    real = readfile.open_regular

    def spy(path, *a, **k):
        opened.append(Path(path).name)
        return real(path, *a, **k)

    import lmkit.neural.lm as lm_mod
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(readfile, "open_regular", spy)
        mp.setattr(store, "read_regular", lambda path, *a, **k: (opened.append(Path(path).name),
                                                                 readfile.read_regular(path, *a, **k))[1])
        mp.setattr(lm_mod, "sha256_file", lambda *a, **k: opened.append("hashed"))
        with pytest.raises(ModelFormatError, match=r"declares 3221225472"):
            NeuralLM.load(d)
    assert "weights.npz" not in opened and "hashed" not in opened


def test_neural_round_trip_and_dropout_below_one(neural_dir, tmp_path):
    pytest.importorskip("torch")
    from lmkit.neural import NeuralLM
    a = NeuralLM.load(neural_dir)
    assert sorted(p.name for p in neural_dir.iterdir()) == ["manifest.json", "tokenizer.model",
                                                           "weights.npz"]
    d = _craft(neural_dir, tmp_path, config={"dropout": 0.999})  # the bound's inside
    b = NeuralLM.load(d)
    seqs = a.encode_lines(["a b c", "the cat"])
    assert np.array_equal(a.log_proba_ids(seqs)[0], b.log_proba_ids(seqs)[0])  # eval: no dropout


def test_a_mixture_with_a_neural_component_round_trips(neural_dir, ngram3, tiny_lines, tmp_path):
    pytest.importorskip("torch")
    from lmkit.neural import NeuralLM
    nt = NeuralLM.load(neural_dir)
    mix = interpolate([nt, ngram3], [], weights=[0.5, 0.5])
    back = MixtureModel.load(mix.save(tmp_path / "mix"))
    seqs = ngram3.tokenizer.encode_batch(tiny_lines[:10])
    np.testing.assert_allclose(back.log_proba_ids(seqs)[0], mix.log_proba_ids(seqs)[0],
                               rtol=1e-6)


# ---- tokenizer files -------------------------------------------------------------------------
def test_tokenizer_load_uses_the_bounded_reader(tmp_path, tiny_tok_file, monkeypatch, capsys):
    from lmkit import tokenizer
    os.mkfifo(tmp_path / "fifo.model")
    for path, what in (("/dev/zero", "a device"), (tmp_path / "fifo.model", r"a FIFO \(named pipe\)"),
                       (tmp_path, "a folder")):
        with pytest.raises(InputError, match=f"is {what}, not a regular file; pass the .model"):
            tokenizer.Tokenizer.load(path)
    size = Path(tiny_tok_file).stat().st_size
    monkeypatch.setattr(tokenizer, "MAX_MODEL_BYTES", size)
    assert tokenizer.Tokenizer.load(tiny_tok_file).vocab_size == 300  # the limit itself
    monkeypatch.setattr(tokenizer, "MAX_MODEL_BYTES", size - 1)
    with pytest.raises(InputError, match=rf"{size} bytes, more than the {size - 1} allowed"):
        tokenizer.Tokenizer.load(tiny_tok_file)


def test_weights_that_overflow_give_one_error_not_nan(neural_dir, tmp_path, capsys):
    """Finite weights so large that float32 overflows inside the network: one line, never a
    NaN probability (the load-time check sees only finite values)."""
    pytest.importorskip("torch")

    def huge(p):
        arrays = {k: v.copy() for k, v in _state(neural_dir).items()}
        arrays["gpt.wte.weight"][:] = 3e38
        store.write_npz(p, arrays)
    d = _craft(neural_dir, tmp_path, weights=huge)
    for verb in (["next", d, "--context", "a"], ["generate", d, "--max-tokens", "3"],
                 ["eval", d, "--input", d / "manifest.json"]):
        code, out, err = run_cli(capsys, *verb)
        one_error_line(code, err, "overflow float32")
        assert "nan" not in out


def test_mmap_option_takes_effect_or_is_refused(ngram3_dir, mixture, tiny_corpus_file,
                                                tiny_tok_file, tmp_path, monkeypatch, capsys):
    mapped = []
    real = store.map_npz
    monkeypatch.setattr(store, "map_npz", lambda *a: (mapped.append(a[0]), real(*a))[1])
    outs = []
    for extra in ([], ["--mmap"], ["--no-mmap"]):
        code, out, err = run_cli(capsys, "eval", ngram3_dir, "--input", tiny_corpus_file, *extra)
        assert code == 0, err
        outs.append(out)
    assert outs[0] == outs[1] == outs[2] and len(mapped) == 1  # only with --mmap
    code, out, err = run_cli(capsys, "next", mixture[1], "--context", "a", "--mmap")
    assert code == 0 and len(mapped) == 3, err  # both components of the mixture
    neu = _neural_stub(tmp_path, tiny_tok_file)
    code, _, err = run_cli(capsys, "next", neu, "--context", "a", "--mmap")
    one_error_line(code, err, "a neural model is always read into memory; the --mmap option .*drop it")
