"""Fault injection: signals, worker failures, full disks, read-only outputs, hostile model folders.

Each case asserts what docs/guarantees.md promises: exit code, a single stderr line, nothing
deleted, nothing left behind, no process left running.
"""
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lmkit.io import files
from lmkit.io import store
from lmkit.errors import InputError, ModelFormatError, OutputError
from lmkit.model import LanguageModel
from cli_helpers import default_sigint, one_error_line, run_cli

ROOT = Path(__file__).resolve().parents[1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead: it only waits for its (gone) parent to reap it
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except OSError:
        return True


# ---- signals and worker failures during counting (real processes) ----------------------------
# The script runs `lmkit train` with 2 workers whose counting is slowed (fork copies the patch),
# and each worker records its pid, so the test knows when counting runs and whom to check.
SCRIPT = textwrap.dedent("""
    import os, sys, time
    import lmkit.parallel as par
    real = par.count_lines
    mode, pids = sys.argv[1], sys.argv[2]

    def first(marker):  # True in exactly one worker: the one that creates the marker
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
            return True
        except FileExistsError:
            return False

    def slow(lines, tok, groups, threads=None):
        open(os.path.join(pids, str(os.getpid())), "w").close()
        if mode == "failall" or mode == "fail" and first(os.path.join(pids, "..", "failer")):
            raise OSError(28, "No space left on device", "/spill/part00000.npz")
        time.sleep(0.2)
        return real(lines, tok, groups, threads)

    par.count_lines = slow
    from lmkit.cli import main
    sys.exit(main(sys.argv[3:]))
""")


_STARTED: list = []


@pytest.fixture(autouse=True)
def kill_leftovers():
    """Whatever a failing test leaves running is killed (group and recorded workers)."""
    yield
    while _STARTED:
        proc, pids = _STARTED.pop()
        for pid in [proc.pid] + [int(p.name) for p in pids.iterdir()]:
            try:
                os.killpg(pid, signal.SIGKILL) if pid == proc.pid else os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        proc.wait(timeout=5)


def start_training(tmp_path, tiny_corpus_file, tiny_tok_file, mode="slow"):
    pids = tmp_path / "pids"
    pids.mkdir()
    spill = tmp_path / "spill"
    spill.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), TMPDIR=str(spill))
    argv = ["train", "--input", str(tiny_corpus_file), "--tokenizer", str(tiny_tok_file),
            "--context", "1", "--lambdas", "1", "--workers", "2", "--chunk-lines", "5",
            "--max-memory", "1", "--output", str(tmp_path / "out")]
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, mode, str(pids), *argv], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,  # its own process group, as a terminal's job
                            preexec_fn=default_sigint)
    _STARTED.append((proc, pids))
    return proc, pids, spill


def wait_for_workers(proc, pids, n=2, timeout=30):
    deadline = time.monotonic() + timeout
    while len(list(pids.iterdir())) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "workers never started"
        time.sleep(0.02)
    return [int(p.name) for p in pids.iterdir()]


def assert_clean_end(proc, pids, spill, tmp_path, code, message, limit=8.0):
    """The run ends with ``code`` and ``message``, no process or file left. ``limit``: seconds
    to stop, generous because the machines that run this are shared (a hang takes forever)."""
    t0 = time.monotonic()
    out, err = proc.communicate(timeout=10)
    assert time.monotonic() - t0 < limit, f"took {time.monotonic() - t0:.1f} s to stop"
    assert proc.returncode == code, err
    assert err.strip().splitlines()[-1:] == [message] and "Traceback" not in err, err
    deadline = time.monotonic() + 1
    while any(alive(int(p.name)) for p in pids.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not [p.name for p in pids.iterdir() if alive(int(p.name))], "workers survived"
    assert list(spill.iterdir()) == [], "spill files left behind"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pids", "spill"]  # no model, no temp


@pytest.mark.parametrize("sig, code, message", [
    (signal.SIGINT, 130, "lmkit: interrupted"),  # Ctrl-C: the whole process group gets it
    (signal.SIGTERM, 143, "lmkit: terminated"),
], ids=["SIGINT", "SIGTERM"])
def test_signal_during_counting_stops_everything(tmp_path, tiny_corpus_file, tiny_tok_file,
                                                 sig, code, message):
    proc, pids, spill = start_training(tmp_path, tiny_corpus_file, tiny_tok_file)
    wait_for_workers(proc, pids)
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)
    else:
        os.kill(proc.pid, sig)
    assert_clean_end(proc, pids, spill, tmp_path, code, message)


def test_parent_killed_takes_workers_with_it(tmp_path, tiny_corpus_file, tiny_tok_file):
    proc, pids, spill = start_training(tmp_path, tiny_corpus_file, tiny_tok_file)
    workers = wait_for_workers(proc, pids)
    proc.kill()
    proc.communicate(timeout=10)
    deadline = time.monotonic() + 2
    while any(alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not [p for p in workers if alive(p)], "workers outlived a SIGKILLed parent"


@pytest.mark.parametrize("mode", ["fail", "failall"])
def test_worker_error_is_one_line_and_stops_everything(tmp_path, tiny_corpus_file, tiny_tok_file,
                                                       mode):
    proc, pids, spill = start_training(tmp_path, tiny_corpus_file, tiny_tok_file, mode)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 2, err
    assert err.strip().splitlines()[-1] == ("lmkit: error: /spill/part00000.npz: "
                                           "No space left on device") and "Traceback" not in err
    assert not [p.name for p in pids.iterdir() if alive(int(p.name))]
    assert list(spill.iterdir()) == []
    assert not (tmp_path / "out").exists()


def test_spill_enospc_is_one_error_and_leaves_nothing(tmp_path, tiny_tok, tiny_lines, monkeypatch):
    from lmkit import parallel
    from lmkit.features import make_groups

    def full(c, path):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(parallel, "save_counts", full)
    with pytest.raises(OutputError, match="cannot spill partial counts \\(No space left"):
        parallel.count_corpus_parallel(tiny_lines, tiny_tok, make_groups(1), chunk_lines=20,
                                       workers=1, max_memory=1, spill_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


# ---- output safety ---------------------------------------------------------------------------
def test_webapp_folder_with_a_manifest_is_never_replaced(tmp_path, tiny_corpus_file, tiny_tok_file,
                                                         capsys):
    app = tmp_path / "webapp"
    (app / "src").mkdir(parents=True)
    (app / "manifest.json").write_text("{}")
    (app / "src" / "app.js").write_text("x")
    code, out, err = run_cli(capsys, "train", "--input", tiny_corpus_file, "--tokenizer",
                             tiny_tok_file, "--context", "1", "--output", app)
    one_error_line(code, err, "webapp: exists and is not a model folder")
    assert (app / "src" / "app.js").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["webapp"]


def test_replacing_a_model_says_so(tiny_model, tmp_path, capsys):
    path = tiny_model.save(tmp_path / "m")
    tiny_model.save(path)
    assert "replacing the lmkit model folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_replace_interrupted_between_renames_is_recovered(tiny_model, tmp_path, monkeypatch):
    """A kill between the two renames of the fallback replace: the next load finds the model."""
    path = tiny_model.save(tmp_path / "m")
    before = (path / "params.npz").read_bytes()
    # what a SIGKILL after the first rename leaves (pid 999999999 no longer runs)
    old = tmp_path / ".m.old-999999999-abc"
    old.mkdir()
    os.replace(path, old / "m")
    stale = tmp_path / ".m.tmp-999999999-def"
    stale.mkdir()
    (stale / "params.npz").write_bytes(b"half")
    model = LanguageModel.load(path)
    assert model.vocab_size == tiny_model.vocab_size
    assert (path / "params.npz").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_replace_is_one_atomic_exchange(tiny_model, tmp_path, monkeypatch):
    if files._RENAMEAT2 is None:
        pytest.skip("no renameat2(RENAME_EXCHANGE) on this system")
    path = tiny_model.save(tmp_path / "m")
    monkeypatch.setattr(os, "replace", lambda *a: pytest.fail("replace must not use os.replace"))
    tiny_model.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    LanguageModel.load(path)


def test_outputs_respect_the_umask(tiny_model, tiny_tok, tmp_path):
    old = os.umask(0o022)
    try:
        path = tiny_model.save(tmp_path / "m")
        f = files.atomic_write(tmp_path / "f.txt", "x")
        tok = tiny_tok.save(tmp_path / "tok")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o755
    assert (path / "params.npz").stat().st_mode & 0o777 == 0o644
    assert f.stat().st_mode & 0o777 == 0o644 and tok.stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("case, match", [
    ("parent_is_file", r"is a file, not a folder"),
    ("dangling", r"dangling symbolic link"),
    ("folder", r"is a folder; pass a file path"),
    ("socket", r"is not a regular file"),
    ("readonly", r"cannot write in .*Read-only file system"),
])
def test_unwritable_file_outputs_fail_before_work(tiny_tok_file, tmp_path, capsys, monkeypatch,
                                                  case, match):
    (tmp_path / "in.txt").write_text("hello\n")
    out = {"parent_is_file": tmp_path / "in.txt" / "out.txt", "dangling": tmp_path / "link",
           "folder": tmp_path / "dir", "socket": tmp_path / "sock",
           "readonly": tmp_path / "ro" / "out.txt"}[case]
    if case == "dangling":
        out.symlink_to(tmp_path / "nowhere")
    if case == "folder":
        out.mkdir()
    if case == "socket":  # /dev/null and FIFOs are written to (test_faults_output.py)
        import socket
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(out))
        sock.close()
    if case == "readonly":  # root ignores permission bits: simulate the file system's answer
        def erofs(*a, **k):
            raise OSError(errno.EROFS, "Read-only file system")
        monkeypatch.setattr(files.tempfile, "mkstemp", erofs)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run_cli(capsys, "spm-encode", "--model", tiny_tok_file,
                           "--input", tmp_path / "in.txt", "--output", out)
    one_error_line(code, err, match)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    with pytest.raises(OutputError, match=match):
        files.check_output_writable(out)


def test_full_disk_leaves_no_partial_file(tmp_path, monkeypatch):
    (tmp_path / "out.txt").write_text("old")

    def full(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputError, match=r"out.txt: cannot write \(No space left on device\)"):
        files.atomic_write(tmp_path / "out.txt", full)
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    assert (tmp_path / "out.txt").read_text() == "old"


def test_model_output_checked_before_training(tmp_path, tiny_corpus_file, tiny_tok_file, capsys,
                                              monkeypatch):
    monkeypatch.setattr(sys.modules["lmkit.train"], "train", lambda **k: pytest.fail("trained before the check"))
    (tmp_path / "f").write_text("x")
    code, _, err = run_cli(capsys, "train", "--input", tiny_corpus_file, "--output",
                           tmp_path / "f" / "model")
    one_error_line(code, err, r"is a file, not a folder")


# ---- unreadable inputs -----------------------------------------------------------------------
def test_input_errors_are_reported_as_what_they_are(tiny_tok_file, tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    code, _, err = run_cli(capsys, "spm-encode", "--model", tiny_tok_file, "--input", loop)
    one_error_line(code, err, r"loop: cannot read \(Too many levels of symbolic links\)")
    code, _, err = run_cli(capsys, "spm-encode", "--model", tiny_tok_file, "--input", tmp_path)
    one_error_line(code, err, r"is a folder; pass a file")
    code, _, err = run_cli(capsys, "train", "--input", str(loop), "--output", tmp_path / "m")
    one_error_line(code, err, r"loop: .*symbolic link")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code, _, err = run_cli(capsys, "train", "--input", str(fifo), "--output", tmp_path / "m")
    one_error_line(code, err, r"fifo: is a FIFO .*save it to a file")


def test_unreadable_subfolder_is_an_error(tmp_path, monkeypatch):
    from lmkit import corpus
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("x\n")
    real = os.scandir

    def denied(path="."):
        if str(path).endswith("sub"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(corpus.os, "scandir", denied)
    with pytest.raises(InputError, match=r"sub: cannot read \(Permission denied\)"):
        corpus.load_corpus(input=[str(tmp_path / "d")])


def test_decode_takes_only_ascii_decimal_ids(tiny_tok_file, tmp_path, capsys):
    for bad in ("1_000", "٣٤٥", "５００", "+5", "0x10"):
        (tmp_path / "ids.txt").write_text(bad + "\n", encoding="utf-8")
        code, _, err = run_cli(capsys, "spm-decode", "--model", tiny_tok_file,
                               "--input", tmp_path / "ids.txt")
        one_error_line(code, err, "not a list of integer ids")


# ---- hostile model folders -------------------------------------------------------------------
def write_arrays(d: Path, arrays: dict, fix_manifest=None) -> None:
    """Replace params.npz and re-hash it, as an attacker would (the hash is not a signature)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    blob = buf.getvalue()
    (d / "params.npz").write_bytes(blob)
    m = json.loads((d / "manifest.json").read_text())
    m["arrays"].update(sha256=store.sha256_bytes(blob), bytes=len(blob))
    if fix_manifest:
        fix_manifest(m)
    (d / "manifest.json").write_text(json.dumps(m))


def load_arrays(d: Path) -> dict:
    """The folder's arrays in the plain layout (compact dtypes expanded; load reads both)."""
    with np.load(d / "params.npz") as z:
        a = {k: np.array(v) for k, v in
             store._expand_compact({k: z[k] for k in z.files}, "params.npz").items()}
    for k in list(a):  # values and columns too (load keeps them as stored until first use)
        if k.startswith("S") and k.endswith("_data"):
            a[k] = a[k].astype(np.float64)
        elif k.startswith("S") and k.endswith("_indices"):
            a[k] = a[k].astype(a[k[:-len("_indices")] + "_indptr"].dtype)
    return a


def edit(key, fn):
    def apply(a):
        a[key] = fn(a[key].copy())
        return a
    return apply


def setitem(i, v):
    def f(x):
        x[i] = v
        return x
    return f


HOSTILE = {
    "index_out_of_range": (edit("S0_indices", setitem(0, 10**6)), r"column indices outside"),
    "negative_index": (edit("S0_indices", setitem(0, -5)), r"column indices outside"),
    "indptr_not_monotone": (edit("S0_indptr", setitem(5, 10**6)), r"indptr is not monotone"),
    "indptr_short": (edit("S0_indptr", lambda x: x[:-3]), r"indptr has"),
    "nan_in_S": (edit("S0_data", setitem(0, np.nan)), r"NaN or infinite"),
    "nan_q": (edit("q", setitem(0, np.nan)), r"'q' must be finite"),
    "zero_q": (edit("q", setitem(0, 0.0)), r"'q' must be finite, > 0"),
    "negative_q": (edit("q", setitem(0, -0.1)), r"'q' must be finite, > 0"),
    "inf_lambda": (edit("lambdas", setitem(0, np.inf)), r"'lambdas' must be 2 finite"),
    "short_lambdas": (edit("lambdas", lambda x: x[:1]), r"'lambdas' must be 2 finite"),
    "complex_q": (edit("q", lambda x: x.astype(np.complex128)), r"dtype <c16"),
    "string_q": (edit("q", lambda x: x.astype(str)), r"dtype <U"),
    "object_q": (edit("q", lambda x: x.astype(object)), r"Python objects"),
    "wrong_shape": (edit("S0_shape", lambda x: x + 1), r"shape \[\d+, \d+\] but the manifest"),
    "unsorted_columns": (edit("S0_indices", lambda x: x[::-1].copy()), r"not sorted|outside"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_arrays_are_refused_before_scipy(tiny_model_dir, tmp_path, capsys, case):
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    change, match = HOSTILE[case]
    write_arrays(d, change(load_arrays(d)))  # object_q: np.savez pickles it; lmkit must refuse
    with pytest.raises(ModelFormatError, match=match):
        LanguageModel.load(d)
    code, out, err = run_cli(capsys, "generate", d, "--max-tokens", "3")
    one_error_line(code, err, match)


@pytest.mark.parametrize("change, match", [
    (lambda m: m.update(groups=m["groups"][:1]), r"'lambdas' must be 1 finite|do not belong"),
    (lambda m: m.update(groups=m["groups"][:1], lambdas=m["lambdas"][:1]), r"do not belong"),
    (lambda m: m.update(config=[1, 2]), r"'config' must be an object, got list"),
    (lambda m: m.update(lambdas=[1, float("nan")]), r"'lambdas' must be 2 finite"),
    (lambda m: m.update(vocab_size="300"), r"'vocab_size' must be an integer"),
    (lambda m: m.update(groups=["window1", "bogus"]), r"unknown feature group 'bogus'"),
    (lambda m: m.update(kind="magic"), r"'kind' must be 'sparse' or 'dense'"),
    (lambda m: m["arrays"].update(bytes=10), r"corrupt or truncated \(\d+ bytes, expected 10\)"),
])
def test_hostile_manifests_are_refused(tiny_model_dir, tmp_path, change, match):
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    write_arrays(d, load_arrays(d), change)
    with pytest.raises(ModelFormatError, match=match):
        LanguageModel.load(d)


@pytest.mark.parametrize("name", ["params.npz", "manifest.json", "tokenizer.model"])
def test_special_files_in_a_model_folder_are_refused(tiny_model_dir, tmp_path, name):
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    (d / name).unlink()
    (d / name).symlink_to("/dev/zero")
    t0 = time.monotonic()
    with pytest.raises(ModelFormatError, match="not a regular file"):
        LanguageModel.load(d)
    (d / name).unlink()
    os.mkfifo(d / name)  # opening must not block waiting for a writer
    with pytest.raises(ModelFormatError, match="not a regular file"):
        LanguageModel.load(d)
    (d / name).unlink()
    (d / name).mkdir()
    with pytest.raises(ModelFormatError, match="is a folder, not a regular file"):
        LanguageModel.load(d)
    assert time.monotonic() - t0 < 2


def test_oversized_and_compressed_arrays_are_refused(tiny_model_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    buf = io.BytesIO()
    np.savez_compressed(buf, **load_arrays(d))
    blob = buf.getvalue()
    (d / "params.npz").write_bytes(blob)
    m = json.loads((d / "manifest.json").read_text())
    m["arrays"].update(sha256=store.sha256_bytes(blob), bytes=len(blob))
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelFormatError, match="arrays larger than the file|not a stored .npy"):
        LanguageModel.load(d)
    # a header claiming a huge shape must not allocate it
    with zipfile.ZipFile(d / "params.npz", "w") as z:
        header = b"\x93NUMPY\x01\x00" + b"v\x00" + (
            "{'descr': '<f8', 'fortran_order': False, 'shape': (10000000000000,), }"
            .ljust(117) + "\n").encode()
        z.writestr("q.npy", header + b"\x00" * 16)
    blob = (d / "params.npz").read_bytes()
    m["arrays"].update(sha256=store.sha256_bytes(blob), bytes=len(blob))
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelFormatError, match=r"array 'q': 16 data bytes for shape"):
        LanguageModel.load(d)


# ---- Python API: errors name the parameter -----------------------------------------------------
def test_api_scoring_inputs(tiny_model):
    V = tiny_model.vocab_size
    with pytest.raises(InputError, match="lines must be an iterable of str, not a str"):
        tiny_model.perplexity("abc")
    with pytest.raises(InputError, match="no non-empty lines"):
        tiny_model.perplexity([])
    with pytest.raises(InputError, match="no non-empty lines"):
        tiny_model.perplexity([""])
    with pytest.raises(InputError, match=r"lines\[1\] must be str, not int"):
        tiny_model.perplexity(["a", 3])
    for bad in ([V + 10**5], [-1], [1.5], ["a"]):
        with pytest.raises(InputError, match=rf"prefix_ids: .* must be token ids in \[0, {V}\)"):
            tiny_model.next_logp(bad)
    with pytest.raises(InputError, match="lone surrogate"):
        tiny_model.log_proba("a\ud800b")
    with pytest.raises(InputError, match="text must be str"):
        tiny_model.log_proba(b"abc")


@pytest.mark.parametrize("kw, match", [  # the ranges live in config.SampleConfig
    ({"seed": -1}, r"seed must be >= 0, got -1"),
    ({"seed": 1.5}, r"seed must be an integer, got float 1.5"),
    ({"temperature": float("inf")}, r"temperature must be a finite number, got inf"),
    ({"temperature": 1e-320}, r"temperature 1e-320 is too small"),
    ({"temperature": float("nan")}, r"temperature must be a finite number, got nan"),
    ({"top_k": 2.5}, r"top_k must be an integer, got float 2.5"),
    ({"top_p": float("nan")}, r"top_p must be a finite number"),
    ({"max_tokens": "3"}, r"max_tokens must be an integer, got str '3'"),
    ({"num_samples": True}, r"num_samples must be an integer, got bool True"),
])
def test_api_sampling_inputs(tiny_model, kw, match):
    with pytest.raises(InputError, match=match):
        tiny_model.sample("a", **{"max_tokens": 2, **kw})


def test_unk_is_never_sampled(tiny_model, monkeypatch):
    V = tiny_model.vocab_size
    unk = tiny_model.tokenizer.unk_id

    def unk_only(prefix):  # a model that wants nothing but <unk>
        logp = np.full(V, -50.0)
        logp[unk] = 0.0
        logp[tiny_model.tokenizer.eos_id] = -100.0  # so greedy must pick a real token
        return logp

    monkeypatch.setattr(tiny_model, "next_logp", unk_only)
    (text,) = tiny_model.sample("", max_tokens=20, temperature=0)
    assert "\u2047" not in text and "<unk>" not in text and len(text) > 0


def test_tokenizer_files_are_untrusted_too(tmp_path, tiny_tok):
    from lmkit.tokenizer import Tokenizer
    (tmp_path / "zero.model").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "fifo.model")
    for name in ("zero.model", "fifo.model"):
        with pytest.raises(InputError, match="(device|FIFO).*not a regular file"):
            Tokenizer.load(tmp_path / name)
    with pytest.raises(InputError, match=r"vocab_size must be an integer, got '512'"):
        Tokenizer.train(["a b c"], vocab_size="512")
    (tmp_path / "p.model").mkdir()  # PREFIX.model is a folder: refused before anything is written
    with pytest.raises(OutputError, match=r"p.model: is a folder"):
        tiny_tok.save(tmp_path / "p")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.model", "p.model", "zero.model"]


def test_a_model_that_could_not_be_loaded_is_never_written(tiny_model, tmp_path):
    bad = LanguageModel(tiny_model.tokenizer,
                        tiny_model.params.with_lambdas([1.0, float("nan")]))
    with pytest.raises(InputError, match=r"not written, the model could not be loaded back: .*"
                                         r"'lambdas' must be 2 finite"):
        bad.save(tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("special", ["zero", "fifo"])
def test_model_dispatch_reads_the_manifest_as_untrusted_input(tiny_model_dir, tmp_path, capsys,
                                                              special):
    """`lmkit eval/generate/score` pick the model kind from the manifest before loading: that
    peek must be bounded too (a /dev/zero or FIFO manifest ends in one line, not a hang)."""
    from lmkit.cli import main
    from lmkit.load import load
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    (d / "manifest.json").unlink()
    if special == "zero":
        (d / "manifest.json").symlink_to("/dev/zero")
    else:
        os.mkfifo(d / "manifest.json")
    t0 = time.monotonic()
    with pytest.raises(ModelFormatError, match="not a regular file"):
        load(d)
    assert main(["eval", str(d)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a regular file" in err[0]
    assert time.monotonic() - t0 < 5
