"""`ssl-pipeline` (also `python -m ssl_core`): one CLI for data, stages, flows and tools.

Errors print one sentence plus a hint; `--debug` shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ssl_core.interrupt import EXIT_INTERRUPTED, EXIT_TERMINATED, Terminated, terminate_like_interrupt
from ssl_core.progress import log, setup_logging

EXIT_STDOUT_CLOSED = 141   # what a shell reports for a process ended by SIGPIPE

STAGE_NAMES = ("prepare", "pretrain", "finetune", "evaluate")


def _params(args):
    from ssl_core.config import load_params

    return load_params(args.params, args.set)


def cmd_stage(args) -> int:
    import importlib

    from ssl_core import tracking

    params = _params(args)
    if args.set:
        os.environ[tracking.OVERRIDES_ENV] = json.dumps(args.set)
    name = getattr(args, "stage_name", None) or args.command
    importlib.import_module(f"ssl_core.stages.{name}").run(params, Path("."))
    return 0


def cmd_data(args) -> int:
    from ssl_core import dvcops
    from ssl_core.progress import Progress

    root = Path(".")
    raw = Path(_params(args).data.raw_dir)
    if args.data_command == "demo":
        from ssl_core.data.demo import write_demo

        bar = Progress(5000, "demo data")
        counts = write_demo(raw, seed=args.seed, progress=bar.update)
        bar.close()
        dvcops.ensure_repo(root)
        targets = [str(raw / "unlabeled"), str(raw / "labeled")]
        if counts.get("written") or not all(Path(f"{t}.dvc").exists() for t in targets):
            md5s = dvcops.track(root, targets)
        else:   # byte-identical demo data already tracked: skip `dvc add` (keeps a rerun fast)
            md5s = dvcops.dataset_md5s(root, str(raw))
        print(json.dumps({"written": counts, "dvc_md5": md5s}, indent=2, default=str))
    elif args.data_command == "import":
        from ssl_core.data.importer import import_folder

        dvcops.ensure_repo(root)
        bar = Progress(1, f"import {args.path}")
        result = import_folder(Path(args.path), args.kind, raw, replace=args.replace,
                               also_unlabeled=args.kind == "labeled" and args.also_unlabeled,
                               progress=bar.update)
        bar.close()
        targets = [str(raw / "labeled")] if args.kind == "labeled" else [str(raw / "unlabeled")]
        if args.kind == "labeled" and args.also_unlabeled:
            targets.append(str(raw / "unlabeled"))
        md5s = dvcops.track(root, targets)
        print(json.dumps({"imported": result, "dvc_md5": md5s}, indent=2, default=str))
    elif args.data_command == "status":
        print(json.dumps(dvcops.status(root, str(raw)), indent=2, default=str))
    elif args.data_command == "push":
        print(dvcops.push(root))
    elif args.data_command == "pull":
        print(dvcops.pull(root))
    return 0


def cmd_run(args) -> int:
    from ssl_core.runner import run_pipeline

    return run_pipeline(args.params, args.set)


def cmd_config(args) -> int:
    from ssl_core.config_reference import readme_with_reference, reference_markdown

    if args.check:
        _params(args)
        print(f"{args.params}: OK")
    elif args.write_readme:
        readme = Path(args.write_readme)
        readme.write_text(readme_with_reference(readme.read_text()))
        print(f"{readme}: configuration reference updated")
    else:
        print(reference_markdown())
    return 0


def cmd_methods(args) -> int:
    import dataclasses

    from ssl_core.methods import get_method_class, method_names

    for name in method_names():
        cls = get_method_class(name)
        knobs = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls.Params))
        doc = (cls.__doc__ or sys.modules[cls.__module__].__doc__ or "").strip()
        summary = doc.splitlines()[0] if doc else ""
        print(f"{name:14s} {summary}\n{'':14s} method_params: {knobs or '-'}")
    return 0


def cmd_bench(args) -> int:
    from ssl_core import bench

    bench.run_and_report(args)
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    common.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param for this run only, e.g. --set pretrain.epochs=5 (repeatable)")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    parser = argparse.ArgumentParser(prog="ssl-pipeline",
                                     description="Self-supervised pretraining pipeline: DVC + Prefect + PyTorch + MLflow")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="demo data, imports, status (DVC-versioned)")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    demo = dsub.add_parser("demo", parents=[common], help="write the MNIST-5k demo digits and dvc add them")
    demo.add_argument("--seed", type=int, default=0)
    imp = dsub.add_parser("import", parents=[common], help="copy a folder of images in and dvc add it")
    imp.add_argument("path", help="folder of images (labeled: one subfolder per class, or train/ [val/] test/)")
    imp.add_argument("--as", dest="kind", choices=["unlabeled", "labeled"], required=True)
    imp.add_argument("--replace", action="store_true", help="replace data already imported")
    imp.add_argument("--no-unlabeled", dest="also_unlabeled", action="store_false",
                     help="labeled import only: do not also use the images (without labels) as the unlabeled pool")
    dsub.add_parser("status", parents=[common], help="datasets present, their DVC md5 and file counts")
    dsub.add_parser("push", parents=[common], help="dvc push the datasets to the default remote")
    dsub.add_parser("pull", parents=[common], help="dvc pull the datasets from the default remote")
    data.set_defaults(func=cmd_data)

    helps = {"prepare": "decode + validate images into uint8 caches, manifest and splits",
             "pretrain": "self-supervised pretraining of the encoder",
             "finetune": "linear probe / fine-tune / scratch at every label fraction",
             "evaluate": "test accuracy table, plots, headline metrics"}
    for name in STAGE_NAMES:
        sub.add_parser(name, parents=[common], help=f"stage: {helps[name]}").set_defaults(func=cmd_stage)
    stage = sub.add_parser("stage", parents=[common], help="run one stage by name (what dvc.yaml calls)")
    stage.add_argument("stage_name", choices=STAGE_NAMES)
    stage.set_defaults(func=cmd_stage)

    sub.add_parser("run", parents=[common], help="run the whole pipeline as a Prefect flow").set_defaults(func=cmd_run)
    cfg = sub.add_parser("config", parents=[common], help="print the params reference (or --check params.yaml)")
    cfg.add_argument("--check", action="store_true", help="validate params.yaml (and --set values) and exit")
    cfg.add_argument("--write-readme", metavar="README", help="regenerate the reference table inside README")
    cfg.set_defaults(func=cmd_config)
    sub.add_parser("methods", parents=[common], help="list the registered SSL methods and their knobs").set_defaults(func=cmd_methods)
    bench = sub.add_parser("bench", parents=[common], help="pretraining step throughput vs a PIL/DataLoader recipe")
    _add_bench_arguments(bench)
    bench.set_defaults(func=cmd_bench)
    from ssl_core.commands import register_all

    register_all(sub, common)
    return parser


def _add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    from ssl_core import bench

    bench.add_arguments(parser)


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
            raise
        print(f"error: {err}", file=sys.stderr)
        print(f"hint: {_hint(err)}", file=sys.stderr)
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


def _hint(err: Exception) -> str:
    from ssl_core.config import ConfigError
    from ssl_core.dvcops import MissingDataError

    if isinstance(err, ConfigError):
        return "fix params.yaml (see `ssl-pipeline config` for every key) or the --set value"
    if isinstance(err, MissingDataError):
        return "`dvc pull` fetches tracked data; `ssl-pipeline data demo` writes the demo set"
    if isinstance(err, FileNotFoundError):
        return "run the earlier stages first (`ssl-pipeline run` or `dvc repro`)"
    return "rerun with --debug for the full traceback"
