"""`ssl-pipeline data demo|import|status|push|pull`: the datasets, versioned by DVC."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ssl_pipeline.cli.common import params_of

HELP_ORDER = 0


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
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


def cmd_data(args) -> int:
    from ssl_pipeline.versioning import workspace as dvcops
    from ssl_pipeline.progress import Progress, log

    root = Path(".")
    raw = Path(params_of(args).data.raw_dir)
    if args.data_command == "demo":
        from ssl_pipeline.ingest.demo import write_demo

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
        from ssl_pipeline.ingest.importer import import_folder

        dvcops.ensure_repo(root)
        bar = Progress(1, f"import {args.path}")
        result = import_folder(Path(args.path), args.kind, raw, replace=args.replace,
                               also_unlabeled=args.kind == "labeled" and args.also_unlabeled,
                               progress=bar.update)
        bar.close()
        targets = [str(raw / "labeled")] if args.kind == "labeled" else [str(raw / "unlabeled")]
        if args.kind == "labeled" and args.also_unlabeled:
            targets.append(str(raw / "unlabeled"))
        files = sum(result["copied"].values())
        log.info("data import: dvc add %s (%d files: hashing, then linking them from DVC's cache) ...",
                 " ".join(targets), files)
        start = time.perf_counter()
        md5s = dvcops.track(root, targets)
        log.info("data import: dvc add done in %.1f s", time.perf_counter() - start)
        print(json.dumps({"imported": result, "dvc_md5": md5s}, indent=2, default=str))
    elif args.data_command == "status":
        print(json.dumps(dvcops.status(root, str(raw)), indent=2, default=str))
    elif args.data_command == "push":
        print(dvcops.push(root))
    elif args.data_command == "pull":
        print(dvcops.pull(root))
    return 0
