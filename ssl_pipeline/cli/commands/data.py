"""`ssl-pipeline data demo|import|status|remove|push|pull`: the datasets under data.raw_dir, versioned by
DVC, with a record of every import (data.raw_dir/imports.json, see ssl_pipeline/ingest/records.py)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from ssl_pipeline.cli.common import params_of

HELP_ORDER = 0
POOL_KEY = "data.pool_includes_labeled"


class _Gone(argparse.Action):
    """A flag that no longer exists: say what replaced it instead of argparse's bare 'unrecognized'."""

    def __init__(self, option_strings, dest, message: str = "", **kwargs):
        self.message = message
        super().__init__(option_strings, dest, nargs=0, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error(f"{option_string} is gone: {self.message}")


def register(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    data = sub.add_parser("data", help="demo data, imports, status, removal (DVC-versioned)")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    demo = dsub.add_parser("demo", parents=[common], help="write the MNIST-5k demo digits (into a workspace without "
                                                          "imported data) and dvc add them")
    demo.add_argument("--seed", type=int, default=0, help="the seed of the demo's train/test split (default 0)")
    demo.add_argument("--replace", action="store_true", help="write the demo over imported data (lists the imports "
                                                             "it removes)")
    demo.add_argument("--if-empty", action="store_true", help="leave a workspace with imported data as it is and say "
                                                              "so, instead of failing (what `make run` uses)")
    imp = dsub.add_parser("import", parents=[common], help="add a folder of images to a dataset and dvc add it",
                          description="Adds the folder's images to the dataset: only files whose content it does not "
                                      "hold yet are copied, so importing a folder twice adds nothing. Every import is "
                                      "recorded (`data status` lists them; `data remove ID` undoes one).")
    imp.add_argument("path", help="folder of images (labeled: one subfolder per class, or train/ [val/] test/)")
    imp.add_argument("--as", dest="kind", choices=["unlabeled", "labeled"], required=True,
                     help="the dataset to add to: the unlabeled pretraining pool, or the labeled set")
    imp.add_argument("--replace", action="store_true", help="replace what this dataset holds with this folder's images "
                                                            "(the other dataset is not touched)")
    imp.add_argument("--no-unlabeled", action=_Gone, message=(
        f"labeled images are no longer copied into the unlabeled dataset; `prepare` pretrains on them when "
        f"{POOL_KEY} is true (set it to false in params.yaml, or --set {POOL_KEY}=false, to leave them out)"))
    status = dsub.add_parser("status", parents=[common], help="each dataset and each import: files, md5s, sources")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    remove = dsub.add_parser("remove", parents=[common], help="remove imports (by the id `data status` shows) and "
                                                              "dvc add what is left")
    remove.add_argument("ids", nargs="+", type=int, metavar="IMPORT_ID")
    remove.add_argument("--dry-run", action="store_true", help="list what would be removed, remove nothing")
    dsub.add_parser("push", parents=[common], help="dvc push the datasets (and cached stage outputs) to the default remote")
    dsub.add_parser("pull", parents=[common], help="dvc pull the datasets from the default remote")
    data.set_defaults(func=cmd_data)


def cmd_data(args) -> int:
    from ssl_pipeline.config.schema import RAW_DATASETS as DATASETS
    from ssl_pipeline.versioning import workspace as dvcops

    root, raw = Path("."), Path(params_of(args).data.raw_dir)
    if args.data_command in ("demo", "import", "remove"):
        dvcops.ensure_repo(root)
        with dvcops.workspace_lock(root):   # from the first file moved to the last `dvc add`
            return {"demo": _demo, "import": _import, "remove": _remove}[args.data_command](args, root, raw)
    if args.data_command == "status":
        return _status(args, root, raw)
    if args.data_command == "push":   # the datasets and every cached stage output: what a clone may pull
        print(dvcops.push(root))
    else:   # the datasets only: the stages rerun from them (`dvc pull` fetches pushed outputs too)
        print(dvcops.pull(root, [f"{raw / d}.dvc" for d in DATASETS if (root / f"{raw / d}.dvc").exists()]))
    return 0


def _track(root: Path, raw: Path, datasets: list[str]) -> dict[str, str]:
    """`dvc add` these datasets; the unlabeled one always exists (prepare depends on it), maybe empty."""
    from ssl_pipeline.versioning import workspace as dvcops

    (raw / "unlabeled").mkdir(parents=True, exist_ok=True)
    if not (root / f"{raw / 'unlabeled'}.dvc").exists() and "unlabeled" not in datasets:
        datasets = [*datasets, "unlabeled"]
    return dvcops.track(root, [str(raw / d) for d in datasets if (raw / d).is_dir()])


def _demo(args, root: Path, raw: Path) -> int:
    from ssl_pipeline.ingest.datasets import install_demo
    from ssl_pipeline.progress import Progress

    bar = Progress(5000, "demo data")
    result = install_demo(raw, seed=args.seed, progress=bar.update, replace=args.replace, if_empty=args.if_empty)
    bar.close()
    if result.get("kept"):
        print(f"not writing the demo: the workspace holds imported data ({result['kept']}); "
              "`ssl-pipeline data status` shows it")
        return 0
    for record in result["removed"]:
        print(f"removed {record.describe()}: {record.added} files")
    tracked = all((root / f"{raw / d}.dvc").exists() for d in ("unlabeled", "labeled"))
    if result["written"] or not tracked or result["removed"]:
        md5s = _track(root, raw, ["unlabeled", "labeled"])
    else:   # byte-identical demo data already tracked: skip `dvc add` (keeps a rerun fast)
        from ssl_pipeline.versioning import workspace as dvcops
        md5s = dvcops.dataset_md5s(root, str(raw))
    what = "wrote" if result["written"] else "already in place:"
    print(f"demo {what} {result['unlabeled']} unlabeled and {result['labeled_train'] + result['labeled_test']} labeled "
          f"digits ({result['labeled_train']} train, {result['labeled_test']} test, {result['classes']} classes)")
    for path, md5 in md5s.items():
        print(f"{path}: DVC md5 {md5}")
    return 0


def _import(args, root: Path, raw: Path) -> int:
    from ssl_pipeline.cli.data_report import import_lines
    from ssl_pipeline.ingest.importer import import_folder
    from ssl_pipeline.progress import Progress

    bar = Progress(1, f"import {args.path}")
    result = import_folder(Path(args.path), args.kind, raw, replace=args.replace, progress=bar.update)
    bar.close()
    md5s = _track(root, raw, [args.kind, *result.emptied])
    print("\n".join(import_lines(result, raw, md5s)))
    return 0


def _remove(args, root: Path, raw: Path) -> int:
    from ssl_pipeline.cli.data_report import removal_lines
    from ssl_pipeline.ingest import datasets
    from ssl_pipeline.ingest.records import Records

    datasets.recover(raw)
    records = Records(raw)
    datasets.register_loose(raw, records)
    removals = datasets.plan_removal(raw, records, args.ids)
    print("\n".join(removal_lines(removals, args.dry_run)))
    if not args.dry_run:
        datasets.remove(raw, records, removals)
        for path, md5 in _track(root, raw, sorted({r.record.dataset for r in removals})).items():
            print(f"{path}: DVC md5 {md5}")
    return 0


def _status(args, root: Path, raw: Path) -> int:
    from ssl_pipeline.cli.data_report import status_lines
    from ssl_pipeline.ingest import datasets
    from ssl_pipeline.ingest.records import Records
    from ssl_pipeline.versioning import workspace as dvcops

    state = dvcops.status(root, str(raw))
    records = Records(raw)
    datasets.register_loose(raw, records, save=False)   # status never writes
    imports = datasets.import_status(raw, records)
    if args.json:
        print(json.dumps({**state, "imports": imports}, indent=2, default=str))
    else:
        print("\n".join(status_lines(state, imports, raw)))
    return 0
