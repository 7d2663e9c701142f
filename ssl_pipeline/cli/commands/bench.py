"""`ssl-pipeline bench`: pretraining step throughput (ssl_core/bench.py; also `python -m ssl_core.bench`)."""
from __future__ import annotations

import argparse

HELP_ORDER = 90


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ssl_core import bench

    parser = sub.add_parser("bench", parents=[common], help="pretraining step throughput vs a PIL/DataLoader recipe")
    bench.add_arguments(parser)
    parser.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from ssl_core import bench

    bench.run_and_report(args)
    return 0
