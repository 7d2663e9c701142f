"""The Ctrl-C guard, in real subprocesses sent real SIGINTs: a clean shutdown stays clean; a shutdown
that hangs (a non-daemon thread that never ends) is forced after the grace period or at once on a
second Ctrl-C, and the clean-up hook runs either way."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

from fixtures_repo import PROJECT_ROOT

HANG_DETECTOR_S = 60   # not a speed limit: only ends a test whose process would never exit

CHILD = textwrap.dedent("""
    import signal, sys, threading, time
    # explicit either way: started from a background job, this process would begin with SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler if sys.argv[4] == "live" else signal.SIG_IGN)
    from pathlib import Path
    from ssl_pipeline.interrupt import install_interrupt_guard

    grace, hang, marker = float(sys.argv[1]), sys.argv[2] == "hang", Path(sys.argv[3])
    install_interrupt_guard(grace, on_force=lambda: marker.write_text("forced"))
    if hang:   # a shutdown that never finishes: the interpreter waits for this thread at exit
        threading.Thread(target=lambda: time.sleep(10_000), daemon=False).start()
    try:
        print("ready", flush=True)
        time.sleep(10_000)
    except KeyboardInterrupt:
        print("cleaning up", flush=True)
""")


@pytest.fixture
def start(tmp_path):
    """start(grace, hang, sigint) -> a ready child; any still running at teardown (a failed test) is killed."""
    procs: list[subprocess.Popen] = []

    def _start(grace: float, hang: bool, sigint: str = "live") -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(grace), "hang" if hang else "clean",
                                 str(tmp_path / "marker"), sigint], cwd=PROJECT_ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        return proc

    yield _start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _finish(proc: subprocess.Popen) -> str:
    try:
        out, _ = proc.communicate(timeout=HANG_DETECTOR_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"process did not exit: {proc.communicate()[0]}")
    return out


def test_a_clean_shutdown_exits_normally_without_forcing(tmp_path, start):
    proc = start(grace=30, hang=False)
    proc.send_signal(signal.SIGINT)
    out = _finish(proc)
    assert proc.returncode == 0, out
    assert "cleaning up" in out and "forcing exit" not in out
    assert not (tmp_path / "marker").exists()


def test_a_hung_shutdown_is_forced_after_the_grace_period(tmp_path, start):
    proc = start(grace=1, hang=True)
    proc.send_signal(signal.SIGINT)
    out = _finish(proc)
    assert proc.returncode == 130, out
    assert "cleaning up" in out   # the normal path ran first
    assert "still running 1 s after Ctrl-C: forcing exit" in out
    assert (tmp_path / "marker").read_text() == "forced"


def test_a_second_ctrl_c_forces_at_once(tmp_path, start):
    proc = start(grace=3600, hang=True)
    proc.send_signal(signal.SIGINT)
    seen = [proc.stdout.readline() for _ in range(2)]   # the first Ctrl-C is handled before the second
    assert "cleaning up\n" in seen, seen
    proc.send_signal(signal.SIGINT)
    out = _finish(proc)
    assert proc.returncode == 130, out
    assert "second Ctrl-C: forcing exit" in out
    assert (tmp_path / "marker").read_text() == "forced"


def test_an_ignored_sigint_stays_ignored(tmp_path, start):
    proc = start(grace=1, hang=False, sigint="ignored")
    proc.send_signal(signal.SIGINT)
    with pytest.raises(subprocess.TimeoutExpired):   # past the 1 s grace: neither stopped nor forced
        proc.wait(timeout=5)
    proc.terminate()
    out = _finish(proc)
    assert proc.returncode == -signal.SIGTERM, out
    assert "Ctrl-C" not in out and not (tmp_path / "marker").exists()


CLI_CHILD = textwrap.dedent("""
    import argparse, atexit, sys, time
    from pathlib import Path
    from ssl_pipeline.cli import main as cli

    out = Path(sys.argv[1])
    atexit.register(lambda: out.with_suffix(".atexit").write_text("ran"))   # how Prefect stops its server

    def hold(args):   # a command that runs until stopped
        try:
            print("ready", flush=True)
            time.sleep(10_000)
        finally:
            out.with_suffix(".finally").write_text("ran")

    build = cli.build_parser
    def build_with_hold():
        parser = build()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub.add_parser("hold").set_defaults(func=hold, debug=False)
        return parser
    cli.build_parser = build_with_hold
    sys.exit(cli.main(["hold"]))
""")


def test_sigterm_unwinds_a_cli_command_like_ctrl_c(tmp_path):
    """Without the handler SIGTERM ends Python at once: no finally, no atexit, and `ssl-pipeline run`
    or `compare` would orphan Prefect's temporary API server."""
    proc = subprocess.Popen([sys.executable, "-c", CLI_CHILD, str(tmp_path / "marker")], cwd=PROJECT_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.terminate()
        out = _finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, out
    assert "terminated" in out
    assert (tmp_path / "marker.finally").read_text() == "ran"
    assert (tmp_path / "marker.atexit").read_text() == "ran"
