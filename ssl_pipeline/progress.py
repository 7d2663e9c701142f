"""Progress for long work: a tqdm bar (rate, ETA) on a terminal, plain periodic lines otherwise
(CI, DVC subprocesses under Prefect), so task logs carry the same information."""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("ssl_pipeline")


def setup_logging(debug: bool = False) -> None:
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False
    if not debug:   # "Retrying (Retry(total=1, ...)) after connection broken by ...": the error line says it
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


class _WithoutTraceback(logging.Formatter):
    """Formats a record as `inner` does, leaving out its traceback (other handlers still get it)."""

    def __init__(self, inner: logging.Formatter | None):
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def hide_library_tracebacks(prefix: str = "prefect") -> None:
    """Terminal output of the `prefix` loggers (and of the root logger's console handlers, where
    Prefect puts its own) without tracebacks: a failed flow ends with the CLI's one `error:` line, not
    several copies of the stack (`--debug` keeps them; Prefect's API and UI still receive the full
    logs). Call it after the library configured its logging."""
    loggers = [logging.getLogger(), logging.getLogger(prefix)]
    loggers += [logging.getLogger(n) for n in logging.root.manager.loggerDict if n.startswith(prefix + ".")]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler.formatter, _WithoutTraceback):
                handler.setFormatter(_WithoutTraceback(handler.formatter))


class Progress:
    """Call update(done) with the absolute count; close() at the end."""

    def __init__(self, total: int, desc: str, every_fraction: float = 0.1):
        self.total, self.desc = max(total, 1), desc
        self.start = time.perf_counter()
        self.next_line = 0.0
        self.every = every_fraction
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm   # only the edge uses tqdm; the core passes callbacks
            self.bar = tqdm(total=self.total, desc=desc, unit="it", dynamic_ncols=True)

    def update(self, done: int, total: int | None = None) -> None:
        if total:
            self.total = max(total, 1)
        if self.bar is not None:
            self.bar.total = self.total
            self.bar.n = done
            self.bar.refresh()
            return
        frac = done / self.total
        if frac >= self.next_line or done >= self.total:
            elapsed = time.perf_counter() - self.start
            rate = done / elapsed if elapsed > 0 else 0.0
            eta = (self.total - done) / rate if rate > 0 else float("nan")
            log.info("%s: %d/%d (%.0f%%) %.1f it/s ETA %.0fs", self.desc, done, self.total, 100 * frac, rate, eta)
            self.next_line = frac + self.every

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
