"""`ssl-pipeline methods`: the registered SSL methods, their summary and knobs (method_params)."""
from __future__ import annotations

import argparse
import sys

HELP_ORDER = 40


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    sub.add_parser("methods", parents=[common],
                   help="list the registered SSL methods and their knobs").set_defaults(func=cmd_methods)


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
