import json
import os
import shutil

import numpy as np
import pytest

from lmkit.io import files
from lmkit.io import store
from lmkit.errors import InputError, MissingPathError, ModelFormatError
from lmkit.model import LanguageModel
from lmkit.tokenizer import Tokenizer
from lmkit.train import train

from conftest import make_lines


def copy_model(src, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(src, dst)
    return dst


def test_save_load_round_trip(tiny_model, tiny_model_dir, tiny_lines):
    loaded = LanguageModel.load(tiny_model_dir)
    seqs = tiny_model.encode_lines(tiny_lines[:30] + ["never seen: 日本語 🎉"])
    a, ia = tiny_model.log_proba_ids(seqs)
    b, ib = loaded.log_proba_ids(seqs)
    assert np.array_equal(a, b) and np.array_equal(ia, ib)
    assert loaded.tokenizer.sha256 == tiny_model.tokenizer.sha256
    assert np.array_equal(loaded.params.lambdas, tiny_model.params.lambdas)
    m = json.loads((tiny_model_dir / "manifest.json").read_text())
    assert m["format"] == "lmkit-model" and m["version"] == 1 and m["kind"] == "sparse"
    assert m["groups"] == ["window1", "window2"] and m["vocab_size"] == 300
    assert m["config"]["context"] == 2 and m["corpus"]["sequences"] == len(tiny_lines)
    assert len(m["corpus"]["sha256"]) == 64 and m["lambdas"] == list(tiny_model.params.lambdas)
    assert set(m["versions"]) >= {"lmkit", "numpy", "scipy", "sentencepiece", "python"}
    assert m["tokenizer"]["sha256"] == tiny_model.tokenizer.sha256
    assert m["arrays"]["bytes"] == (tiny_model_dir / "params.npz").stat().st_size
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == ["manifest.json", "params.npz",
                                                               "tokenizer.model"]


def test_probabilities_sum_to_one(tiny_model):
    tok = tiny_model.tokenizer
    for prefix in [[], tok.encode("The"), tok.encode("zzz 日本"), [tok.eos_id]]:
        lp = tiny_model.next_logp(prefix)
        assert lp.shape == (300,) and np.isfinite(lp).all()
        assert np.exp(lp).sum() == pytest.approx(1.0, abs=1e-12)


def test_log_proba_and_perplexity(tiny_model, tiny_lines):
    lp = tiny_model.log_proba(tiny_lines[0])
    assert len(lp) == len(tiny_model.tokenizer.encode(tiny_lines[0])) + 1 and (lp < 0).all()
    ppl = tiny_model.perplexity(tiny_lines[:20])
    assert 1.0 < ppl < 300


def test_training_is_deterministic(tiny_corpus_file):
    kw = dict(input=[str(tiny_corpus_file)], vocab_size=320, context=2, seed=3, lambda_tokens=500)
    a, b = train(**kw), train(**kw)
    assert a.tokenizer.sha256 == b.tokenizer.sha256
    xa, xb = store.params_to_arrays(a.params), store.params_to_arrays(b.params)
    assert xa.keys() == xb.keys()
    assert all(np.array_equal(xa[k], xb[k]) for k in xa)


def test_inspect(tiny_model):
    tok = tiny_model.tokenizer
    piece = max(range(259, 300), key=lambda i: tiny_model.params.S[0].indptr[i + 1]
                - tiny_model.params.S[0].indptr[i])
    res = tiny_model.inspect(tok.decode([piece]), top=3)
    assert list(res) == ["window1", "window2"]
    top = res["window1"]
    assert 1 <= len(top) <= 3 and [w for _, w in top] == sorted((w for _, w in top), reverse=True)
    S, lam = tiny_model.params.S[0], tiny_model.params.lambdas[0]
    assert top[0][1] == pytest.approx(lam * S[piece].toarray().max())
    with pytest.raises(InputError, match=r"is 3 pieces .*not one"):
        tiny_model.inspect("日", top=3)  # not in the vocabulary: several byte pieces (3 for 日)


def test_tokenizer_size_mismatch(tiny_model):
    other = Tokenizer.train(make_lines(200, seed=5), vocab_size=340)
    with pytest.raises(InputError, match="tokenizer has 340 pieces but the model has 300"):
        LanguageModel(other, tiny_model.params)


# ---- bad model folders -----------------------------------------------------------------------
def test_load_missing(tmp_path):
    with pytest.raises(MissingPathError, match="no such model folder; train one with"):
        LanguageModel.load(tmp_path / "nope")


def test_load_file_not_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ModelFormatError, match=r"not a model folder \(it is a file\)"):
        LanguageModel.load(tmp_path / "f")


def test_load_corrupt_manifest(tiny_model_dir, tmp_path):
    d = copy_model(tiny_model_dir, tmp_path)
    (d / "manifest.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="corrupt manifest .*re-train the model"):
        LanguageModel.load(d)


def test_load_manifest_missing_keys(tiny_model_dir, tmp_path):
    d = copy_model(tiny_model_dir, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    for key in ("tokenizer", "arrays", "groups", "kind"):
        broken = {k: v for k, v in m.items() if k != key}
        (d / "manifest.json").write_text(json.dumps(broken))
        with pytest.raises(ModelFormatError, match=f"{key}|inconsistent"):
            LanguageModel.load(d)


def test_load_truncated_params(tiny_model_dir, tmp_path):
    d = copy_model(tiny_model_dir, tmp_path)
    blob = (d / "params.npz").read_bytes()
    (d / "params.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ModelFormatError, match=rf"corrupt or truncated \({len(blob) // 2} bytes, "
                                               rf"expected {len(blob)}\)"):
        LanguageModel.load(d)


def test_load_other_version(tiny_model_dir, tmp_path):
    d = copy_model(tiny_model_dir, tmp_path)
    m = json.loads((d / "manifest.json").read_text())
    m["version"] = 2
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelFormatError, match="model format version 2, this lmkit reads version 1"):
        LanguageModel.load(d)
    m["format"] = "something-else"
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelFormatError, match="not an lmkit model"):
        LanguageModel.load(d)


def test_load_foreign_tokenizer(tiny_model_dir, tmp_path):
    d = copy_model(tiny_model_dir, tmp_path)
    other = Tokenizer.train(make_lines(), vocab_size=300, model_type="unigram")
    assert other.vocab_size == 300 and other.model_proto != (d / "tokenizer.model").read_bytes()
    (d / "tokenizer.model").write_bytes(other.model_proto)
    with pytest.raises(ModelFormatError, match="the tokenizer does not match the model"):
        LanguageModel.load(d)


def test_load_missing_params(tiny_model_dir, tmp_path):
    d = copy_model(tiny_model_dir, tmp_path)
    (d / "params.npz").unlink()
    with pytest.raises(ModelFormatError, match="missing params.npz"):
        LanguageModel.load(d)


# ---- atomic saves ----------------------------------------------------------------------------
def test_save_into_missing_parent(tiny_model, tmp_path):
    path = tiny_model.save(tmp_path / "a" / "b" / "model")
    assert LanguageModel.load(path).vocab_size == 300


def boom(*a, **k):
    raise OSError("disk full (simulated)")


@pytest.mark.parametrize("target", ["os.replace", "sha256_file"])
def test_interrupted_save_leaves_nothing(tiny_model, tmp_path, monkeypatch, target):
    # sha256_file runs after params.npz is fully written: the half-built temp folder must go
    monkeypatch.setattr(os, "replace", boom) if target == "os.replace" else \
        monkeypatch.setattr(store, "sha256_file", boom)
    with pytest.raises(OSError, match="simulated"):
        tiny_model.save(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_old_model(tiny_model, tmp_path, monkeypatch):
    path = tiny_model.save(tmp_path / "model")
    monkeypatch.setattr(files, "_RENAMEAT2", None)  # the two-rename fallback (no RENAME_EXCHANGE)
    before = (path / "params.npz").read_bytes()
    real = os.replace
    calls = []

    def fail_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the move of the new folder into place
            raise OSError("disk full (simulated)")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", fail_second)
    with pytest.raises(OSError, match="simulated"):
        tiny_model.save(path)
    monkeypatch.undo()
    assert (path / "params.npz").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    LanguageModel.load(path)


def test_save_refuses_to_replace_a_non_model(tiny_model, tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(InputError, match="not a model folder"):
        tiny_model.save(tmp_path / "notes.txt")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.txt").write_text("precious")
    with pytest.raises(InputError, match="not a model folder"):
        tiny_model.save(tmp_path / "data")
    assert (tmp_path / "data" / "x.txt").read_text() == "precious"


def test_inspect_suffix_groups(tiny_tok):
    """suffix1 rows are looked up by key; longer suffixes are skipped; unseen keys give []."""
    import scipy.sparse as sp

    from lmkit.params import SparseParams
    from lmkit.features import Suffix, Window
    V = tiny_tok.vocab_size
    a, b, c = (tiny_tok.piece_to_id(x) for x in ("e", "o", "n"))
    S1 = sp.csr_matrix(([2.0, 1.0], ([0, 0], [b, c])), shape=(2, V))  # rows: keys [a, c]
    S2 = sp.csr_matrix((1, V))
    W1 = sp.csr_matrix(([3.0], ([a], [c])), shape=(V, V))
    keys1 = np.array(sorted([a, c]), dtype=np.int64)
    if keys1[0] != a:  # keep row 0 = token a
        S1 = S1[[1, 0]]
    params = SparseParams([Suffix(1), Suffix(2), Window(1)], np.full(V, 1 / V), [S1, S2, W1],
                          [keys1, np.array([7], np.int64), None], np.array([0.5, 1.0, 2.0]))
    model = LanguageModel(tiny_tok, params)
    res = model.inspect("e", top=5)
    assert list(res) == ["suffix1", "window1"]
    assert res["suffix1"] == [("o", 1.0), ("n", 0.5)]
    assert res["window1"] == [("n", 6.0)]
    assert model.inspect("o") == {"suffix1": [], "window1": []}


def test_new_lambdas_are_never_scored_with_stale_backoff_tables(tiny_corpus_file, tiny_tok_file):
    """The pure-MKN shortcut is derived from the params; new lambdas must switch it off."""
    import dataclasses

    from lmkit import scoring
    from lmkit.train import train
    model = train(input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file), order=3)
    seqs = model.encode_lines(["Theroqu ve kiee.", "Lo ha stmi."])
    model.log_proba_ids(seqs)  # derive the back-off tables once
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.params.lambdas = np.array([1.0, 0.5])
    with pytest.raises(ValueError):
        model.params.lambdas[1] = 0.5  # arrays are read-only too
    model.params = model.params.with_lambdas([1.0, 0.5])
    lp, _ = model.log_proba_ids(seqs)
    rows, targets, _ = scoring.context_rows(model.groups, model.params.keys, seqs, model.vocab_size,
                                            model.tokenizer.bos_id, model.tokenizer.eos_id)
    np.testing.assert_allclose(lp, scoring.log_proba(model.params, rows, targets), atol=1e-12)
    nxt = model.next_logp(seqs[0][:3])
    assert abs(nxt[seqs[0][3]] - lp[3]) < 1e-9


@pytest.mark.parametrize("which", ["window", "mkn", "mkn+window"])
def test_next_log_proba_batch_matches_next_logp(which, tiny_model, tiny_corpus_file, tiny_tok_file,
                                                tiny_lines):
    model = tiny_model if which == "window" else train(
        input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file), order=3,
        context=2 if which == "mkn+window" else None, lambda_tokens=2000)
    seq = model.encode_lines(tiny_lines[:1])[0]
    contexts = [seq[:t] for t in range(len(seq) + 1)] + [seq * 3, [model.tokenizer.eos_id]]
    batch = model.next_log_proba_batch(contexts)
    assert batch.shape == (len(contexts), model.vocab_size)
    for c, row in zip(contexts, batch):
        assert np.allclose(row, model.next_logp(c), atol=1e-12)
    # and the same numbers as the scorer at every target of the sequence
    logp, _ = model.log_proba_ids([seq])
    assert np.allclose(batch[np.arange(len(seq) + 1), seq + [model.tokenizer.eos_id]], logp,
                       atol=1e-10)
