"""Helpers shared by the fault suites: run the CLI in-process and check its one-line errors."""
import re
import subprocess
import time

from lmkit.cli import main


def run_cli(capsys, *argv):
    """``(exit code, stdout, stderr)`` of ``lmkit ARGV`` run in this process."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code, err, match=""):
    """Exit 2, one ``lmkit: error: ...`` line on stderr matching ``match``, no traceback."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("lmkit: error: "), err
    assert "Traceback" not in err
    assert re.search(match, lines[0]), lines[0]


def default_sigint() -> None:
    """``preexec_fn`` for a child that tests send SIGINT: a shell's background job inherits
    SIGINT ignored, and Python then installs no KeyboardInterrupt handler at all; the tests
    check lmkit's handling, not the inherited disposition."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# a text big enough that `lmkit score --workers 2` (compiled scorer) is still running when a test
# signals it: tiny_lines x 4000, ~1.2M lines
SCORE_REPEATS = 4000


def children(pid) -> list:
    """The pids of ``pid``'s child processes."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split()]


def wait_for_workers(proc, n=2, timeout=20) -> list:
    """The pids of ``proc``'s ``n`` worker processes once they all run (asserts they start)."""
    deadline = time.time() + timeout
    while len(children(proc.pid)) < n and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    workers = children(proc.pid)
    assert len(workers) == n, "the workers did not start"
    return workers
