"""native.py: compiled kernels cached as object code and loaded without numba (issue 21).

The scorer's numbers through every route are pinned against the reference scorer in
test_scoring.py (whichever route this process took); here: the same kernels compiled in-process
by numba, loaded from the object cache, and loaded by a fresh process that never imports numba,
all give the reference numbers; the argument checks; the ELF symbol reader."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lmkit import native

ROOT = Path(__file__).resolve().parent.parent
pytest.importorskip("numba")


@pytest.fixture
def fresh_kernels(monkeypatch, tmp_path):
    """An empty object cache of this test's own and no kernel loaded yet in this process."""
    monkeypatch.setenv("LMKIT_NATIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "_KERNELS", {})
    from lmkit import features
    monkeypatch.setattr(features, "_FAST", features._UNSET)
    return tmp_path / "cache"


def _score(p, seqs):
    """(compiled log-probs, reference log-probs, rows) of ``seqs`` under ``p``, through a new
    scorer (so the kernels are looked up again)."""
    from lmkit import scoring
    from lmkit.features import context_rows
    from test_scoring import BOS, EOS, V
    rows, targets, _, order = context_rows(p.groups, p.keys, seqs, V, BOS, EOS, with_order=True)
    scorer = scoring.SparseScorer(p)
    assert scorer.kernel("union_products") is not None
    return (scorer.log_proba(rows, targets, order), scoring.sparse_log_proba(p, rows, targets),
            scorer.next_logp_batch([r[:100] for r in rows]),
            np.stack([scoring.sparse_next_logp(p, [r[i:i + 1] for r in rows])
                      for i in range(100)]))


@pytest.mark.parametrize("cached", [False, True], ids=["in-process", "object-cache"])
def test_kernels_built_and_loaded_equal_the_reference(fresh_kernels, monkeypatch, cached):
    """Built by numba in this process (no cache), or written to the cache, dropped, and loaded
    back from the file: the scores equal the reference scorer's; key searches included."""
    from lmkit import features, scoring
    from test_scoring import MODELS, seqs_of
    monkeypatch.setattr(native, "USE_CACHE", cached)
    monkeypatch.setattr(scoring, "COMPILED_MIN_POSITIONS", 1)
    monkeypatch.setattr(scoring, "COMPILED_MIN_DISTRIBUTIONS", 1)
    monkeypatch.setattr(features, "COMPILED_MIN_QUERIES", 1)
    p, seqs = MODELS["rich"], seqs_of(600, 5)
    first = _score(p, seqs)
    scoring_kernels = ("fastkeys.find_keys.", "fastkeys.find_ordered.", "fastscore.")
    files = sorted(f for f in fresh_kernels.glob("*.o") if f.name.startswith(scoring_kernels)) \
        if fresh_kernels.exists() else []  # (building MODELS may have cached training kernels)
    assert len(files) == (4 if cached else 0)  # find_keys, find_ordered, union, product rows
    if cached:
        monkeypatch.setattr(native, "_KERNELS", {})
        monkeypatch.setattr(features, "_FAST", features._UNSET)
        loaded = native.kernel("fastscore", files[-1].name.split(".")[1])
        assert loaded is not None and loaded.from_file  # from the file, not numba
        first = _score(p, seqs)
    got, want, batch, one_by_one = first
    assert np.abs(got - want).max() <= 1e-9
    assert np.abs(batch - one_by_one).max() <= 1e-9


def test_a_fresh_process_scores_from_the_cache_without_numba(tmp_path, tiny_model_dir,
                                                             tiny_corpus_file):
    """Run 1 fills the cache (numba compiles); run 2, a new process, imports no numba and gives
    the same total nll (the same floats)."""
    code = ("import contextlib, io, json, sys, lmkit.cli\nfrom lmkit import scoring\n"
            "scoring.COMPILED_MIN_POSITIONS = 1\nout = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n"
            f"    rc = lmkit.cli.main(['eval', {str(tiny_model_dir)!r}, '--input', "
            f"{str(tiny_corpus_file)!r}, '--json'])\nassert rc == 0\n"
            "print(json.dumps([json.loads(out.getvalue())['nll_nats'], 'numba' in sys.modules]))")
    env = dict(os.environ, LMKIT_NATIVE_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def run():
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, cwd=ROOT, timeout=300, check=True).stdout
        return json.loads(out.splitlines()[-1])
    nll1, numba1 = run()
    assert numba1 and list((tmp_path / "cache").glob("*.o"))
    nll2, numba2 = run()
    assert not numba2 and nll2 == nll1


def test_kernel_arguments_are_checked():
    k = native.kernel("fastkeys", "find_ordered")
    a = np.zeros(4, dtype=np.int64)
    with pytest.raises(TypeError, match="takes 5 arguments"):
        k(a, a)
    with pytest.raises(TypeError, match="argument 1 must be a C-contiguous int64 array of 1"):
        k(a, a.astype(np.int32), a, a, np.zeros((2, 4), dtype=np.int64))
    with pytest.raises(TypeError, match="argument 4 must be"):
        k(a, a, a, a, np.zeros((4, 2), dtype=np.int64).T)


def test_undefined_symbols_reads_an_elf_symbol_table():
    cf, _ = __import__("lmkit.fastkeys", fromlist=["x"]).native_kernel("find_ordered")
    obj = cf._library._codegen._tm.emit_object(cf._library._final_module)
    names = native.undefined_symbols(obj)
    if names is None:
        pytest.skip("not an ELF platform: nothing is cached there")
    assert "PyErr_SetString" in names and cf.native_name not in names
    assert not any(n.startswith(("NRT_Allocate", "NRT_MemInfo_alloc")) for n in names)
    assert native.undefined_symbols(b"not an object") is None


def test_a_new_key_replaces_the_kernels_older_files(tmp_path):
    """One file per kernel stays in the cache (older sources' files are removed), by
    temp-and-rename: no temporary is left behind."""
    for key in ("aaa", "bbb"):
        native._write_atomic(tmp_path / f"fastkeys.find_keys.{key}.o", key.encode())
    native._write_atomic(tmp_path / "fastkeys.find_ordered.ccc.o", b"c")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fastkeys.find_keys.bbb.o", "fastkeys.find_ordered.ccc.o"]


def test_a_damaged_cache_file_is_built_again(fresh_kernels, monkeypatch):
    """A cached object cut short or with a changed byte fails its checksum: the kernel is
    compiled again and the file rewritten whole (a fresh compile may name its symbol anew, so
    not byte for byte), never loaded as it is."""
    k = native.kernel("fastkeys", "find_ordered")
    assert k is not None
    (path,) = fresh_kernels.glob("fastkeys.find_ordered.*.o")
    whole = path.read_bytes()
    for damaged in (whole[:len(whole) // 2], whole[:-1] + bytes([whole[-1] ^ 1])):
        path.write_bytes(damaged)
        assert native._load(path, "find_ordered") is None
        monkeypatch.setattr(native, "_KERNELS", {})
        assert native.kernel("fastkeys", "find_ordered") is not None
        assert path.read_bytes() != damaged
        assert native._load(path, "find_ordered") is not None


def test_a_fresh_lmkit_score_of_an_mkn_model_runs_without_numba(tmp_path, tiny_corpus_file,
                                                                 tiny_tok_file):
    """``lmkit score`` of a pure MKN model with the trie walk, the unit cache and the compiled
    rows switched on from the first line (thresholds at 0): run 1 compiles their kernels into an
    empty cache (numba imported); run 2, a new process, imports no numba and runs every one of
    them from its object file; both write the bytes of run 3, the numpy walk, SentencePiece's
    own encode and f-string rows (no compiled code at all)."""
    from lmkit.train import train
    model = train(input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file),
                  order=4).save(tmp_path / "mkn4")
    code = ("import json, sys, lmkit.cli\nfrom lmkit import docscore, native, scoring\n"
            "from lmkit.ngram import score as ngram_score\n"
            "on = sys.argv[1] == 'on'\nscoring.USE_COMPILED = on\nngram_score.BUILD_AFTER = 0.0\n"
            "docscore.COMPILED_ENCODE_BYTES = 0 if on else 1 << 62\n"
            "rc = lmkit.cli.main(['score', sys.argv[2], '--input', sys.argv[3], '--output', "
            "sys.argv[4], '--workers', '1'])\nassert rc == 0\n"
            "print(json.dumps(['numba' in sys.modules, sorted(f'{m}.{n}:{k.from_file}' "
            "for (m, n), k in native._KERNELS.items() if k is not None)]))")
    env = dict(os.environ, LMKIT_NATIVE_CACHE=str(tmp_path / "cache"),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def run(mode, out):
        res = subprocess.run([sys.executable, "-c", code, mode, str(model),
                              str(tiny_corpus_file), str(tmp_path / out)], capture_output=True,
                             text=True, env=env, cwd=ROOT, timeout=600, check=True).stdout
        return json.loads(res.splitlines()[-1]), (tmp_path / out).read_bytes()
    names = ["io.jsonrows.rows", "ngram.score.build", "ngram.score.hash_level0",
             "ngram.score.score", "wordcache.gather", "wordcache.lookup", "wordcache.rehash"]
    (numba1, kernels1), first = run("on", "a.jsonl")
    assert numba1 and kernels1 == [f"{n}:False" for n in names]  # compiled by numba here
    (numba2, kernels2), second = run("on", "b.jsonl")
    assert not numba2 and kernels2 == [f"{n}:True" for n in names]  # loaded from the files
    (numba3, kernels3), plain = run("off", "c.jsonl")
    assert not numba3 and kernels3 == []
    assert first == second == plain and plain.count(b"\n") > 100


_CROSS = """
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from lmkit import native, scoring
from test_scoring import BOS, EOS, MODELS, V, _as_stored, _reference_next_logp, seqs_of
from lmkit.features import context_rows
scoring.COMPILED_MIN_DISTRIBUTIONS = 1
for which in sys.argv[2:]:  # "i4": int32 columns; "u2": a compact folder's uint16 columns
    p = MODELS["rich"] if which == "i4" else _as_stored(MODELS["rich"], False)
    rows = context_rows(p.groups, p.keys, seqs_of(300, 5), V, BOS, EOS)[0]
    k = [r[:100] for r in rows]
    nxt = scoring.next_logp_batch(p, k)  # the product_rows kernel of these columns
    ref = _reference_next_logp(MODELS["rich"], k)
    kern = native.kernel("fastscore", f"product_rows_{which}_i4")
    print(which, float(np.abs(nxt - ref).max()), kern.from_file, flush=True)
"""


def test_kernels_compiled_in_different_processes_load_side_by_side(tmp_path):
    """numba numbers its functions per process, so the same kernel kind compiled first thing
    in two fresh processes defines the same symbol names in both objects
    (``product_rowsB3v12``); loaded from the cache into one process, each must run its own
    code. With one engine for every object the second kernel's inner call resolved to the
    first one's code: the int32 loop on uint16 columns (wrong numbers, or a crash)."""
    env = dict(os.environ, LMKIT_NATIVE_CACHE=str(tmp_path / "cache"))
    script = tmp_path / "cross.py"
    script.write_text(_CROSS)
    for which in ("i4", "u2"):  # each compiled alone, first thing in a fresh process
        subprocess.run([sys.executable, "-c", "import sys; from lmkit import native; "
                        "assert native.kernel('fastscore', sys.argv[1]) is not None",
                        f"product_rows_{which}_i4"], env=env, check=True, timeout=300)
    for order in (("i4", "u2"), ("u2", "i4")):  # both from the cache, in either order
        out = subprocess.run([sys.executable, str(script), str(ROOT / "tests"), *order],
                             env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        got = [line.split() for line in out.stdout.splitlines()]
        assert [g[0] for g in got] == list(order)
        for which, d_next, from_file in got:
            assert from_file == "True" and float(d_next) <= 1e-9, got
