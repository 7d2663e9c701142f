"""`ssl-pipeline bench`: pretraining step throughput (ssl_core/bench.py; also `python -m ssl_core.bench`);
`ssl-pipeline bench data`: the data path at scale (ssl_pipeline/benchmarks/data.py)."""
from __future__ import annotations

import argparse

HELP_ORDER = 90


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ssl_core import bench

    parser = sub.add_parser("bench", parents=[common], help="pretraining step throughput vs a PIL/DataLoader recipe; "
                                                            "`bench data`: import, prepare, re-prepare at scale")
    bench.add_arguments(parser)
    what = parser.add_subparsers(dest="bench_what", metavar="data")
    data = what.add_parser("data", parents=[common], help="synthetic photos -> import, prepare at 1 and N workers, "
                                                          "re-prepare after +1 %%, pretraining from the cache (JSON)")
    from ssl_pipeline.benchmarks.data import add_arguments

    add_arguments(data)
    parser.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    if getattr(args, "bench_what", None) == "data":
        from ssl_pipeline.benchmarks.data import run_and_report

        run_and_report(args)
        return 0
    from ssl_core import bench

    bench.run_and_report(args)
    return 0
