"""`ssl-pipeline measure warm-start|drift|select`: the README's measured claims as reports on this workspace's
prepared data (ssl_pipeline/comparison/measurements.py)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ssl_pipeline.cli.common import params_of

HELP_ORDER = 85


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    m = sub.add_parser("measure", help="measure warm start vs cold, or select vs random labels, on this workspace")
    msub = m.add_subparsers(dest="measure_command", required=True, metavar="WHAT")
    w = msub.add_parser("warm-start", parents=[common],
                        help="cold vs warm challenger after --new-fraction more images: kNN and pretraining time")
    w.add_argument("--new-fraction", type=float, default=0.1, help="new images as a share of the old pool (default 0.1)")
    w.add_argument("--out", default="reports/measure/warm-start", help="folder for result.json and report.md")
    d = msub.add_parser("drift", parents=[common],
                        help="the drift gate's statistic for --new-fraction more pool images, as they are and inverted")
    d.add_argument("--new-fraction", type=float, default=0.1, help="new images as a share of the old pool (default 0.1)")
    d.add_argument("--out", default="reports/measure/drift", help="folder for result.json and report.md")
    s = msub.add_parser("select", parents=[common],
                        help="labels chosen by k-center vs at random: linear probe and fine-tune test accuracy")
    s.add_argument("--fraction", type=float, default=0.01, help="share of the train split to label (default 0.01)")
    s.add_argument("--seeds", type=int, default=3, help="seeds per strategy (default 3)")
    s.add_argument("--strategies", default=None,
                   help="comma-separated strategies to measure (default: all; an unknown name lists them)")
    s.add_argument("--out", default="reports/measure/select", help="folder for result.json and report.md")
    m.set_defaults(func=cmd_measure)


def cmd_measure(args) -> int:
    from ssl_pipeline.comparison import measurements as m
    from ssl_pipeline.progress import log

    params = params_of(args)
    note = lambda line: log.info("measure: %s", line)   # noqa: E731
    if args.measure_command == "warm-start":
        if not 0 < args.new_fraction <= 1:
            raise ValueError(f"--new-fraction must be in (0, 1], got {args.new_fraction}")
        result = m.warm_vs_cold(params, Path("."), args.new_fraction, note)
        text = m.warm_markdown(result)
    elif args.measure_command == "drift":
        result = m.drift_examples(params, Path("."), args.new_fraction, note)
        text = m.drift_markdown(result)
    else:
        if not 0 < args.fraction < 1 or args.seeds < 1:
            raise ValueError(f"--fraction must be in (0, 1) and --seeds at least 1, got {args.fraction}, {args.seeds}")
        strategies = m.SELECTION_STRATEGIES if args.strategies is None else tuple(
            name.strip() for name in args.strategies.split(",") if name.strip())
        unknown = sorted(set(strategies) - set(m.SELECTION_STRATEGIES)) or ([] if strategies else ["(none)"])
        if unknown:
            raise ValueError(f"--strategies: unknown {', '.join(unknown)}; choose from "
                             f"{', '.join(m.SELECTION_STRATEGIES)}")
        result = m.selection_vs_random(params, Path("."), args.fraction, args.seeds, note, strategies)
        text = m.selection_markdown(result)
    m.write_report(result, text, Path(args.out))
    print(text)
    print(f"\nwrote {args.out}/result.json and {args.out}/report.md")
    return 0
