"""`ssl-pipeline config`: the params reference, `--check` a params file, regenerate the README's table."""
from __future__ import annotations

import argparse
from pathlib import Path

from ssl_pipeline.cli.common import params_of

HELP_ORDER = 30


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    cfg = sub.add_parser("config", parents=[common], help="print the params reference (or --check params.yaml)")
    cfg.add_argument("--check", action="store_true", help="validate params.yaml (and --set values) and exit")
    cfg.add_argument("--write-readme", metavar="README", help="regenerate the reference table inside README")
    cfg.set_defaults(func=cmd_config)


def cmd_config(args) -> int:
    from ssl_pipeline.config.reference import readme_with_reference, reference_markdown

    if args.check:
        params_of(args)
        print(f"{args.params}: OK")
    elif args.write_readme:
        readme = Path(args.write_readme)
        readme.write_text(readme_with_reference(readme.read_text()))
        print(f"{readme}: configuration reference updated")
    else:
        print(reference_markdown())
    return 0
