"""`ssl-pipeline compare`: pretrain several SSL methods on the same prepared data and budget, evaluate
each (kNN, linear probe, fine-tuning at every label fraction) next to the random-encoder and scratch
baselines; writes reports/method_comparison.csv + .png (flows/compare.py)."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("compare", parents=[common],
                       help="compare SSL methods on the same data and budget (kNN, linear, fine-tune, + baselines)")
    p.add_argument("--methods", metavar="M1,M2,...",
                   help="methods to compare, e.g. simclr,moco,rotation (same as --set compare.methods=[...])")
    p.add_argument("--epochs", type=int, metavar="N", help="pretraining epochs per method (same as --set compare.epochs=N)")
    p.add_argument("--out", default="reports", metavar="DIR",
                   help="folder for method_comparison.csv/.png/.md, relative to the project (default: reports)")
    p.set_defaults(func=cmd_compare)


def overrides(args) -> list[str]:
    """--set values plus the shortcuts, as --set style KEY=VALUE (recorded on the MLflow runs)."""
    out = list(args.set)
    if args.methods:
        names = [m.strip() for m in args.methods.split(",") if m.strip()]
        out.append(f"compare.methods=[{','.join(names)}]")
    if args.epochs is not None:
        out.append(f"compare.epochs={args.epochs}")
    return out


def cmd_compare(args) -> int:
    from ssl_pipeline.cli.common import flow_logging, prefect_defaults, tracking_uri_display
    from ssl_pipeline.cli.guard import guarded_run
    from ssl_pipeline.config.schema import load_params

    prefect_defaults()
    sets = overrides(args)
    path = Path(args.params)
    params = load_params(path, sets)   # every params error before Prefect starts
    with guarded_run(path.parent, "compare"):
        from flows.compare import compare

        flow_logging(args.debug)
        result = compare(root=str(path.parent.resolve()), params_file=path.name, overrides=sets, out_dir=args.out)
    print(f"\n== ssl-pipeline compare: {', '.join(params.compare.method_list())} "
          "(test accuracy, mean (min-max) over seeds) ==")
    print(result["markdown"])
    print(f"\nreports: {result['csv']}, {result['png']}")
    print(f"MLflow: {tracking_uri_display()} (compare run {result['parent_run_id']})")
    if result["failed"]:
        print(f"failed: {', '.join(result['failed'])} (see the report's status column)")
        return 1
    return 0
