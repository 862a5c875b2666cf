"""Fault injection for outputs and worker pools: an output is never an input, writes go
through links and into special files, `lmkit score --workers N` ends on every failure.

What docs/guarantees.md promises (Outputs, Interruptions), case by case: exit code, one
stderr line, nothing overwritten, nothing left behind, no process left running.
"""
import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lmkit.io import files
from lmkit.errors import InputError, LmkitError, WorkerDiedError
from lmkit.parallel import ordered_map
from cli_helpers import (SCORE_REPEATS, default_sigint, one_error_line, run_cli,
                         wait_for_workers)

ROOT = Path(__file__).resolve().parents[1]


def digest(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def model_copy(tmp_path, tiny_model_dir):
    """A private copy of the tiny model (the session's one must never be touched)."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "m"))


@pytest.fixture
def text(tmp_path, tiny_lines):
    p = tmp_path / "text.txt"
    p.write_text("\n".join(tiny_lines[:50]) + "\n")
    return p


# ---- an output is never an input ---------------------------------------------------------------
@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
def test_score_and_spm_encode_refuse_their_input_as_output(tmp_path, capsys, model_copy, text,
                                                          how):
    out = {"same": text, "symlink": tmp_path / "link.txt", "hardlink": tmp_path / "hard.txt"}[how]
    if how == "symlink":
        out.symlink_to(text)
    if how == "hardlink":
        os.link(text, out)
    before = text.read_bytes()
    code, _, err = run_cli(capsys, "score", model_copy, "--input", text, "--output", out)
    one_error_line(code, err, r"is the same file as the input .*text.txt; .*pick another output")
    code, _, err = run_cli(capsys, "spm-encode", "--model", model_copy, "--input", text,
                           "--output", out)
    one_error_line(code, err, r"is the same file as the input")
    assert text.read_bytes() == before


@pytest.mark.parametrize("verb", ["score", "export-arpa"])
@pytest.mark.parametrize("name", ["params.npz", "manifest.json", "new.out"])
def test_file_outputs_inside_the_model_being_read_are_refused(tmp_path, capsys, model_copy, text,
                                                              verb, name):
    before = digest(model_copy)
    out = model_copy / name
    argv = (["score", model_copy, "--input", text, "--output", out] if verb == "score"
            else ["export-arpa", model_copy, out])
    code, _, err = run_cli(capsys, *argv)
    one_error_line(code, err, r"model .*m being read")
    assert digest(model_copy) == before


def test_model_folder_outputs_never_replace_or_hold_an_input(tmp_path, capsys, model_copy,
                                                             tiny_corpus_file):
    before = digest(model_copy)
    code, _, err = run_cli(capsys, "prune", model_copy, "--threshold", "1e-7", "--output",
                           model_copy)
    one_error_line(code, err, r"is the model folder .*m being read")
    code, _, err = run_cli(capsys, "prune", model_copy, "--threshold", "1e-7", "--output",
                           model_copy / "sub")
    one_error_line(code, err, r"is inside the model folder")
    # a new model in place of the folder that holds its own tokenizer
    code, _, err = run_cli(capsys, "train", "--input", tiny_corpus_file, "--tokenizer",
                           model_copy / "tokenizer.model", "--context", "1", "--output",
                           model_copy)
    one_error_line(code, err, r"holds the input .*tokenizer.model")
    assert digest(model_copy) == before


def test_check_not_input_api(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("x")
    (tmp_path / "l").symlink_to(a)
    with pytest.raises(InputError, match="same file as the input"):
        files.check_output_writable(tmp_path / "l", inputs=[a])
    with pytest.raises(InputError, match="same file as the input"):
        files.atomic_write(a, "y", inputs=[tmp_path / "l"])
    assert a.read_text() == "x"
    files.check_not_input(tmp_path / "b.txt", inputs=[a, None, tmp_path / "missing"])  # fine


# ---- writes go through links; special files are written to ---------------------------------------
def test_score_writes_through_a_symlink(tmp_path, capsys, tiny_model_dir, text):
    real = tmp_path / "real.jsonl"
    real.write_text("keep me\n")
    (tmp_path / "link.jsonl").symlink_to(real.name)
    code, _, _ = run_cli(capsys, "score", tiny_model_dir, "--input", text, "--output",
                         tmp_path / "link.jsonl")
    assert code == 0 and (tmp_path / "link.jsonl").is_symlink()
    assert len(real.read_text().splitlines()) == 50
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.jsonl", "real.jsonl", "text.txt"]


def test_score_output_respects_the_umask(tmp_path, capsys, tiny_model_dir, text):
    old = os.umask(0o022)
    try:
        assert run_cli(capsys, "score", tiny_model_dir, "--input", text, "--output",
                       tmp_path / "o.jsonl")[0] == 0
    finally:
        os.umask(old)
    assert (tmp_path / "o.jsonl").stat().st_mode & 0o777 == 0o644


def test_special_outputs_are_written_to_not_replaced(tmp_path, capsys, tiny_model_dir, text):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    code, out, _ = run_cli(capsys, "score", tiny_model_dir, "--input", text, "--output", fifo)
    reader.join(10)
    assert code == 0 and len(got[0].decode().splitlines()) == 50
    assert fifo.is_fifo() and "wrote" in out
    assert run_cli(capsys, "score", tiny_model_dir, "--input", text, "--output",
                   "/dev/null")[0] == 0
    assert Path("/dev/null").is_char_device()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "text.txt"]


def test_dev_stdout_is_written_through_the_shells_redirect(tmp_path, tiny_model_dir, text):
    """`--output /dev/stdout > out.jsonl`: the scores land in out.jsonl (appended to what the
    shell opened), /dev/stdout stays what it was, the summary line goes to stderr."""
    out = tmp_path / "out.jsonl"
    out.write_text("")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(out, "ab") as f:
        r = subprocess.run([sys.executable, "-m", "lmkit.cli", "score", str(tiny_model_dir),
                            "--input", str(text), "--output", "/dev/stdout"], stdout=f,
                           stderr=subprocess.PIPE, env=env, timeout=60)
    assert r.returncode == 0 and b"wrote /dev/stdout" in r.stderr
    assert [json.loads(x)["index"] for x in out.read_text().splitlines()] == list(range(50))
    assert os.path.islink("/dev/stdout") or Path("/dev/stdout").is_char_device()


def test_full_disk_names_the_path_and_the_fix(tmp_path, capsys, tiny_model_dir, text,
                                              monkeypatch):
    def enospc(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", enospc)
    code, _, err = run_cli(capsys, "score", tiny_model_dir, "--input", text, "--output",
                           tmp_path / "o.jsonl")
    one_error_line(code, err, r"o.jsonl: cannot write \(No space left on device\); nothing was "
                              r"written, free space on that file system or pick another")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["text.txt"]
    monkeypatch.undo()
    code, _, err = run_cli(capsys, "score", tiny_model_dir, "--input", text, "--output",
                           "/dev/full")  # a real ENOSPC, written in place
    one_error_line(code, err, r"/dev/full: cannot write \(No space left on device\)")


def test_full_disk_in_a_nested_folder_names_the_output(tmp_path):
    """A mixture's component failing to write (`lmkit train --solver residual --output
    full/mix` on a full disk) is named under the output, not the removed hidden temp folder."""
    from lmkit.errors import OutputError
    from lmkit.io.store import write_folder

    def inner(tmp):
        raise OSError(errno.ENOSPC, "No space left on device")

    out = tmp_path / "mix"
    with pytest.raises(OutputError) as e:
        write_folder(out, lambda tmp: write_folder(tmp / "components" / "1", inner))
    assert str(e.value).startswith(f"{out}/components/1: cannot write the model (No space left")
    assert ".tmp" not in str(e.value) and list(tmp_path.iterdir()) == []


def test_full_tmpdir_names_the_folder_and_the_fix():
    from lmkit.cli import _os_error_line

    class A:
        verb, spill_dir = "train", "/scratch/x"
    line = _os_error_line(OSError("321173 requested and 76800 written"), A())
    assert line.startswith("/scratch/x: a temporary file could not be written (321173 ")
    assert "free space there, or pass --spill-dir" in line
    A.verb = "vocab"  # e.g. stdout on a full disk: not a temporary file
    assert _os_error_line(OSError(errno.ENOSPC, "No space left on device"), A()) == \
        "No space left on device"


# ---- jsonl fields -------------------------------------------------------------------------------
@pytest.mark.parametrize("record, match", [
    ('{"text": "ok", "id": NaN}', r"record 0: the id field 'id' holds nan, which JSON has no"),
    ('{"text": "ok", "id": 1e400}', r"the id field 'id' holds inf"),
    ('{"text": 5, "id": 1}', r"record 0: the text field 'text' holds a number \(5\), not a "
                             r"string; pick the field holding the text with --text-field"),
    ('{"text": ["a"], "id": 1}', r"holds a list \(\[\"a\"\]\)"),
])
def test_jsonl_fields_json_cannot_hold_are_refused(tmp_path, capsys, tiny_model_dir, record,
                                                   match):
    (tmp_path / "d.jsonl").write_text(record + "\n")
    code, _, err = run_cli(capsys, "score", tiny_model_dir, "--input", tmp_path / "d.jsonl",
                           "--format", "jsonl", "--id-field", "id", "--output",
                           tmp_path / "o.jsonl")
    one_error_line(code, err, match)
    assert not (tmp_path / "o.jsonl").exists()


# ---- worker pools that end ------------------------------------------------------------------------
def _cli(*argv, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "lmkit.cli", *map(str, argv)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, preexec_fn=default_sigint, **kw)


def _running(pid) -> bool:
    """pid exists and is not a zombie (an orphan's reaping is up to whoever is PID 1)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _bad_model(tmp_path, model_copy, how) -> Path:
    if how == "not_a_model":
        d = tmp_path / "notmodel"
        d.mkdir()
        (d / "x").write_text("hi")
        return d
    if how == "truncated":
        data = (model_copy / "params.npz").read_bytes()
        (model_copy / "params.npz").write_bytes(data[:1000])
    if how == "crafted":
        m = json.loads((model_copy / "manifest.json").read_text())
        m["lambdas"] = ["abc"] * len(m.get("lambdas") or [0])
        (model_copy / "manifest.json").write_text(json.dumps(m))
    if how == "crafted_mixture":  # a mixture of itself, with weights that are not numbers
        shutil.copytree(model_copy, model_copy / "components" / "0")
        m = json.loads((model_copy / "manifest.json").read_text())
        m.update(kind="mixture", weights="abc", components=["components/0"])
        (model_copy / "manifest.json").write_text(json.dumps(m))
    return model_copy


@pytest.mark.parametrize("how", ["not_a_model", "truncated", "crafted", "crafted_mixture"])
def test_score_workers_fail_fast_on_a_bad_model(tmp_path, model_copy, text, how):
    model = _bad_model(tmp_path, model_copy, how)
    proc = _cli("score", model, "--input", text, "--output", tmp_path / "o.jsonl",
                "--workers", "2")
    try:
        proc.wait(timeout=30)
        err = proc.stderr.read().decode().strip().splitlines()
        assert proc.returncode == 2 and len(err) == 1 and err[0].startswith("lmkit: error: "), err
        assert not (tmp_path / "o.jsonl").exists()
    finally:
        _kill_group(proc)


def test_score_worker_killed_ends_the_run(tmp_path, tiny_model_dir, tiny_lines):
    big = tmp_path / "big.txt"
    big.write_text("\n".join(tiny_lines * SCORE_REPEATS) + "\n")
    proc = _cli("score", tiny_model_dir, "--input", big, "--output", tmp_path / "o.jsonl",
                "--workers", "2")
    workers = []
    try:
        workers = wait_for_workers(proc)
        time.sleep(0.3)
        os.kill(workers[0], signal.SIGKILL)
        t0 = time.time()
        assert proc.wait(timeout=20) == 2
        took = time.time() - t0
        err = proc.stderr.read().decode().strip().splitlines()
        assert len(err) == 1 and "a scoring worker" in err[0] and "SIGKILL" in err[0], err
        assert took < 10, took
        time.sleep(0.2)
        assert [w for w in workers if Path(f"/proc/{w}").exists()] == []
        assert sorted(p.name for p in tmp_path.iterdir()) == ["big.txt"]
    finally:
        _kill_group(proc)


def test_killed_score_leftover_is_removed_by_the_next_run(tmp_path, capsys, tiny_model_dir, text):
    """A SIGKILLed writer cannot clean up: its temp file is named ``.NAME.tmp-PID-*``, and the
    next write of NAME removes it once PID no longer runs (a live writer's is left alone)."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = tmp_path / f".o.jsonl.tmp-{dead.pid}-abcd1234"
    left.write_text('{"partial"')
    live = tmp_path / f".o.jsonl.tmp-{os.getppid()}-abcd1234"
    live.write_text("")
    assert run_cli(capsys, "score", tiny_model_dir, "--input", text, "--output",
                   tmp_path / "o.jsonl")[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "o.jsonl", "text.txt"]


def _square(x):
    if x == 7:
        raise InputError("seven is refused; pick another number")
    return x * x


def _suicide(x):
    if x == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def _bad_init():
    raise InputError("cannot start; fix the model")


def test_ordered_map_order_errors_and_deaths():
    assert list(ordered_map(_square, range(7), 3)) == [x * x for x in range(7)]
    with pytest.raises(InputError, match="seven is refused"):
        list(ordered_map(_square, range(20), 2))
    t0 = time.time()
    with pytest.raises(WorkerDiedError, match=r"a worker \(pid \d+\) was killed by signal 9"):
        list(ordered_map(_suicide, range(50), 2))
    with pytest.raises(InputError, match="cannot start"):
        list(ordered_map(_square, range(1000), 2, init=_bad_init))
    assert time.time() - t0 < 10
    assert issubclass(WorkerDiedError, LmkitError)


def _twice(x):
    return 2 * x


def test_ordered_map_closed_early_stops_its_workers():
    gen = ordered_map(_twice, range(1000), 2)
    assert next(gen) == 0
    import multiprocessing as mp
    kids = mp.active_children()
    gen.close()
    assert all(not p.is_alive() for p in kids)


def test_score_killed_outright_takes_its_workers_and_leaves_a_temp_the_next_run_removes(
        tmp_path, capsys, tiny_model_dir, tiny_lines, text):
    big = tmp_path / "big.txt"
    big.write_text("\n".join(tiny_lines * SCORE_REPEATS) + "\n")
    proc = _cli("score", tiny_model_dir, "--input", big, "--output", tmp_path / "o.jsonl",
                "--workers", "2")
    workers = []
    try:
        workers = wait_for_workers(proc)
        time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.time() + 5  # PR_SET_PDEATHSIG: the kernel kills them with the parent
        while [w for w in workers if _running(w)] and time.time() < deadline:
            time.sleep(0.05)
        assert [w for w in workers if _running(w)] == []
    finally:
        _kill_group(proc)
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".o.jsonl.tmp-")]
    assert left == [] or left[0].startswith(f".o.jsonl.tmp-{proc.pid}-")
    assert run_cli(capsys, "score", tiny_model_dir, "--input", text, "--output",
                   tmp_path / "o.jsonl")[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.txt", "o.jsonl", "text.txt"]
