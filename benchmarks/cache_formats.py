"""Benchmark of sharded uint8 image-cache formats (issue 21).

Compares, on the same seeded synthetic decoded uint8 images [C, H, W], a plain numpy-memmap
shard layout with webdataset, litdata, mosaicml-streaming and today's single torch.save'd
tensor per split. For each candidate it measures, each phase in a fresh subprocess:

  write   images/s (until the writer returns, and with an fsync of every file), peak RSS, bytes on disk
  determinism   a second write of the same input, compared file by file (sha256)
  read    random batches of --batch uniformly random indices (page cache warm, after a warm-up):
          batches/s, images/s, peak RSS; webdataset only offers sequential iteration with a
          shuffle buffer, which is what is timed for it
  cold    the same in a new process after posix_fadvise(DONTNEED) on every cache file
  append  one more shard of new images: are the old files byte-identical afterwards?
  lines   non-blank, non-comment source lines of the candidate's adapter class below

Candidate libraries are optional: a missing one is reported as "not installed" and the rest run.

    PYTHONPATH=/path/to/libs python benchmarks/cache_formats.py --n 20000 --size 96 --channels 3 \
        --batch 256 --out results.json --markdown results.md
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import importlib
import importlib.metadata
import inspect
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BLOCK_BYTES = 32 << 20  # synthetic images are produced (and handed to writers) in blocks of about this size
ID_BYTES = 8            # every image starts with its own index (little-endian), for verification
CANDIDATES = ("numpy", "torch", "webdataset", "litdata", "mds")
MODULES = {"numpy": "numpy", "torch": "torch", "webdataset": "webdataset", "litdata": "litdata",
           "mds": "streaming"}
DISTRIBUTIONS = {"numpy": "numpy", "torch": "torch", "webdataset": "webdataset",
                 "litdata": "litdata", "mds": "mosaicml-streaming"}


# ---------------------------------------------------------------------------------------------
# Synthetic data: image i = base[i % b] + (i // b) (uint8, wrapping), first 8 bytes = i, where b is
# the block length (images per BLOCK_BYTES, at most 1024).
# Cheap to produce (memory speed), deterministic, and every image is identifiable after a read.
# ---------------------------------------------------------------------------------------------

class Synth:
    """Seeded, index-addressable synthetic images; picklable (litdata calls it in a worker)."""

    def __init__(self, shape: tuple[int, int, int], seed: int, start: int, stop: int):
        self.shape, self.seed, self.start, self.stop = tuple(shape), seed, start, stop
        self.block = max(1, min(1024, BLOCK_BYTES // int(np.prod(self.shape))))

    @functools.cached_property
    def base(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        return rng.integers(0, 256, size=(self.block,) + self.shape, dtype=np.uint8)

    def images(self, start: int, stop: int) -> np.ndarray:
        """uint8 [stop - start, C, H, W] for global indices start..stop-1 (any range)."""
        idx = np.arange(start, stop)
        out = self.base[idx % self.block]
        out += (idx // self.block % 256).astype(np.uint8)[:, None, None, None]
        flat = out.reshape(len(idx), -1)
        flat[:, :ID_BYTES] = idx.astype("<u8").view(np.uint8).reshape(len(idx), ID_BYTES)
        return out

    def ranges(self) -> list[tuple[int, int]]:
        """[start, stop) pieces of at most one block covering this source."""
        return [(a, min(a + self.block, self.stop)) for a in range(self.start, self.stop, self.block)]

    def blocks(self):
        for a, b in self.ranges():
            yield a, self.images(a, b)


def image_ids(batch: np.ndarray) -> np.ndarray:
    flat = np.ascontiguousarray(batch).reshape(len(batch), -1)[:, :ID_BYTES]
    return flat.copy().view("<u8").ravel().astype(np.int64)


def check_batch(synth: Synth, batch, expected_idx=None) -> bool:
    """True when every image of the batch is byte-identical to the synthetic image it claims to be."""
    batch = np.asarray(batch)
    ids = image_ids(batch)
    if expected_idx is not None and not np.array_equal(ids, np.asarray(expected_idx)):
        return False
    if ids.min() < synth.start or ids.max() >= synth.stop:
        return False
    ref = np.stack([synth.images(int(i), int(i) + 1)[0] for i in ids])
    return bool(np.array_equal(batch, ref))


# ---------------------------------------------------------------------------------------------
# Adapters: what the project would need to write/append/read each format.
# write(out, synth, shard) / append(out, synth, shard) / open(out) -> reader with
# __len__, and either gather(idx) -> uint8 tensor [B, C, H, W] or iterate(batch, seed).
# ---------------------------------------------------------------------------------------------

class NumpyShards:
    """Raw uint8 shard files (shard-NNNNN.u8, [n, C, H, W] C-order) + index.json, read by np.memmap."""

    random_access = True

    def write(self, out: Path, synth: Synth, shard: int) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self._write(out, synth, shard, {"shape": list(synth.shape), "dtype": "uint8", "shards": []})

    def append(self, out: Path, synth: Synth, shard: int) -> None:
        self._write(out, synth, shard, json.loads((out / "index.json").read_text()))

    def _write(self, out: Path, synth: Synth, shard: int, index: dict) -> None:
        fh, count = None, 0
        for _, images in synth.blocks():
            while len(images):
                if fh is None:
                    name = f"shard-{len(index['shards']):05d}.u8"
                    fh, count = open(out / f".{name}.tmp", "wb"), 0   # noqa: SIM115 - spans blocks
                take = min(shard - count, len(images))
                # image by image: one 30 MB write() per block was slower here
                fh.writelines(np.ascontiguousarray(image).data for image in images[:take])
                images, count = images[take:], count + take
                if count == shard:
                    self._close(out, fh, name, count, index)
                    fh = None
        if fh is not None:
            self._close(out, fh, name, count, index)
        tmp = out / ".index.json.tmp"
        tmp.write_text(json.dumps(index, indent=1))
        os.replace(tmp, out / "index.json")

    @staticmethod
    def _close(out: Path, fh, name: str, count: int, index: dict) -> None:
        fh.close()
        os.replace(fh.name, out / name)
        index["shards"].append({"file": name, "count": count})

    def open(self, out: Path) -> NumpyShards.Reader:
        return NumpyShards.Reader(out)

    class Reader:
        def __init__(self, out: Path):
            index = json.loads((out / "index.json").read_text())
            shape = tuple(index["shape"])
            self.shape = shape
            self.arrays = [np.memmap(out / s["file"], dtype=np.uint8, mode="r", shape=(s["count"],) + shape)
                           for s in index["shards"]]
            self.starts = np.cumsum([0] + [s["count"] for s in index["shards"]])

        def __len__(self) -> int:
            return int(self.starts[-1])

        def gather(self, idx) -> torch.Tensor:
            idx = np.asarray(idx, dtype=np.int64)
            shard = np.searchsorted(self.starts, idx, side="right") - 1
            out = np.empty((len(idx),) + self.shape, dtype=np.uint8)
            for s in np.unique(shard):
                sel = shard == s
                out[sel] = self.arrays[s][idx[sel] - self.starts[s]]
            return torch.from_numpy(out)


class TorchSaveBaseline:
    """Today's layout: one torch.save'd uint8 tensor per split, loaded with mmap=True."""

    random_access = True

    def write(self, out: Path, synth: Synth, shard: int) -> None:
        images = synth.images(synth.start, synth.stop)   # the whole split in memory, as today
        self._save(out, torch.from_numpy(images))

    def append(self, out: Path, synth: Synth, shard: int) -> None:
        old = torch.load(out / "images.pt", weights_only=True, mmap=True)["images"]
        self._save(out, torch.cat([old, torch.from_numpy(synth.images(synth.start, synth.stop))]))

    @staticmethod
    def _save(out: Path, images: torch.Tensor) -> None:
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / ".images.pt.tmp"
        torch.save({"images": images}, tmp)
        os.replace(tmp, out / "images.pt")

    def open(self, out: Path) -> TorchSaveBaseline.Reader:
        return TorchSaveBaseline.Reader(out)

    class Reader:
        def __init__(self, out: Path):
            self.images = torch.load(out / "images.pt", weights_only=True, mmap=True)["images"]

        def __len__(self) -> int:
            return self.images.shape[0]

        def gather(self, idx) -> torch.Tensor:
            return self.images[torch.as_tensor(idx, dtype=torch.long)]


class WebDatasetTar:
    """Tar shards (shard-NNNNNN.tar), one .npy member per image; sequential reads + shuffle buffer."""

    random_access = False
    shuffle_buffer = 1000

    def write(self, out: Path, synth: Synth, shard: int) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self._write(out, synth, shard, start_shard=0)

    def append(self, out: Path, synth: Synth, shard: int) -> None:
        self._write(out, synth, shard, start_shard=len(list(out.glob("shard-*.tar"))))

    @staticmethod
    def _write(out: Path, synth: Synth, shard: int, start_shard: int) -> None:
        import webdataset as wds
        # mtime fixed: the default (now) makes every tar header differ between two writes
        with wds.ShardWriter(str(out / "shard-%06d.tar"), maxcount=shard, maxsize=1e15,
                             start_shard=start_shard, verbose=0, mtime=0.0) as sink:
            for start, images in synth.blocks():
                for i, image in enumerate(images, start):
                    sink.write({"__key__": f"{i:010d}", "npy": image})

    def open(self, out: Path) -> WebDatasetTar.Reader:
        return WebDatasetTar.Reader(out)

    class Reader:
        def __init__(self, out: Path):
            self.urls = sorted(str(p) for p in out.glob("shard-*.tar"))

        def __len__(self) -> int:
            import webdataset as wds
            return sum(1 for _ in wds.WebDataset(self.urls, shardshuffle=False))

        def iterate(self, batch: int, seed: int):
            import webdataset as wds
            pipeline = (wds.WebDataset(self.urls, shardshuffle=len(self.urls), seed=seed)
                        .shuffle(WebDatasetTar.shuffle_buffer, seed=seed).decode()
                        .to_tuple("npy").batched(batch, partial=False))
            for (images,) in pipeline:
                yield torch.from_numpy(np.asarray(images))


def _litdata_samples(synth: Synth, piece: tuple[int, int]):
    """litdata's optimize() fn: one input is a [start, stop) range; yields one sample per image."""
    for image in synth.images(*piece):
        yield {"image": image}


class LitData:
    """litdata.optimize() chunks + StreamingDataset, one item per index."""

    random_access = True

    def write(self, out: Path, synth: Synth, shard: int) -> None:
        self._optimize(out, synth, shard, mode="overwrite")

    def append(self, out: Path, synth: Synth, shard: int) -> None:
        self._optimize(out, synth, shard, mode="append")

    @staticmethod
    def _optimize(out: Path, synth: Synth, shard: int, mode: str) -> None:
        from litdata import optimize
        optimize(fn=functools.partial(_litdata_samples, synth), inputs=synth.ranges(),
                 output_dir=str(out), chunk_size=shard, num_workers=1, mode=mode, verbose=False)

    def open(self, out: Path) -> LitData.Reader:
        return LitData.Reader(out)

    class Reader:
        def __init__(self, out: Path):
            from litdata import StreamingDataset
            # batch_decode=0: decode only the requested item (the default decodes a 256-item window)
            self.dataset = StreamingDataset(str(out), batch_decode=0)

        def __len__(self) -> int:
            return len(self.dataset)

        def gather(self, idx) -> torch.Tensor:
            return torch.from_numpy(np.stack([self.dataset[int(i)]["image"] for i in idx]))


class MosaicMDS:
    """mosaicml-streaming MDS shards, one part-NNNNN/ folder per write, merged root index.json."""

    random_access = True

    def write(self, out: Path, synth: Synth, shard: int) -> None:
        self._write_part(out, synth, shard, part=0)

    def append(self, out: Path, synth: Synth, shard: int) -> None:
        self._write_part(out, synth, shard, part=len(list(out.glob("part-*"))))

    @staticmethod
    def _write_part(out: Path, synth: Synth, shard: int, part: int) -> None:
        from streaming import MDSWriter
        from streaming.base.util import merge_index
        nbytes = int(np.prod(synth.shape))
        column = "ndarray:uint8:" + ",".join(map(str, synth.shape))
        # size_limit in bytes: `shard` samples + 4-byte offsets + header, < one sample of slack
        limit = shard * (nbytes + 4) + 8 + nbytes // 2
        with MDSWriter(out=str(out / f"part-{part:05d}"), columns={"image": column},
                       size_limit=limit, compression=None, hashes=[], progress_bar=False) as sink:
            for _, images in synth.blocks():
                for image in images:
                    sink.write({"image": image})
        # merge_index refuses to replace an existing root index.json, so it is removed first
        # (readers opening the cache in between would find no index)
        (out / "index.json").unlink(missing_ok=True)
        merge_index(str(out), keep_local=True)

    def open(self, out: Path) -> MosaicMDS.Reader:
        return MosaicMDS.Reader(out)

    class Reader:
        def __init__(self, out: Path):
            from streaming import StreamingDataset
            from streaming.base.util import clean_stale_shared_memory
            clean_stale_shared_memory()
            self.dataset = StreamingDataset(local=str(out), batch_size=1, shuffle=False)

        def __len__(self) -> int:
            return len(self.dataset)

        def gather(self, idx) -> torch.Tensor:
            return torch.from_numpy(np.stack([self.dataset.get_item(int(i))["image"] for i in idx]))


ADAPTERS = {"numpy": NumpyShards, "torch": TorchSaveBaseline, "webdataset": WebDatasetTar,
            "litdata": LitData, "mds": MosaicMDS}


# ---------------------------------------------------------------------------------------------
# Measurement helpers
# ---------------------------------------------------------------------------------------------

def peak_rss_mb() -> float:
    """Peak RSS of this process (VmHWM) and of its waited-for children (ru_maxrss, KiB on Linux).

    VmHWM rather than RUSAGE_SELF: a process's ru_maxrss survives exec, so it would include the
    driver's RSS at the moment it forked this worker.
    """
    own = proc_status_mb("VmHWM")["VmHWM"]
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return max(own, kids)


def proc_status_mb(*keys: str) -> dict:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in keys:
            out[name] = int(value.split()[0]) / 1024
    return out


def files_of(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def tree_digest(root: Path) -> dict[str, str]:
    digests = {}
    for path in files_of(root):
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        digests[str(path.relative_to(root))] = h.hexdigest()
    return digests


def fsync_tree(root: Path) -> None:
    for path in files_of(root):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def evict_tree(root: Path) -> None:
    """Drop this cache's pages from the page cache (only its own files; no root needed)."""
    for path in files_of(root):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def adapter_lines(candidate: str) -> int:
    """Non-blank, non-comment, non-docstring lines of the adapter (plus its module-level helper)."""
    sources = [inspect.getsource(ADAPTERS[candidate])]
    if candidate == "litdata":
        sources.append(inspect.getsource(_litdata_samples))
    count = 0
    for source in sources:
        for line in source.splitlines():
            text = line.strip()
            if text and not text.startswith(("#", '"""')):
                count += 1
    return count


# ---------------------------------------------------------------------------------------------
# Worker phases (each runs in its own subprocess and prints one JSON line)
# ---------------------------------------------------------------------------------------------

def phase_write(args, adapter, synth: Synth) -> dict:
    out = Path(args.dir)
    t0 = time.perf_counter()
    for _ in synth.blocks():   # the synthetic source alone: the ceiling for every writer
        pass
    synth_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    adapter.write(out, synth, args.shard)
    write_s = time.perf_counter() - t0
    fsync_tree(out)
    total_s = time.perf_counter() - t0
    files = files_of(out)
    return {"synth_only_images_per_s": synth.stop / synth_s, "write_s": write_s, "write_fsync_s": total_s,
            "images_per_s": synth.stop / write_s,
            "images_per_s_fsync": synth.stop / total_s,
            "rss_peak_mb": peak_rss_mb(), "bytes": sum(p.stat().st_size for p in files),
            "files": len(files)}


def phase_append(args, adapter, synth: Synth) -> dict:
    out = Path(args.dir)
    before = tree_digest(out)
    t0 = time.perf_counter()
    adapter.append(out, synth, args.shard)
    append_s = time.perf_counter() - t0
    after = tree_digest(out)
    changed = sorted(name for name, digest in before.items() if after.get(name) != digest)
    reader = adapter.open(out)
    return {"append_s": append_s, "len_after": len(reader),
            "changed_old_data_files": [name for name in changed if not name.endswith(".json")],
            "changed_old_index_files": [name for name in changed if name.endswith(".json")],
            "added_files": sorted(set(after) - set(before)),
            "appended_ok": _check_appended(reader, synth)}


def _check_appended(reader, synth: Synth) -> bool | None:
    if not hasattr(reader, "gather"):
        return None
    idx = np.linspace(synth.start, synth.stop - 1, 16).astype(np.int64)
    return check_batch(synth, reader.gather(idx).numpy(), idx)


def random_batches(n: int, batch: int, seed: int):
    rng = np.random.default_rng(seed)
    while True:
        yield rng.choice(n, size=batch, replace=False)


def timed_gather(reader, args, warmup: int, max_batches: int, seconds: float) -> tuple[int, float, bool]:
    batches = random_batches(len(reader), args.batch, args.seed + 1)
    ok = True
    for _ in range(warmup):
        batch = reader.gather(next(batches))
        ok &= tuple(batch.shape) == (args.batch,) + tuple(args.shape) and batch.dtype == torch.uint8
    done, t0 = 0, time.perf_counter()
    while done < max_batches and time.perf_counter() - t0 < seconds:
        reader.gather(next(batches))
        done += 1
    return done, time.perf_counter() - t0, ok


def timed_iterate(reader, args, warmup: int, max_batches: int, seconds: float) -> tuple[int, float, bool]:
    stream = reader.iterate(args.batch, args.seed + 1)
    ok = True
    for _ in range(warmup):
        batch = next(stream)
        ok &= tuple(batch.shape) == (args.batch,) + tuple(args.shape) and batch.dtype == torch.uint8
    done, t0 = 0, time.perf_counter()
    for _ in stream:
        done += 1
        if done >= max_batches or time.perf_counter() - t0 >= seconds:
            break
    return done, time.perf_counter() - t0, ok


def phase_read(args, adapter, synth: Synth) -> dict:
    cold = args.phase == "cold"
    t0 = time.perf_counter()
    reader = adapter.open(Path(args.dir))
    open_s = time.perf_counter() - t0
    warmup, max_batches, seconds = (0, args.cold_batches, 1e9) if cold else (3, 10_000, args.read_seconds)
    timer = timed_gather if adapter.random_access else timed_iterate
    done, elapsed, ok = timer(reader, args, warmup, max_batches, seconds)
    correct = _check_read(reader, adapter, args, synth)
    return {"open_s": open_s, "batches": done, "seconds": elapsed, "batches_per_s": done / elapsed,
            "images_per_s": done * args.batch / elapsed, "shape_ok": ok, "content_ok": correct,
            "rss_peak_mb": peak_rss_mb(), **proc_status_mb("RssAnon", "RssFile")}


def _check_read(reader, adapter, args, synth: Synth) -> bool:
    """Byte-compare one batch against the synthetic source (ids must match the requested indices)."""
    if adapter.random_access:
        idx = np.random.default_rng(args.seed + 2).choice(synth.stop, size=min(64, args.batch), replace=False)
        return check_batch(synth, reader.gather(idx).numpy(), idx)
    return check_batch(synth, next(reader.iterate(args.batch, args.seed + 2)).numpy())


def run_phase(args) -> None:
    if args.candidate == "litdata":   # keep litdata's staging folders next to the cache, not in /tmp
        os.environ.setdefault("DATA_OPTIMIZER_CACHE_FOLDER", args.dir + ".litcache/chunks")
        os.environ.setdefault("DATA_OPTIMIZER_DATA_CACHE_FOLDER", args.dir + ".litcache/data")
    importlib.import_module(MODULES[args.candidate])
    rss_imported = peak_rss_mb()
    adapter = ADAPTERS[args.candidate]()
    if args.phase == "append":
        synth = Synth(args.shape, args.seed, args.n, args.n + args.shard)
        result = phase_append(args, adapter, synth)
    else:
        synth = Synth(args.shape, args.seed, 0, args.n)
        result = phase_write(args, adapter, synth) if args.phase == "write" else phase_read(args, adapter, synth)
    result["rss_after_imports_mb"] = rss_imported
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

def spawn(args, candidate: str, phase: str, directory: Path) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--phase", phase, "--candidate", candidate,
           "--dir", str(directory), "--n", str(args.n), "--size", str(args.size),
           "--channels", str(args.channels), "--batch", str(args.batch), "--shard", str(args.shard),
           "--seed", str(args.seed), "--read-seconds", str(args.read_seconds),
           "--cold-batches", str(args.cold_batches)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.phase_timeout, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error": f"{phase} failed (rc {proc.returncode}): " + " | ".join(tail)}
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t0
    return result


def availability(candidate: str) -> str | None:
    """None when importable, else the reason. Tried in a subprocess so the driver stays small."""
    proc = subprocess.run([sys.executable, "-c", f"import {MODULES[candidate]}"],
                          capture_output=True, text=True, check=False)
    if proc.returncode == 0:
        return None
    lines = proc.stderr.strip().splitlines() or ["?"]
    return f"not installed ({lines[-1]})"


def determinism(args, candidate: str, first: Path, work: Path) -> dict:
    second = work / f"{candidate}-again"
    result = spawn(args, candidate, "write", second)
    if "error" in result:
        return {"deterministic": None, "error": result["error"]}
    a, b = tree_digest(first), tree_digest(second)
    shutil.rmtree(second, ignore_errors=True)
    shutil.rmtree(str(second) + ".litcache", ignore_errors=True)
    differing = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return {"deterministic": not differing, "differing_files": differing,
            "second_write_images_per_s": result["images_per_s"]}


def bench_candidate(args, candidate: str, work: Path) -> dict:
    missing = availability(candidate)
    if missing:
        return {"status": missing}
    print(f"[{candidate}] write", file=sys.stderr, flush=True)
    directory = work / candidate
    row = {"status": "ok", "lines": adapter_lines(candidate),
           "random_index": ADAPTERS[candidate].random_access,
           "write": spawn(args, candidate, "write", directory)}
    if "error" in row["write"]:
        row["status"] = row["write"]["error"]
        return row
    if args.determinism:
        print(f"[{candidate}] determinism", file=sys.stderr, flush=True)
        row["determinism"] = determinism(args, candidate, directory, work)
    print(f"[{candidate}] read", file=sys.stderr, flush=True)
    row["read"] = spawn(args, candidate, "read", directory)
    evict_tree(directory)
    row["cold"] = spawn(args, candidate, "cold", directory)
    print(f"[{candidate}] append", file=sys.stderr, flush=True)
    row["append"] = spawn(args, candidate, "append", directory)
    if not args.keep:
        shutil.rmtree(directory, ignore_errors=True)
        shutil.rmtree(str(directory) + ".litcache", ignore_errors=True)
    return row


def versions() -> dict:
    found = {"python": platform.python_version()}
    for dist in DISTRIBUTIONS.values():
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = None
    return found


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    model = next((l.split(":", 1)[1].strip() for l in cpuinfo if l.startswith("model name")), "?")
    mem = next((l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines()
                if l.startswith("MemTotal")), "0")
    return {"cpu_model": model, "cpus": os.cpu_count(), "mem_gib": round(int(mem) / 2**20, 1),
            "kernel": platform.release()}


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def _fmt(value, spec: str = ".0f") -> str:
    return "n/a" if value is None else format(value, spec)


def markdown_row(name: str, row: dict) -> str:
    if row.get("status") != "ok":
        return f"| {name} | {row.get('status')} |" + " |" * 11
    w, r, c, a = row["write"], row.get("read", {}), row.get("cold", {}), row.get("append", {})
    det = {True: "yes", False: "no: " + ", ".join(row.get("determinism", {}).get("differing_files", [])),
           None: "not checked"}[row.get("determinism", {}).get("deterministic")]
    gather = "yes" if row["random_index"] else "no (sequential + shuffle buffer)"
    write_growth = w.get("rss_peak_mb", 0) - w.get("rss_after_imports_mb", 0)
    read_growth = r.get("rss_peak_mb", 0) - r.get("rss_after_imports_mb", 0)
    append = "error" if "error" in a else (
        "old shards untouched" if not a.get("changed_old_data_files")
        else f"rewrites {len(a['changed_old_data_files'])} old data file(s)")
    return (f"| {name} | {_fmt(w.get('images_per_s'))} | {_fmt(w.get('images_per_s_fsync'))} "
            f"| {_fmt(w.get('rss_peak_mb'))} (+{_fmt(write_growth)}) "
            f"| {_fmt(w.get('bytes', 0) / 1e6, '.1f')} "
            f"| {_fmt(r.get('batches_per_s'), '.1f')} | {_fmt(r.get('images_per_s'))} "
            f"| {_fmt(c.get('images_per_s'))} | {_fmt(r.get('rss_peak_mb'))} (+{_fmt(read_growth)}) "
            f"/ {_fmt(r.get('RssAnon'))} "
            f"| {gather} | {det} | {append} | {row['lines']} |")


def markdown(results: dict) -> str:
    head = ("| format | write img/s | write img/s incl. fsync | write peak RSS MB (+ over imports) | on disk MB "
            "| read batches/s (warm) | read img/s (warm) | read img/s (cold) "
            "| reader peak RSS MB (+ over imports) / RssAnon at end "
            "| batch = one gather of random indices | deterministic | append | adapter lines |")
    lines = [head, "|" + "---|" * 13]
    lines += [markdown_row(name, row) for name, row in results["candidates"].items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=20_000, help="images in the cache")
    p.add_argument("--size", type=int, default=96, help="image height = width")
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--batch", type=int, default=256, help="random indices per read batch")
    p.add_argument("--shard", type=int, default=4096, help="images per shard / chunk")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--candidates", default=",".join(CANDIDATES), help="comma list of " + ",".join(CANDIDATES))
    p.add_argument("--read-seconds", type=float, default=5.0, help="timed window of the warm read")
    p.add_argument("--cold-batches", type=int, default=10, help="batches timed after evicting the cache")
    p.add_argument("--no-determinism", dest="determinism", action="store_false",
                   help="skip the second write + byte comparison")
    p.add_argument("--workdir", default=None, help="where caches are written (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the written caches")
    p.add_argument("--phase-timeout", type=float, default=600.0, help="seconds per subprocess phase")
    p.add_argument("--out", default="results.json")
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    p.add_argument("--phase", choices=("write", "read", "cold", "append"), help=argparse.SUPPRESS)
    p.add_argument("--candidate", choices=CANDIDATES, help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.shape = (args.channels, args.size, args.size)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.phase:
        return run_phase(args)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="cache-formats-"))
    work.mkdir(parents=True, exist_ok=True)
    results = {"command": " ".join([Path(sys.executable).name] + sys.argv),
               "pythonpath": os.environ.get("PYTHONPATH"),
               "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(), "versions": versions(),
               "params": {k: getattr(args, k) for k in ("n", "size", "channels", "batch", "shard", "seed",
                                                        "read_seconds", "cold_batches")},
               "dataset_mb": args.n * int(np.prod(args.shape)) / 1e6, "candidates": {}}
    for candidate in [c for c in args.candidates.split(",") if c]:
        results["candidates"][candidate] = bench_candidate(args, candidate, work)
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    table = markdown(results)
    if args.markdown:
        Path(args.markdown).write_text(table)
    print(table)


if __name__ == "__main__":
    main()
