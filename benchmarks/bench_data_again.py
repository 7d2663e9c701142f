"""Measure prepare again on the workspace of an earlier `ssl-pipeline bench data --keep --workdir DIR`, with
today's code and without writing and importing the photos again: a full prepare with N workers (the old
store is moved aside), then ADDED more photos, `dvc add` and the re-prepare, then the pretraining step.

    python benchmarks/bench_data_again.py DIR --added 2000 --output again.json

Each run adds photos with numbers not used before, so it can be repeated on the same DIR.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from ssl_pipeline.benchmarks import data as bench
from ssl_pipeline.benchmarks.synthetic import write_photos
from ssl_pipeline.ingest.workers import worker_count
from ssl_pipeline.versioning import workspace as dvcops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workdir", type=Path, help="the --workdir of a kept `bench data` run")
    parser.add_argument("--added", type=int, default=2000, help="new photos before the re-prepare")
    parser.add_argument("--workers", type=int, default=0, help="prepare.workers (0: every core)")
    parser.add_argument("--pretrain-steps", type=int, default=30)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    root, workers = args.workdir / "ws", worker_count(args.workers)
    raw = root / "data/raw/unlabeled"
    aside = args.workdir / "prepared.before"
    shutil.rmtree(aside, ignore_errors=True)
    shutil.move(str(root / "data/prepared"), str(aside))
    full = bench.prepare_once(root, workers)
    full["images_per_s"] = round(full["counts"]["n_decoded"] / full["seconds"], 1)
    before = bench.shard_digests(root)
    start = sum(1 for _ in raw.rglob("*.jpg"))   # photo numbers never used before: new names, new contents
    write_photos(raw, start, start + args.added, 0, workers, prefix="again_")
    _, dvc_add = bench.timed(lambda: dvcops.track(root, ["data/raw/unlabeled"]), children=True)
    again = bench.prepare_once(root, workers)
    after = bench.shard_digests(root)
    image_size = json.loads((root / "data/prepared/meta.json").read_text())["image_size"]
    pretrain = argparse.Namespace(pretrain_backbone="resnet_narrow", image_size=image_size,
                                  pretrain_batch=64, pretrain_steps=args.pretrain_steps, seed=0)
    result = {"workers": workers, f"full_{workers}_workers": full,
              "re_prepare": {"added": args.added, "dvc_add": dvc_add, **again,
                             "fraction_of_full_prepare": round(again["seconds"] / full["seconds"], 3),
                             "old_shards_unchanged": all(after.get(k) == v for k, v in before.items())},
              "pretrain": bench.pretrain_step(root, pretrain)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
