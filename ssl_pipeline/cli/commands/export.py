"""`ssl-pipeline export [--out exported/]`: the encoder (and best classifier) for use outside the project."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("export", parents=[common],
                       help="write the encoder as a torchvision state_dict, torch.export (.pt2) and TorchScript")
    p.add_argument("--out", default="exported", help="output folder (default: exported/)")
    p.set_defaults(func=run_export)


def run_export(args) -> int:
    from ssl_pipeline.serving.export import export

    info = export(Path("."), Path(args.out))
    for name in info["files"] + ["spec.json", "README.txt"]:
        print(Path(args.out) / name)
    print(f"{info['backbone']} encoder, input {info['input']}, {info['out_dim']} features; "
          f"see {Path(args.out) / 'README.txt'} to load it")
    return 0
