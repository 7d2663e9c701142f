"""CIFAR-10 as a user's folder of images: unpack ../shared/datasets/cifar10-train-jpg.tar.gz (the
training set as train/<class>/NNNN.jpg) outside the git tree, whole or a class-balanced subset,
then import it like any folder:

    python -m ssl_pipeline.ingest.cifar --per-class 1000            # -> ~/.cache/ssl-pipeline/cifar10-1000
    ssl-pipeline data import ~/.cache/ssl-pipeline/cifar10-1000/train --as labeled

(labeled; `prepare` pretrains on the same images without labels, data.pool_includes_labeled, and
carves the seeded, class-balanced test and validation splits out of it, since the archive has no test split).

Safety: only regular files named train/<class>/<file> are extracted, through tarfile's "data"
filter (no absolute paths, nothing outside the destination, no links or device files); the files
land in a staging folder that is renamed into place when complete, so an interrupted unpack leaves
nothing half-written; a destination inside a git work tree is refused (the data is never committed).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tarfile
from pathlib import Path

from ssl_core.fsutil import file_sha256

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ARCHIVE = PROJECT_ROOT.parent / "shared" / "datasets" / "cifar10-train-jpg.tar.gz"
ARCHIVE_SHA256 = "539a2defbe73f0e301e27c4ad6d0e5710c50a675f4bba542b3bc662ae55ed329"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MARKER = ".unpacked.json"


class CifarError(ValueError):
    """The archive cannot be unpacked as asked; the message says why and what to do."""


def default_dest(per_class: int = 0) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "ssl-pipeline" / (f"cifar10-{per_class}" if per_class else "cifar10")


def _git_work_tree(path: Path) -> Path | None:
    for folder in (path, *path.parents):
        if (folder / ".git").exists():
            return folder
    return None


def _select(members: list[tarfile.TarInfo], per_class: int, classes: tuple[str, ...] | None) -> list[tarfile.TarInfo]:
    """train/<class>/<file> regular files; the first per_class names (sorted) of each class (0: all)."""
    by_class: dict[str, list[tarfile.TarInfo]] = {}
    for m in members:
        parts = m.name.split("/")
        if not m.isreg() or len(parts) != 3 or parts[0] != "train" or any(p in ("", ".", "..") for p in parts):
            continue
        if classes is None or parts[1] in classes:
            by_class.setdefault(parts[1], []).append(m)
    missing = sorted(set(classes or ()) - set(by_class))
    if missing:
        raise CifarError(f"class(es) {', '.join(missing)} are not in the archive; it has {', '.join(sorted(by_class))}")
    chosen = []
    for name in sorted(by_class):
        files = sorted(by_class[name], key=lambda m: m.name)
        chosen += files[:per_class] if per_class else files
    return sorted(chosen, key=lambda m: m.offset_data)   # archive order: one forward pass through the gzip stream


def unpack(archive: Path = DEFAULT_ARCHIVE, dest: Path | None = None, per_class: int = 0,
           classes: list[str] | tuple[str, ...] | None = None, verify: bool = True) -> Path:
    """Unpack `archive` into `dest` (default ~/.cache/ssl-pipeline/cifar10[-N]); returns dest/train.

    per_class: keep the first N images (by file name) of each class, 0 = all 5,000.
    classes: only these classes (default all ten). verify: check the published sha256 first.
    Idempotent: a destination already unpacked with the same request is returned as is.
    """
    archive = Path(archive)
    if not archive.is_file():
        raise CifarError(f"{archive} not found; it is the CIFAR-10 archive under ../shared/datasets/")
    dest = Path(dest if dest is not None else default_dest(per_class)).expanduser().resolve()
    for base in (Path.cwd().resolve(), PROJECT_ROOT):
        tree = _git_work_tree(base)
        if tree is not None and (dest == tree or tree in dest.parents):
            raise CifarError(f"{dest} is inside the git work tree {tree}; unpack outside it "
                             "(e.g. the default ~/.cache/ssl-pipeline/) and import it with `ssl-pipeline data import`")
    request = {"archive": archive.name, "per_class": per_class, "classes": sorted(classes) if classes else None}
    marker = dest / MARKER
    if marker.exists() and json.loads(marker.read_text()) == request:
        return dest / "train"
    if dest.exists() and any(dest.iterdir()):
        raise CifarError(f"{dest} already holds other files; remove it or pass another destination")
    if verify and file_sha256(archive) != ARCHIVE_SHA256:
        raise CifarError(f"{archive}: sha256 differs from the published {ARCHIVE_SHA256[:16]}...; "
                         "the archive is damaged or another file (pass verify=False / --no-verify to use it anyway)")
    staging = dest.parent / f".{dest.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            chosen = _select(tar.getmembers(), per_class, tuple(classes) if classes else None)
            try:
                tar.extractall(staging, members=chosen, filter="data")
            except tarfile.FilterError as err:
                raise CifarError(f"{archive}: refused an unsafe member ({err})") from err
        (staging / MARKER).write_text(json.dumps(request))
        if dest.exists():
            dest.rmdir()   # empty (checked above)
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest / "train"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssl_pipeline.ingest.cifar", description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--dest", type=Path, help="destination folder (default ~/.cache/ssl-pipeline/cifar10[-N])")
    parser.add_argument("--per-class", type=int, default=0, help="images per class (default 0: all 5,000)")
    parser.add_argument("--classes", help="comma-separated class names (default: all ten)")
    parser.add_argument("--no-verify", dest="verify", action="store_false", help="skip the sha256 check")
    args = parser.parse_args(argv)
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    try:
        folder = unpack(args.archive, args.dest, args.per_class, classes, args.verify)
    except CifarError as err:
        print(f"error: {err}")
        return 2
    count = sum(1 for _ in folder.rglob("*.jpg"))
    print(f"{count} images in {folder}\nimport them with:\n  ssl-pipeline data import {folder} --as labeled")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
