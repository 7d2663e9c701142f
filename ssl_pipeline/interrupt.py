"""Ctrl-C that always ends a long-running serving process, and SIGTERM that cleans up like Ctrl-C.

Prefect's `serve` stops on Ctrl-C by cancelling its asyncio tasks and cleaning up, and its cleanup
talks to the Prefect API (pause schedules, cancel runs) through a client that retries: with the API
slow or gone, Ctrl-C could leave the process waiting for minutes. The guard keeps Python's normal path
(the first Ctrl-C raises KeyboardInterrupt, cleanup runs) and backs it with a deadline: if the process
is still alive `grace_s` later, or on a second Ctrl-C, it runs `on_force` (e.g. pause the deployment
so no runs pile up) and exits with status 130.

A process started with SIGINT ignored (a background job of a non-interactive shell: `cmd &` in a
script) keeps ignoring it, as Unix tools do; stop such a process with SIGTERM. Standard library only.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Callable

EXIT_INTERRUPTED = 130      # what a shell reports for a process ended by SIGINT
EXIT_TERMINATED = 143       # ... and by SIGTERM
ON_FORCE_TIMEOUT_S = 15.0   # on_force talks to a server that may be gone: never wait for it forever


_CTRL_C = threading.Event()   # set by the guard's handler: an error raised while unwinding is the interrupt


def was_interrupted() -> bool:
    """True once the interrupt guard has seen Ctrl-C: a library that wraps the KeyboardInterrupt in its own
    error (pydantic serialising a Prefect state) still ends the command as interrupted."""
    return _CTRL_C.is_set()


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into the same unwinding as Ctrl-C (see `terminate_like_interrupt`)."""


def install_interrupt_guard(grace_s: float, on_force: Callable[[], None],
                            say: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True)) -> None:
    """Replace the SIGINT handler for the rest of this process's life (main thread only); a no-op
    when SIGINT is ignored.

    It is not undone when serving returns: a hang can also come after that, while the interpreter
    waits for non-daemon threads at exit, and the deadline must cover it too."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        return
    forcing = threading.Lock()
    interrupted = threading.Event()

    def force(reason: str) -> None:
        if not forcing.acquire(blocking=False):
            return   # the other trigger is already forcing the exit
        say(f"{reason}: forcing exit")
        worker = threading.Thread(target=_run_quietly, args=(on_force, say), daemon=True)
        worker.start()
        worker.join(ON_FORCE_TIMEOUT_S)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_INTERRUPTED)

    def force_later(delay: float, reason: str) -> None:
        timer = threading.Timer(delay, force, args=(reason,))
        timer.daemon = True   # a clean exit before the deadline must not wait for it
        timer.start()

    def on_sigint(signum, frame) -> None:
        if interrupted.is_set():
            # Forcing runs in a thread: the main thread may hold locks the HTTP client needs.
            force_later(0.0, "second Ctrl-C")
            return
        interrupted.set()
        _CTRL_C.set()
        say(f"Ctrl-C: shutting down (Ctrl-C again to force; forced after {grace_s:g} s)")
        force_later(grace_s, f"still running {grace_s:g} s after Ctrl-C")
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)


def _run_quietly(fn: Callable[[], None], say: Callable[[str], None]) -> None:
    try:
        fn()
    except Exception as err:   # the exit must happen whatever the clean-up step does
        say(f"while forcing exit: {type(err).__name__}: {err}")


def terminate_like_interrupt() -> None:
    """Make SIGTERM unwind the main thread like Ctrl-C does: `finally` blocks and atexit hooks run, so
    child servers (Prefect's temporary API server is stopped by an atexit hook) and temporarily
    rewritten files are cleaned up. By default SIGTERM ends Python at once and orphans them.
    An inherited SIG_IGN is kept. Main thread only."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_IGN:
        return

    def on_sigterm(signum, frame) -> None:
        raise Terminated

    signal.signal(signal.SIGTERM, on_sigterm)
