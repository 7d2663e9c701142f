"""`ssl-pipeline bench data`: the data path at scale, on a synthetic set of photos, printed as JSON.

Steps (each timed; wall and CPU seconds, with the load average beside every wall-clock figure):
  1. write N seeded JPEGs of mixed sizes (120-800 px) plus a small labeled set (not timed as import);
  2. `data import` of the N images: the copy, then `dvc add` (DVC's cache link types: reflink, hardlink,
     symlink, copy), and the disk bytes of data/raw + .dvc/cache counted once per inode;
  3. prepare with 1 worker and with N workers from scratch: images/s and the peak RSS of the process
     tree (sampled every 0.1 s), the cache's bytes;
  4. +added (default 1 %) new images, `dvc add`, re-prepare: seconds, files decoded, old shards' bytes;
  5. pretraining from that cache: the full step (batches gathered from the shards) vs model-only
     (ssl_core/bench.py's StepBench), and the process's anonymous RSS (RssAnon) while it runs.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import yaml

from ssl_pipeline.benchmarks.synthetic import write_labeled, write_photos
from ssl_pipeline.ingest.importer import import_folder
from ssl_pipeline.ingest.workers import worker_count
from ssl_pipeline.progress import Progress
from ssl_pipeline.versioning import workspace as dvcops

PROJECT = Path(__file__).resolve().parents[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=20_000, help="synthetic photos imported as the unlabeled pool")
    parser.add_argument("--image-size", type=int, default=96, help="data.image_size of the cache")
    parser.add_argument("--workers", type=int, default=0, help="prepare.workers of the N-worker run (0: every core)")
    parser.add_argument("--added", type=float, default=0.01, help="fraction of new images for the re-prepare")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--labeled-per-class", type=int, default=20)
    parser.add_argument("--pretrain-backbone", default="resnet_narrow")
    parser.add_argument("--pretrain-batch", type=int, default=64)
    parser.add_argument("--pretrain-steps", type=int, default=30,
                        help="timed steps per round (with a handful, full/model-only is step-to-step noise)")
    parser.add_argument("--workdir", default=None, help="where the set and workspace go (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the workdir afterwards")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="also write the JSON to this file")


def _cpu(children: bool = True) -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn, children: bool = False) -> tuple[object, dict]:
    cpu, load, start = _cpu(children) + (_cpu(False) if children else 0), os.getloadavg()[0], time.perf_counter()
    result = fn()
    wall = time.perf_counter() - start
    used = _cpu(children) + (_cpu(False) if children else 0) - cpu
    return result, {"seconds": round(wall, 2), "cpu_seconds": round(used, 2), "load_1min": round(load, 2)}


def disk_bytes(*folders: Path) -> int:
    """Allocated bytes under `folders`, each inode once (hard links share their blocks)."""
    seen, total = set(), 0
    for folder in folders:
        for dirpath, _, files in os.walk(folder):
            for name in files:
                st = os.lstat(os.path.join(dirpath, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
    return total


def run_measured(cmd: list[str], cwd: Path) -> dict:
    """Run `cmd`; wall seconds, CPU seconds and the peak RSS of its whole process tree (sum, and the
    largest process). CPU is sampled per process (every 0.1 s) because pool workers started by a
    forkserver are not our children: getrusage would miss them."""
    peak = {"tree": 0, "largest": 0}
    cpu_of: dict[int, float] = {}
    start, load = time.perf_counter(), os.getloadavg()[0]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    top = psutil.Process(proc.pid)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss = []
            try:
                for p in [top, *top.children(recursive=True)]:
                    with p.oneshot():
                        rss.append(p.memory_info().rss)
                        times = p.cpu_times()
                        cpu_of[p.pid] = times.user + times.system
            except psutil.Error:
                pass
            if rss:
                peak["tree"], peak["largest"] = max(peak["tree"], sum(rss)), max(peak["largest"], max(rss))
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed:\n{err[-3000:]}")
    return {"seconds": round(time.perf_counter() - start, 2), "cpu_seconds": round(sum(cpu_of.values()), 2),
            "load_1min": round(load, 2), "peak_rss_mb": round(peak["tree"] / 2**20, 1),
            "peak_rss_largest_process_mb": round(peak["largest"] / 2**20, 1), "stdout": out.strip()}


PREPARE = ("import json, sys; from pathlib import Path; from ssl_pipeline.config.schema import load_params; "
           "from ssl_pipeline.ingest.prepare import prepare; root = Path(sys.argv[1]); "
           "params = load_params(root / 'params.yaml', sys.argv[2:]); "
           "print(json.dumps(prepare(params, root)['counts']))")


def prepare_once(root: Path, workers: int) -> dict:
    result = run_measured([sys.executable, "-c", PREPARE, str(root), f"prepare.workers={workers}"], root)
    result["counts"] = json.loads(result.pop("stdout").splitlines()[-1])
    return result


def shard_digests(root: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (root / "data/prepared/store").glob("*.u8")}


def make_workspace(work: Path, args: argparse.Namespace) -> Path:
    root = work / "ws"
    dvcops.ensure_repo(root)
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    params["data"]["image_size"] = args.image_size
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def import_step(work: Path, root: Path, args: argparse.Namespace) -> dict:
    raw = root / "data/raw"
    _, copy = timed(lambda: import_folder(work / "source/unlabeled", "unlabeled", raw))
    _, dvc_add = timed(lambda: dvcops.track(root, ["data/raw/unlabeled"]), children=True)
    import_folder(work / "source/labeled", "labeled", raw)
    dvcops.track(root, ["data/raw/labeled"])
    sample = next((raw / "unlabeled").iterdir())
    return {"copy": copy, "dvc_add": dvc_add, "files": args.images,
            "cache_type": dvcops.dvc("config", "cache.type", cwd=root).stdout.strip(),
            "hard_links_of_a_file": os.stat(sample).st_nlink, "symlink": sample.is_symlink(),
            "source_bytes": disk_bytes(work / "source/unlabeled"),
            "raw_plus_dvc_cache_bytes": disk_bytes(raw / "unlabeled", root / ".dvc/cache")}


def pretrain_step(root: Path, args: argparse.Namespace) -> dict:
    import torch

    from ssl_core import bench as step_bench
    from ssl_core.data.cache import load_split
    from ssl_core.training.prefetch import batches

    images = load_split(root / "data/prepared", "unlabeled").images
    parser = argparse.ArgumentParser()
    step_bench.add_arguments(parser)
    bargs = parser.parse_args(["--backbone", args.pretrain_backbone, "--image-size", str(args.image_size),
                               "--batch-size", str(args.pretrain_batch), "--steps", str(args.pretrain_steps),
                               "--width", "16", "--stem-stride", "2", "--warmup-steps", "1",
                               "--cache-on-device", "off"])
    bench = step_bench.StepBench(bargs, cache=images)
    # the full step reads its batches as pretraining does: gathered from the shards, on CUDA through
    # the pinned, prefetched buffer (ssl_core/training/prefetch.py)
    gen = torch.Generator().manual_seed(args.seed)
    total = (bargs.warmup_steps + bargs.rounds * bargs.steps) * 2
    indices = [torch.randint(len(images), (args.pretrain_batch,), generator=gen) for _ in range(total)]
    source = batches(images, indices, bench.device, prefetch=bench.device.type == "cuda")
    bench.next_batch = lambda: next(source)
    anon = {"max": 0}
    full = bench.full_step

    def full_and_anon() -> None:
        full()
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                anon["max"] = max(anon["max"], int(line.split()[1]) * 1024)

    bench.full_step = full_and_anon
    seconds, cpu, _ = bench.time_full_and_model_only()
    steps = bench.timed_steps
    return {"full_step_ms": round(1000 * seconds["full"] / steps, 1),
            "model_only_step_ms": round(1000 * seconds["model_only"] / steps, 1),
            "full_over_model_only": round(seconds["model_only"] / seconds["full"], 3),
            "cpu_ms_per_step": {k: round(1000 * v / steps, 1) for k, v in cpu.items()},
            "rss_anon_max_mb": round(anon["max"] / 2**20, 1), "cache_images": len(images),
            "cache_bytes": images.nbytes,
            "config": {"backbone": args.pretrain_backbone, "batch": args.pretrain_batch, "steps": steps}}


def run(args: argparse.Namespace) -> dict:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ssl-bench-data-"))
    workers = worker_count(args.workers)
    result: dict = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                    "cpu_count": os.cpu_count(), "workers": workers, "images": args.images,
                    "image_size": args.image_size, "workdir": str(work)}
    try:
        bar = Progress(args.images, "write synthetic photos")
        write_photos(work / "source/unlabeled", 0, args.images, args.seed, workers, progress=bar.update)
        bar.close()
        write_labeled(work / "source/labeled", args.classes, args.labeled_per_class, args.seed)
        root = make_workspace(work, args)
        result["import"] = import_step(work, root, args)
        runs = {}
        for n in sorted({1, workers}):
            shutil.rmtree(root / "data/prepared", ignore_errors=True)
            runs[n] = prepare_once(root, n)
            total = runs[n]["counts"]["n_decoded"]
            runs[n]["images_per_s"] = round(total / runs[n]["seconds"], 1)
        result["prepare"] = {f"{n}_workers": r for n, r in runs.items()}
        result["prepare"]["speedup"] = round(runs[workers]["images_per_s"] / runs[1]["images_per_s"], 3)
        result["cache_bytes"] = sum(p.stat().st_size for p in (root / "data/prepared/store").glob("*.u8"))
        before = shard_digests(root)
        added = max(1, round(args.images * args.added))
        write_photos(root / "data/raw/unlabeled", args.images, args.images + added, args.seed, workers, prefix="new_")
        _, dvc_add = timed(lambda: dvcops.track(root, ["data/raw/unlabeled"]), children=True)
        again = prepare_once(root, workers)
        after = shard_digests(root)
        result["re_prepare"] = {"added": added, "dvc_add": dvc_add, **again,
                                "fraction_of_full_prepare": round(again["seconds"] / runs[workers]["seconds"], 3),
                                "old_shards_unchanged": all(after.get(k) == v for k, v in before.items())}
        result["pretrain"] = pretrain_step(root, args)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return result


def run_and_report(args: argparse.Namespace) -> dict:
    result = run(args)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")
    return result
