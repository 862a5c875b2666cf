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
