"""CLI plug-ins: every module here defines `register(subparsers, common)` adding its subcommand(s)
and may set HELP_ORDER (where it appears in `--help`); cli/main.py discovers them, so a new command
is one file."""
from __future__ import annotations

import argparse
import importlib
import pkgutil


def register_all(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    modules = [importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)]
    for module in sorted(modules, key=lambda m: (getattr(m, "HELP_ORDER", 100), m.__name__)):
        module.register(sub, common)
