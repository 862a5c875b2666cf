"""lmkit score: per-unit scores equal the model's, in input order, for any number of workers;
output is atomic and workers die with the parent."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lmkit.cli import main
from lmkit.docscore import iter_units
from cli_helpers import SCORE_REPEATS, children, default_sigint, wait_for_workers


def read_jsonl(p):
    return [json.loads(x) for x in Path(p).read_text().splitlines()]


def test_line_scores_equal_model_scores_with_one_and_two_workers(tmp_path, tiny_model_dir,
                                                                 tiny_model, tiny_lines):
    lines = tiny_lines[:100] + ["", "Zebra!"] + tiny_lines[100:700]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    for w in (1, 2):
        assert main(["score", tiny_model_dir, "--input", tmp_path / "in.txt", "--workers", w,
                     "--output", tmp_path / f"o{w}.jsonl"]) == 0
    one, two = read_jsonl(tmp_path / "o1.jsonl"), read_jsonl(tmp_path / "o2.jsonl")
    # index = line number; the empty line 100 is no sequence and gets no row (docs/lines.md)
    assert one == two and [r["index"] for r in one] == [i for i in range(len(lines)) if i != 100]
    for r in one[95:104]:
        lp = tiny_model.log_proba(lines[r["index"]])
        assert r["tokens"] == len(lp) and r["nll_nats"] == pytest.approx(-lp.sum(), rel=1e-12)
        assert r["perplexity"] == pytest.approx(math.exp(-lp.mean()))
        n_bytes = len(lines[r["index"]].encode()) + 1
        assert r["bits_per_byte"] == pytest.approx(-lp.sum() / math.log(2) / n_bytes)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_documents_from_text_and_jsonl(tmp_path, tiny_model_dir, tiny_model, tiny_lines):
    (tmp_path / "d.txt").write_text("a b\nc d\n\n\ne f\n")
    units = list(iter_units(input=[str(tmp_path / "d.txt")], unit="document"))
    assert units == [({"index": 0}, ["a b", "c d"]), ({"index": 1}, ["e f"])]
    recs = [{"id": f"doc{i}", "text": "\n".join(tiny_lines[i:i + 3])} for i in range(0, 30, 3)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert main(["score", tiny_model_dir, "--input", tmp_path / "d.jsonl", "--format", "jsonl",
                 "--id-field", "id", "--unit", "document", "--output", tmp_path / "o.jsonl"]) == 0
    out = read_jsonl(tmp_path / "o.jsonl")
    assert [r["id"] for r in out] == [r["id"] for r in recs]
    assert main(["score", tiny_model_dir, "--input", tmp_path / "d.jsonl", "--format", "jsonl",
                 "--id-field", "id", "--unit", "document", "--workers", "2",
                 "--output", tmp_path / "o2.jsonl"]) == 0
    assert read_jsonl(tmp_path / "o2.jsonl") == out  # records cross the worker pipes intact
    lp = np.concatenate([tiny_model.log_proba(x) for x in tiny_lines[3:6]])
    assert out[1]["tokens"] == len(lp) and out[1]["nll_nats"] == pytest.approx(-lp.sum())


def test_bad_inputs_leave_no_output(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "d.jsonl").write_text('{"text": "a"}\n{"body": "b"}\n')
    out = tmp_path / "o.jsonl"
    assert main(["score", tiny_model_dir, "--input", tmp_path / "d.jsonl", "--format", "jsonl",
                 "--output", out]) == 2
    assert "record 1: no text field 'text'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [tmp_path / "d.jsonl"]
    assert main(["score", tiny_model_dir, "--input", tmp_path / "nope.txt", "--output", out]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["score", tiny_model_dir, "--input", tmp_path / "d.jsonl", "--workers", "0",
                 "--output", out]) == 2


def kill_tree(proc, pids=()) -> None:
    """SIGKILL a subprocess started with ``start_new_session`` and every process it started
    (its process group, and ``pids`` in case one left the group): a failed assertion must not
    leave an orphaned ``lmkit score`` behind."""
    for pid in list(pids) + children(proc.pid):
        try:  # only ours: a pid that was reused since belongs to another process group
            if os.getpgid(pid) == proc.pid:
                os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


@pytest.mark.parametrize("sig, rc, word", [(signal.SIGTERM, 143, b"terminated"),
                                           (signal.SIGINT, 130, b"interrupted")])
def test_signal_kills_workers_and_removes_temp_output(tmp_path, tiny_model_dir, tiny_lines, sig,
                                                      rc, word):
    (tmp_path / "big.txt").write_text("\n".join(tiny_lines * SCORE_REPEATS) + "\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "lmkit.cli", "score", str(tiny_model_dir),
                             "--input", str(tmp_path / "big.txt"), "--workers", "2",
                             "--output", str(tmp_path / "o.jsonl")], env=env,
                            stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=default_sigint)
    workers = []
    try:
        workers = wait_for_workers(proc)
        time.sleep(0.3)
        os.kill(proc.pid, sig)
        assert proc.wait(timeout=20) == rc and word in proc.stderr.read()
        deadline = time.time() + 5  # reaped by the parent before it exits; allow the kernel a moment
        while [w for w in workers if Path(f"/proc/{w}").exists()] and time.time() < deadline:
            time.sleep(0.05)
        assert [w for w in workers if Path(f"/proc/{w}").exists()] == []
        assert sorted(p.name for p in tmp_path.iterdir()) == ["big.txt"]
    finally:
        kill_tree(proc, workers)


def test_plain_text_fast_path_equals_the_record_path(tmp_path, tiny_model_dir, tiny_model):
    """Plain text scored line by line skips the per-unit records; its results (bytes of
    non-ASCII lines included) must equal those of the same lines given as jsonl records."""
    lines = ["héllo wörld", "", "naïve café ✓", "  spaces  ", "x" * 50, "日本語のテキスト"] * 700
    (tmp_path / "t.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"text": x}) + "\n" for x in lines))
    assert main(["score", tiny_model_dir, "--input", tmp_path / "t.txt",
                 "--output", tmp_path / "a.jsonl"]) == 0
    assert main(["score", tiny_model_dir, "--input", tmp_path / "t.jsonl", "--format", "jsonl",
                 "--unit", "document", "--output", tmp_path / "b.jsonl"]) == 0
    a, b = read_jsonl(tmp_path / "a.jsonl"), read_jsonl(tmp_path / "b.jsonl")
    # a blank line is no sequence (docs/lines.md): no row, its number skipped
    assert [r["index"] for r in a] == [i for i, x in enumerate(lines) if x]
    assert len(b) == len(lines)
    for r in a:
        s = b[r["index"]]
        assert r["tokens"] == s["tokens"] and r["nll_nats"] == pytest.approx(s["nll_nats"],
                                                                             rel=1e-12)
    a = {r["index"]: r for r in a}
    for k in (0, 2, 5):
        n_bytes = len(lines[k].encode()) + 1
        assert a[k]["bits_per_byte"] == pytest.approx(a[k]["nll_nats"] / math.log(2) / n_bytes)
        assert a[k]["nll_nats"] == pytest.approx(-tiny_model.log_proba(lines[k]).sum(), rel=1e-12)


def test_a_read_error_in_the_reader_thread_is_one_line(tmp_path, tiny_model_dir, tiny_lines,
                                                       capsys):
    good = ("\n".join(tiny_lines * 40) + "\n").encode()
    (tmp_path / "bad.txt").write_bytes(good + b"caf\xe9\n")  # Latin-1, far past the first chunk
    assert main(["score", tiny_model_dir, "--input", tmp_path / "bad.txt",
                 "--output", tmp_path / "o.jsonl"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not valid UTF-8" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.txt"]
    import threading
    assert [t for t in threading.enumerate() if t.name == "lmkit-score-reader"] == []
