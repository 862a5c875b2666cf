"""io/scratch.py: temporary folders carry an owner marker; the sweep removes those of stopped
lmkit processes on this host, and nothing else (no marker, a garbage marker, another host, a
live owner, a symlink, a file)."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmkit.io import scratch
from lmkit.io.scratch import MARKER, make_temp_dir, owner_record, sweep_stale

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dead_record():
    """The owner record of a process that ran (start time read while it ran) and has exited."""
    p = subprocess.Popen(["sleep", "30"])
    try:
        rec = owner_record(p.pid)
    finally:
        p.kill()
        p.wait()
    assert rec["start"] is not None or not os.path.exists("/proc/self/stat")
    return rec


def _folder(parent: Path, name: str, marker=None, raw: bytes | None = None) -> Path:
    """``parent/name`` with a data file, and ``marker`` (a dict, as JSON) or ``raw`` bytes as
    its owner marker (neither: no marker)."""
    d = parent / name
    d.mkdir()
    (d / "ids.int32").write_bytes(b"\0" * 64)
    if marker is not None:
        raw = json.dumps(marker).encode()
    if raw is not None:
        (d / MARKER).write_bytes(raw)
    return d


def _sweep(parent):
    lines = []
    removed = sweep_stale(parent, log=lines.append)
    return removed, lines


def test_make_temp_dir_writes_this_process_as_owner(tmp_path):
    d = make_temp_dir("lmkit-rich-", dir=tmp_path)
    assert d.parent == tmp_path and d.name.startswith("lmkit-rich-")
    assert (d.stat().st_mode & 0o777) == 0o700
    m = json.loads((d / MARKER).read_text())
    assert m["pid"] == os.getpid() and m["host"] == scratch.socket.gethostname()
    assert m["format"] == "lmkit-temp-owner" and m["version"] == 1
    if os.path.exists("/proc/self/stat"):
        assert m["start"] == scratch._proc_stat(os.getpid())[1]
    assert sorted(p.name for p in d.iterdir()) == [MARKER]  # no temp file of the marker left
    with pytest.raises(ValueError, match=r"prefix 'tmp-'.*add it to scratch.PREFIXES"):
        make_temp_dir("tmp-", dir=tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [d.name]


def test_a_folder_left_by_an_exited_process_is_swept(tmp_path):
    """A real process makes its folder (with data) and exits without removing it (as SIGKILL
    leaves it): the sweep removes it and says so in one line."""
    code = ("import sys; from lmkit.io.scratch import make_temp_dir; "
            "d = make_temp_dir('lmkit-rich-', dir=sys.argv[1]); (d / 'ids.int32').write_bytes(b'x' * 4096); "
            "print(d)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True)
    left = Path(out.stdout.strip())
    pid = json.loads((left / MARKER).read_text())["pid"]
    assert left.is_dir()
    removed, lines = _sweep(tmp_path)
    assert removed == [left] and not left.exists() and list(tmp_path.iterdir()) == []
    assert lines == [f"lmkit: removed a temporary folder left by a stopped lmkit process "
                     f"(pid {pid}): {left}"]


def test_the_folder_of_a_live_owner_is_kept(tmp_path):
    mine = make_temp_dir("lmkit-chain-", dir=tmp_path)
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        theirs = _folder(tmp_path, "lmkit-spill-live", owner_record(sleeper.pid))
        assert _sweep(tmp_path) == ([], [])
        assert (mine / MARKER).is_file() and (theirs / "ids.int32").is_file()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert _sweep(tmp_path)[0] == [theirs]  # once it has stopped
    assert mine.is_dir()


def test_a_killed_owner_not_yet_reaped_has_stopped(tmp_path):
    """A zombie (killed, its parent has not waited for it yet) will never remove its folder."""
    p = subprocess.Popen(["sleep", "30"])
    try:
        d = _folder(tmp_path, "lmkit-model-zombie", owner_record(p.pid))
        os.kill(p.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (scratch._proc_stat(p.pid) or ("Z",))[0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        if scratch._proc_stat(p.pid) is None:
            pytest.skip("no /proc: a zombie cannot be told from a live process")
        assert _sweep(tmp_path)[0] == [d]
    finally:
        p.kill()
        p.wait()


def test_a_reused_pid_is_not_the_owner(tmp_path):
    """The pid runs, but it is another process (another start time): the owner has stopped.
    With no start time recorded (no /proc where it was made) a running pid counts as the owner."""
    if scratch._proc_stat(os.getpid()) is None:
        pytest.skip("no /proc: start times unknown")
    rec = owner_record()
    reused = _folder(tmp_path, "lmkit-compact-reused", {**rec, "start": rec["start"] + 1})
    unknown = _folder(tmp_path, "lmkit-compact-unknown", {**rec, "start": None})
    assert _sweep(tmp_path)[0] == [reused]
    assert unknown.is_dir()


def test_an_earlier_boot_means_stopped_another_pid_namespace_means_unknown(tmp_path, dead_record):
    if scratch._boot_id() is None:
        pytest.skip("no boot id")
    rec = owner_record()  # this very process: alive, unless the boot id says otherwise
    rebooted = _folder(tmp_path, "lmkit-ids-rebooted", {**rec, "boot": "another-boot"})
    other_ns = _folder(tmp_path, "lmkit-ids-otherns", {**dead_record, "pid_ns": "pid:[1]"})
    removed, _ = _sweep(tmp_path)
    assert removed == [rebooted] and other_ns.is_dir()


@pytest.mark.parametrize("raw", [
    None,                                    # no marker at all
    b"",                                     # empty (killed while writing it)
    b"{not json",
    b"\xff\xfe garbage",
    b"[1, 2]",
    b'{"host": "H", "pid": 1}',              # no format, version
    "wrong format", "wrong version", "pid string", "pid bool", "pid zero", "start negative",
    "host number", "too large",
], ids=lambda r: str(r)[:20])
def test_a_marker_that_is_not_ours_keeps_the_folder(tmp_path, dead_record, raw):
    bad = {"wrong format": {**dead_record, "format": "other"},
           "wrong version": {**dead_record, "version": 2},
           "pid string": {**dead_record, "pid": str(dead_record["pid"])},
           "pid bool": {**dead_record, "pid": True},
           "pid zero": {**dead_record, "pid": 0},
           "start negative": {**dead_record, "start": -1},
           "host number": {**dead_record, "host": 5},
           "too large": {**dead_record, "pad": "x" * 5000}}
    if isinstance(raw, str):
        raw = json.dumps(bad[raw]).encode()
    d = _folder(tmp_path, "lmkit-rich-bad", raw=raw)
    assert _sweep(tmp_path) == ([], [])
    assert (d / "ids.int32").is_file()


def test_only_our_names_at_the_top_level_of_that_folder_mine_and_this_host(tmp_path, dead_record):
    """A valid marker of a stopped process is not enough: the name must be one of lmkit's
    prefixes, the folder directly in the swept folder, of this host and this user; a marker
    that is a symlink or a folder does not count."""
    keep = [_folder(tmp_path, "user-data", dead_record),
            _folder(tmp_path, "lmkit-richer", dead_record),        # not a prefix of ours
            _folder(tmp_path, "lmkit-rich-otherhost", {**dead_record, "host": "elsewhere"})]
    (tmp_path / "sub").mkdir()
    keep.append(_folder(tmp_path / "sub", "lmkit-rich-nested", dead_record))
    link_marker = _folder(tmp_path, "lmkit-rich-linkmarker")
    (tmp_path / "valid-marker.json").write_text(json.dumps(dead_record))
    (link_marker / MARKER).symlink_to(tmp_path / "valid-marker.json")
    dir_marker = _folder(tmp_path, "lmkit-rich-dirmarker")
    (dir_marker / MARKER).mkdir()
    keep += [link_marker, dir_marker]
    if os.geteuid() == 0:  # root can give a folder to another user: not ours to remove
        other = _folder(tmp_path, "lmkit-rich-otheruser", dead_record)
        os.chown(other, 12345, 12345)
        keep.append(other)
    gone = _folder(tmp_path, "lmkit-rich-gone", dead_record)
    removed, lines = _sweep(tmp_path)
    assert removed == [gone] and len(lines) == 1
    assert all((d / "ids.int32").is_file() for d in keep)
    assert (tmp_path / "valid-marker.json").is_file()


def test_symlinks_and_files_are_never_followed_or_removed(tmp_path, dead_record):
    """A symlink named like ours (to a folder with a valid marker of a stopped process) and a
    file named like ours stay, and so does the target; inside a swept folder a symlink is
    unlinked, its target outside untouched."""
    target_parent = tmp_path / "elsewhere"
    target_parent.mkdir()
    target = _folder(target_parent, "lmkit-rich-target", dead_record)
    swept = tmp_path / "swept"
    swept.mkdir()
    (swept / "lmkit-rich-link").symlink_to(target, target_is_directory=True)
    (swept / "lmkit-chain-file").write_text(json.dumps(dead_record))
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    inner = _folder(swept, "lmkit-spill-inner", dead_record)
    (inner / "link").symlink_to(outside)
    (inner / "dirlink").symlink_to(target_parent, target_is_directory=True)
    (inner / "sub").mkdir()
    (inner / "sub" / "link").symlink_to(target, target_is_directory=True)
    removed, _ = _sweep(swept)
    assert removed == [inner] and not inner.exists()
    assert (swept / "lmkit-rich-link").is_symlink() and (swept / "lmkit-chain-file").is_file()
    assert (target / "ids.int32").is_file() and (target / MARKER).is_file()
    assert outside.read_text() == "keep me"


def test_a_missing_or_file_folder_sweeps_nothing(tmp_path):
    assert sweep_stale(tmp_path / "missing") == []
    (tmp_path / "file").write_text("x")
    assert sweep_stale(tmp_path / "file") == []


def test_every_top_level_temporary_folder_goes_through_make_temp_dir():
    """A new ``mkdtemp`` of lmkit would be a folder the sweep never removes: each one left is
    listed here with why it needs no marker."""
    allowed = {
        "lmkit/io/scratch.py": 1,    # make_temp_dir itself
        "lmkit/io/files.py": 1,      # .NAME.old-PID-*: recover_interrupted's (by pid in the name)
        "lmkit/io/store.py": 1,      # .NAME.tmp-PID-*: the same
        "lmkit/corpus.py": 1,        # .shakespeare-*: the built-in corpus's download, small
        "lmkit/train.py": 1,         # lmkit-check-*: made and removed at once, empty
        "lmkit/rich_build.py": 2,    # chain-*, group*-* inside the build's lmkit-rich-* folder
    }
    found = {}
    for path in sorted((ROOT / "lmkit").rglob("*.py")):
        n = len(re.findall(r"mkdtemp\(|TemporaryDirectory\(", path.read_text()))
        if n:
            found[str(path.relative_to(ROOT))] = n
    assert found == allowed


SLOW_SCRIPT = """
import os, sys, time
from lmkit import rich_build
real = rich_build._solve_pass
def solve_then_wait(*a, **k):
    out = real(*a, **k)
    open(sys.argv[1], "w").close()  # the build's folder holds its buffers and arrays now
    time.sleep(60)
    return out
rich_build._solve_pass = solve_then_wait
from lmkit.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_train_removes_what_a_killed_train_left(tiny_corpus_file, tiny_tok_file, tmp_path,
                                               capsys):
    """End to end: ``lmkit train --max-memory --spill-dir D`` killed by SIGKILL mid-build
    leaves its lmkit-rich-* folder (token buffers, solved arrays) in D; the next ``lmkit
    train`` with the same D removes it (one line) and builds its model."""
    from cli_helpers import run_cli
    spill, flag = tmp_path / "spill", tmp_path / "solved"
    spill.mkdir()
    args = ["train", "--input", str(tiny_corpus_file), "--tokenizer", str(tiny_tok_file),
            "--max-memory", "1G", "--spill-dir", str(spill)]
    proc = subprocess.Popen([sys.executable, "-c", SLOW_SCRIPT, str(flag), *args,
                             "--output", str(tmp_path / "m1"), "--no-verbose"],
                            env=dict(os.environ, PYTHONPATH=str(ROOT)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not flag.exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "the build never reached its solved state"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    left = list(spill.iterdir())
    assert [p.name[:11] for p in left] == ["lmkit-rich-"] and len(list(left[0].iterdir())) > 1
    assert json.loads((left[0] / MARKER).read_text())["pid"] == proc.pid
    code, _, err = run_cli(capsys, *args, "--output", tmp_path / "m2")
    assert code == 0, err
    assert (f"lmkit: removed a temporary folder left by a stopped lmkit process "
            f"(pid {proc.pid}): {left[0]}") in err.splitlines()
    assert list(spill.iterdir()) == [] and (tmp_path / "m2" / "manifest.json").is_file()


def test_a_refused_spill_dir_is_not_swept(tiny_corpus_file, tmp_path, dead_record):
    """The sweep runs once the options are accepted: a spill_dir the route refuses (a plain
    n-gram model without max_memory spills nothing) is left as it is."""
    from lmkit.errors import OptionError
    from lmkit.train import train
    left = _folder(tmp_path, "lmkit-rich-left", dead_record)
    with pytest.raises(OptionError, match="spill_dir .* is not supported"):
        train(input=[str(tiny_corpus_file)], order=3, spill_dir=str(tmp_path), verbose=False)
    assert (left / "ids.int32").is_file()
