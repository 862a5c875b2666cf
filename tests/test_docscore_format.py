"""lmkit score's output bytes: the chunk formatter (one f-string per unit, bytes handed back
by workers) writes exactly what ``json.dumps`` of each row would, on odd text and odd ids, with
one and two workers, on a window model and on an MKN model scored by the compiled walk whose
tables are built up front (``LanguageModel.prepare``)."""
import json

import pytest

from lmkit import docscore
from lmkit.docscore import iter_units, score_file, score_units
from lmkit.load import load as load_model

ODD = ['say "hi" and \'bye\'', "back\\slash \\n \\u0041 not escapes",
       "tab\there\tand there",
       "naïve café — 日本語 😀 ∑", "", "   ", "ctrl \x01 \x1f \x7f chars", "lone \r carriage",
       "trailing spaces   ", "line\u2028sep and\u0085nel", "zero\u200bwidth", "{\"json\": [1]}",
       "x", "\ufeffbom inside"]


def slow_path(model, **where) -> bytes:
    """The reference: each row a dict (``score_units``) written by ``json.dumps``."""
    rows = score_units(model, list(iter_units(**where)))
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


@pytest.fixture(scope="module")
def mkn_dir(tmp_path_factory, tiny_corpus_file, tiny_tok_file):
    from lmkit.train import train
    m = train(input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file), order=3)
    return m.save(tmp_path_factory.mktemp("models") / "mkn3")


@pytest.fixture(scope="module")
def odd_inputs(tmp_path_factory, tiny_lines):
    d = tmp_path_factory.mktemp("odd")
    lines = (ODD + tiny_lines[:40]) * 3
    (d / "t.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ids = ["a\"quote", "back\\slash", "tab\t", "ünï😀", "nl\nin id", 7, -1.5, 1e300, None, True,
           [1, "two"], {"k": "v"}, "", "\u2028"]
    recs = [{"id": ids[i % len(ids)], "text": "\n".join(lines[i:i + 3])}
            for i in range(0, len(lines), 3)]
    recs.append({"id": "empty", "text": ""})
    (d / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return d


@pytest.mark.parametrize("where", [
    dict(name="t.txt"), dict(name="t.txt", unit="document"),
    dict(name="r.jsonl", fmt="jsonl", id_field="id", unit="document"),
    dict(name="r.jsonl", fmt="jsonl", id_field="id", unit="line"),
    dict(name="r.jsonl", fmt="jsonl")])
@pytest.mark.parametrize("which", ["window", "mkn", "mkn-walk"])
def test_output_bytes_equal_json_dumps_of_each_row(tmp_path, tiny_model_dir, mkn_dir,
                                                   odd_inputs, where, which, monkeypatch):
    folder = tiny_model_dir if which == "window" else mkn_dir
    if which == "mkn-walk":  # the compiled walk from the first position (numpy route: "mkn")
        from lmkit.ngram import score as ngram_score
        monkeypatch.setattr(ngram_score, "BUILD_AFTER", 0.0)
    where = dict(where)
    where["input"] = [str(odd_inputs / where.pop("name"))]
    want = slow_path(load_model(folder), **where)
    assert want.count(b"\n") >= 4  # rows (a bytes.splitlines would split at the lone "\r")
    options = {("format" if k == "fmt" else k): v for k, v in where.items()}
    for w in (1, 2):
        score_file(folder, tmp_path / f"o{w}.jsonl", workers=w, progress=False, **options)
        assert (tmp_path / f"o{w}.jsonl").read_bytes() == want


def test_prepare_builds_the_walk_up_front_and_changes_no_number(mkn_dir, tiny_lines,
                                                                 monkeypatch):
    pytest.importorskip("numba")
    from lmkit import scoring
    from lmkit.ngram import score as ngram_score
    if not scoring.USE_COMPILED:
        pytest.skip("compiled scoring switched off")
    n_entries = sum(S.nnz for S in load_model(mkn_dir).params.S)
    monkeypatch.setattr(ngram_score, "BUILD_AFTER", 10 ** 6 / n_entries)  # 1M positions
    seqs = load_model(mkn_dir).encode_lines(tiny_lines[:20])
    cold = load_model(mkn_dir)
    before, _ = cold.log_proba_ids(seqs)  # a few positions: the numpy route
    assert "_mkn_walker" not in cold.params.__dict__
    cold.prepare(0)  # no forecast: nothing built
    assert "_mkn_walker" not in cold.params.__dict__
    cold.prepare(10 ** 5)  # not enough yet
    assert "_mkn_walker" not in cold.params.__dict__
    cold.prepare(10 ** 6)
    assert "_mkn_walker" in cold.params.__dict__
    after, _ = cold.log_proba_ids(seqs)
    assert after.tolist() == pytest.approx(before.tolist(), rel=1e-12, abs=0)


def test_forecast_extrapolates_the_first_chunk(tmp_path):
    chunk = docscore.Chunk(["abcd"] * 10, numbers=list(range(10)))
    seqs = [[1, 2]] * 10  # 30 targets for 50 characters (newlines counted)
    assert docscore._forecast(chunk, seqs, 5000) == 3000
    assert docscore._forecast(chunk, seqs, 0) == 0  # unknown size (a dataset, a pipe)
    assert docscore._forecast(chunk, seqs, 10) == 30  # never below what was read
    (tmp_path / "a.txt").write_text("x" * 100)
    assert docscore._input_bytes([str(tmp_path / "a.txt")]) == 100
    assert docscore._input_bytes(None) == 0
