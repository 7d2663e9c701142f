"""`ssl-pipeline` (also `python -m ssl_pipeline`): one CLI for data, stages, flows and tools.

Errors print one sentence plus a hint; `--debug` shows the traceback.
"""
from __future__ import annotations

import argparse
import os
import sys

from ssl_pipeline.cli.commands import register_all
from ssl_pipeline.interrupt import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, terminate_like_interrupt
from ssl_pipeline.progress import setup_logging

EXIT_STDOUT_CLOSED = 141   # what a shell reports for a process ended by SIGPIPE


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    common.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param for this run only, e.g. --set pretrain.epochs=5 (repeatable)")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    parser = argparse.ArgumentParser(prog="ssl-pipeline",
                                     description="Self-supervised pretraining pipeline: DVC + Prefect + PyTorch + MLflow")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_all(sub, common)
    return parser


def quiet_library_warnings() -> None:
    """MLflow warns on every dataset input and integer schema; those lines drown the progress output."""
    import warnings

    warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
    warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer column")
    warnings.filterwarnings("ignore", category=FutureWarning, module="mlflow")


def main(argv: list[str] | None = None) -> int:
    quiet_library_warnings()
    args = build_parser().parse_args(argv)
    setup_logging(args.debug)
    terminate_like_interrupt()
    try:
        return args.func(args) or 0
    except Terminated:
        print("terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        if _stdout_closed():
            return EXIT_STDOUT_CLOSED   # `ssl-pipeline config | head`: the reader has what it wanted
        raise
    except Exception as err:  # noqa: BLE001 - one clear sentence instead of traceback soup
        if args.debug:
            for line in getattr(err, "tail", None) or []:   # a failed stage's last output lines
                print(line, file=sys.stderr)
            raise
        from ssl_pipeline.errors import ConfigError
        from ssl_pipeline.interrupt import was_interrupted

        if was_interrupted():   # the KeyboardInterrupt came back wrapped in another library's error
            print("interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        lines = str(err).splitlines() if isinstance(err, ConfigError) else [str(err)]   # one line per bad key
        for line in lines:
            print(f"error: {line}", file=sys.stderr)
        print(f"hint: {_hint(err, args.command)}", file=sys.stderr)
        return 2


def _stdout_closed() -> bool:
    """True when stdout is a pipe whose reader went away (poll says POLLERR); stdout then points at
    /dev/null, so the interpreter's final flush does not raise a second time."""
    import select

    poller = select.poll()
    poller.register(sys.stdout.fileno(), select.POLLOUT)
    if not any(events & select.POLLERR for _, events in poller.poll(0)):
        return False
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return True


# Commands that read what earlier stages wrote: a missing file there means a stage has not run.
_READS_STAGE_OUTPUTS = {"prepare", "pretrain", "finetune", "evaluate", "stage", "export", "compare"}


def _hint(err: Exception, command: str = "") -> str:
    """The second line under an error: what to do next, for this error in this command."""
    from ssl_pipeline.errors import ConfigError
    from ssl_pipeline.ingest.store import DataImportError
    from ssl_pipeline.versioning.workspace import MissingDataError

    if getattr(err, "hint", None):
        return err.hint
    if isinstance(err, ConfigError):
        return "fix params.yaml (see `ssl-pipeline config` for every key) or the --set value"
    if isinstance(err, MissingDataError):
        return "`ssl-pipeline data status` shows which datasets are tracked and which are in the workspace"
    if isinstance(err, DataImportError):
        return "`ssl-pipeline data status` lists each dataset and every import (`data import --help`, `data demo --help`)"
    from ssl_pipeline.serving.embeddings import BadInput
    from ssl_pipeline.serving.predict import Unfeedable
    from ssl_pipeline.tracking.encoders import ModelNotFound

    if isinstance(err, ModelNotFound):
        return "`ssl-pipeline ui` lists the registered versions; pass one with --model (or MODEL_URI)"
    if isinstance(err, (BadInput, Unfeedable)):
        return "the command's --help says what it takes"
    if isinstance(err, FileNotFoundError) and command in _READS_STAGE_OUTPUTS:
        return "run the earlier stages first (`ssl-pipeline run` or `dvc repro`)"
    if isinstance(err, FileNotFoundError):
        return f"check the path in the message (`ssl-pipeline {command} --help` says what it takes)"
    return "rerun with --debug for the full traceback"
