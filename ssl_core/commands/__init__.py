"""CLI plug-ins: every module here defines `register(subparsers, common)` adding its subcommand(s)
(compare, retrain, serve, ui, predict, export, ...). cli.py discovers them, so a new command is one file."""
from __future__ import annotations

import argparse
import importlib
import pkgutil


def register_all(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        importlib.import_module(f"{__name__}.{mod.name}").register(sub, common)
