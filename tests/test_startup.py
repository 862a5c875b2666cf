"""Start-up cost (issue 21, docs/speed.md "Start-up"): ``import lmkit.cli`` and the
``spm-encode`` verb import only what they run. Checked in a fresh interpreter (``sys.modules``),
because this test process has imported everything already."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "dask", "datasets", "numba", "scipy", "scipy.sparse", "scipy.linalg", "tqdm",
         "sklearn")


def _imported_after(code: str) -> set:
    """The modules of ``HEAVY`` in ``sys.modules`` after running ``code`` in a fresh Python."""
    probe = code + f"\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_import_lmkit_cli_is_lean():
    assert _imported_after("import lmkit.cli") == set()
    # numpy too: the parser and --help need none of it
    assert _imported_after("import lmkit.cli, sys; assert 'numpy' not in sys.modules") == set()


def test_package_api_is_imported_on_first_use():
    assert _imported_after("import lmkit") == set()
    assert "scipy.sparse" in _imported_after(
        "import lmkit\nassert callable(lmkit.train) and callable(lmkit.evaluate)\n"
        "import lmkit.train, lmkit.evaluate\nassert callable(lmkit.train), lmkit.train\n"
        "assert callable(lmkit.evaluate)\nassert lmkit.LanguageModel.__name__ == 'LanguageModel'")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, tiny_tok):
    return tiny_tok.save(tmp_path_factory.mktemp("tok") / "t")


def test_spm_encode_verb_is_lean(tokenizer, tmp_path):
    text = tmp_path / "in.txt"
    text.write_text("the cat sat\n", encoding="utf-8")
    loaded = _imported_after(
        "import io, contextlib, lmkit.cli\nout = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    rc = lmkit.cli.main(['spm-encode', '--model', {str(tokenizer)!r}, '--input', "
        f"{str(text)!r}])\nassert rc == 0 and out.getvalue().strip(), (rc, out.getvalue())")
    assert loaded == set()


@pytest.fixture(scope="module")
def mkn_dir(tmp_path_factory, tiny_corpus_file, tiny_tok_file):
    from lmkit.train import train
    model = train(input=[str(tiny_corpus_file)], tokenizer=str(tiny_tok_file), order=3)
    return model.save(tmp_path_factory.mktemp("models") / "o3")


@pytest.mark.parametrize("folder", ["tiny_model_dir", "mkn_dir"])
def test_next_verb_imports_no_numba(folder, request):
    """One next-token distribution takes the numpy route, so numba (and the ``scipy.linalg``
    that its first compiled call imports) is never loaded; loading needs ``scipy.sparse``."""
    path = request.getfixturevalue(folder)
    loaded = _imported_after(
        "import io, contextlib, lmkit.cli\nout = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    rc = lmkit.cli.main(['next', {str(path)!r}, '--context', 'the', '--json'])\n"
        "assert rc == 0 and out.getvalue().startswith('[['), (rc, out.getvalue())")
    # older SciPy (1.10, our lower bound) imports scipy.linalg with scipy.sparse itself
    sparse_brings = _imported_after("import scipy.sparse") & {"scipy.linalg"}
    assert not loaded & ({"numba", "scipy.linalg", "torch", "dask", "datasets", "tqdm",
                          "sklearn"} - sparse_brings)


def test_eval_verb_without_a_terminal_imports_no_tqdm(tiny_model_dir, tiny_corpus_file):
    """stderr is a pipe here, so the progress bar is hidden and tqdm never imported; without
    --adapt the adaptive scorer is not imported either."""
    loaded = _imported_after(
        "import io, contextlib, sys, lmkit.cli\nout = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        f"    rc = lmkit.cli.main(['eval', {str(tiny_model_dir)!r}, '--input', "
        f"{str(tiny_corpus_file)!r}, '--json'])\n"
        "assert rc == 0 and 'perplexity' in out.getvalue(), (rc, out.getvalue())\n"
        "assert 'lmkit.adapt' not in sys.modules  # only with --adapt")
    assert not loaded & {"tqdm", "torch", "dask", "datasets", "sklearn"}


@pytest.mark.parametrize("route", ["walk", "numpy"])
def test_score_verb_of_an_mkn_folder_imports_no_scipy(mkn_dir, tiny_corpus_file, route):
    """``lmkit score`` of a pure MKN folder reads the stored arrays as they are, on the compiled
    trie walk (its tables built from the first line, the unit cache and the compiled rows on)
    and on the numpy route (a short job's: ``mkn_log_proba``, SentencePiece, f-string rows):
    no SciPy, no numba (the walk's kernels come from the object cache once run 1 filled it),
    and none of the counting code (``parallel``, ``counts``: the worker pool is ``pool.py``)."""
    walk = route == "walk"
    if walk:  # the walk's kernels are compiled by numba once (then loaded without it)
        pytest.importorskip("numba")
    code = ("import io, contextlib, sys, lmkit.cli\nfrom lmkit import docscore, native, scoring\n"
            "from lmkit.ngram import score as ngram_score\n"
            f"ngram_score.BUILD_AFTER = 0.0\nscoring.USE_COMPILED = {walk}\n"
            f"docscore.COMPILED_ENCODE_BYTES = {0 if walk else 1 << 62}\nout = io.StringIO()\n"
            "with contextlib.redirect_stdout(out):\n"
            f"    rc = lmkit.cli.main(['score', {str(mkn_dir)!r}, '--input', "
            f"{str(tiny_corpus_file)!r}, '--output', {str(mkn_dir.parent / 'o.jsonl')!r}, "
            "'--workers', '1'])\nassert rc == 0, rc\n"
            f"assert native.ready() == {walk}  # the walk ran (from the object cache), or nothing\n"
            "assert 'lmkit.counts' not in sys.modules and 'lmkit.parallel' not in sys.modules")
    _imported_after(code)  # run 1 may compile the kernels into the cache (numba, scipy.linalg)
    assert _imported_after(code) == set()


@pytest.mark.parametrize("preset", [None, "3"])
def test_score_verb_starts_openblas_with_one_thread(mkn_dir, tiny_corpus_file, preset):
    """``lmkit score`` runs no BLAS: numpy's OpenBLAS is loaded with one thread (its helper
    threads would spin for a while after the load), unless the user chose a number."""
    code = ("import io, contextlib, os, sys, lmkit.cli\nassert 'numpy' not in sys.modules\n"
            + (f"os.environ['OPENBLAS_NUM_THREADS'] = {preset!r}\n" if preset else
               "os.environ.pop('OPENBLAS_NUM_THREADS', None)\n")
            + "out = io.StringIO()\nwith contextlib.redirect_stdout(out):\n"
            f"    rc = lmkit.cli.main(['score', {str(mkn_dir)!r}, '--input', "
            f"{str(tiny_corpus_file)!r}, '--output', {str(mkn_dir.parent / 'b.jsonl')!r}])\n"
            "assert rc == 0, rc\n"
            f"assert os.environ['OPENBLAS_NUM_THREADS'] == {preset or '1'!r}, os.environ\n")
    if preset is None:  # numpy's OpenBLAS took it (where threadpoolctl can tell)
        code += ("try:\n    from threadpoolctl import threadpool_info\nexcept ImportError:\n"
                 "    pass\nelse:\n    n = [i['num_threads'] for i in threadpool_info() "
                 "if i.get('internal_api') == 'openblas']\n    assert set(n) <= {1}, n\n")
    _imported_after(code)
