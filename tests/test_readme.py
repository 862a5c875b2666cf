"""The README and docs show commands that exist: every `lmkit ...` line parses with today's CLI,
and the README's two commands are the ones CI and users run."""
import re
import shlex
from pathlib import Path

import pytest

from lmkit.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def lmkit_commands(text: str):
    """`lmkit VERB ...` invocations in code blocks (prompt lines `$ lmkit ...` and pipelines)."""
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line.strip().removeprefix("$ "))
            for part in re.split(r"\s*(?:\||&&)\s*", line):
                part = part.strip()
                m = re.match(r"(?:\S*/)?lmkit (.*)$", part)
                if m and not part.startswith("#") and "..." not in part and "(" not in part:
                    yield part, m.group(1).strip()


CASES = [(doc.name, full, args) for doc in DOCS for full, args in lmkit_commands(doc.read_text())]


def test_docs_show_some_commands():
    assert len(CASES) >= 10


@pytest.mark.parametrize("doc, full, args", CASES, ids=[f"{c[0]}:{c[2][:40]}" for c in CASES])
def test_documented_command_parses(doc, full, args):
    try:
        build_parser().parse_args(shlex.split(args))
    except SystemExit as e:
        pytest.fail(f"{doc}: `{full}` does not parse (exit {e.code})")


def test_readme_has_the_main_and_test_commands():
    text = (ROOT / "README.md").read_text()
    main = text.split("<!-- main-command -->", 1)[1].split("```")[1].strip()
    test = text.split("<!-- test-command -->", 1)[1].split("```")[1].strip()
    assert "lmkit train --output" in main and "lmkit eval" in main and "lmkit generate" in main
    assert "pytest" in test and "pip install" in test
    ci = (ROOT / ".ci" / "run").read_text()
    assert "test-command" in ci


def test_default_model_reproduces_the_readme_perplexity(shakespeare_texts, monkeypatch):
    """`lmkit train` + `lmkit eval` on the built-in corpus give the README's numbers (about 15 s).

    Training is deterministic for a seed: the tokenizer's sample is seeded, counts are exact
    integers and the solve is closed form, so the integers must match exactly and the
    perplexity may move only by float rounding (summation order across numpy/BLAS builds:
    ~1e-12 relative); 1e-7 relative still catches any change to the math or the data."""
    monkeypatch.setenv("LMKIT_CACHE", str(shakespeare_texts[0].parents[2]))  # the fetched cache
    import lmkit
    text = (ROOT / "README.md").read_text()
    shown = float(re.search(r"# = lmkit eval: ([0-9.]+)", text).group(1))
    row = re.search(r"\*\*default\*\*.*\| \*\*([0-9.]+)\*\* \| \*\*([0-9.]+)\*\* \|", text)
    model = lmkit.train(vocab_size=4096, seed=0)
    r = lmkit.evaluate(model)  # the default split, as `lmkit eval DIR` uses it: test
    assert (r["sequences"], r["tokens"], r["bytes"]) == (10724, 128765, 378905)
    assert r["perplexity"] == pytest.approx(73.9054586673, rel=1e-7)
    assert r["nll_nats"] == pytest.approx(554048.32824, rel=1e-7)
    # the numbers the README prints are these, rounded
    assert f"{r['perplexity']:.3f}" == f"{shown:.3f}"
    assert (f"{r['perplexity']:.2f}", f"{r['bits_per_byte']:.4f}") == row.groups()


def test_lower_bounds_match_pyproject():
    """.ci/lower-bounds tests exactly the minimum versions pyproject.toml declares."""
    pins = dict(line.split("==") for line in
                (ROOT / ".ci" / "lower-bounds.txt").read_text().split() if "==" in line)
    declared = dict(re.findall(r'"([a-z_-]+)>=([0-9.]+)"',
                               (ROOT / "pyproject.toml").read_text()
                               .split("dependencies = [")[1].split("]")[0]))
    assert pins == declared
