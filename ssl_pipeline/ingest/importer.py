"""`ssl-pipeline data import`: add a user's folder of images to a dataset, never losing what is there.

- Adding (the default): every file is copied into a staging folder and named by its md5 (store.py); a
  file whose content the dataset already holds is counted as already present and dropped, so importing
  the same folder twice adds nothing. A labeled image the dataset already holds under another class or
  split is skipped with that reason. The new files land in the import's own folder (`import-NNNN`) by
  rename, and the import is recorded (records.py): source, time, files added, already present, skipped.
- `replace=True` (`--replace`) rebuilds the named dataset from this import alone and swaps it in whole;
  the other dataset is not touched. Its earlier imports are listed as replaced.
- A dataset that holds only the demo is replaced by the first real import, and the demo's other half goes
  too: the demo's unlabeled pool is its labeled training digits, so neither half means anything beside a
  user's images. Both are said in the result; `ssl-pipeline data demo --replace` brings the demo back.
- Labeled images are not copied into the unlabeled dataset: `prepare` pretrains on them too (without
  labels) when `data.pool_includes_labeled` is true.

Safety: which files are read is decided in sources.py (nothing outside the source, no fifos or devices);
the copy itself is `safecopy.copy_checked` (what is copied is the file that was checked, even if the folder
changes meanwhile). Destinations are checked to stay inside the staging folder; an interrupted
import leaves the dataset as it was (a pending record is rolled back by the next data command, datasets.py).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from ssl_pipeline.ingest import datasets
from ssl_pipeline.ingest.records import ImportRecord, Records, folder_name, now
from ssl_pipeline.ingest.safecopy import SourceChanged, copy_checked
from ssl_pipeline.ingest.sources import Plan, plan_import
from ssl_pipeline.config.schema import RAW_DATASETS as DATASETS
from ssl_pipeline.ingest.store import (ContentDigest, ContentIndex, DataExistsError, DataImportError,
                                       UnsafePathError, canonical_ext, dataset_files, file_md5, import_dirs, inside,
                                       swap_in)

__all__ = ["DataExistsError", "DataImportError", "UnsafePathError", "ImportResult", "SourceChanged", "import_folder",
           "swap_in"]

Progress = Callable[[int, int], None]  # progress(done, total)


@dataclass
class ImportResult:
    record: ImportRecord
    layout: str                                              # "flat" | "class" | "split"
    classes: list[str] = field(default_factory=list)         # the labeled train classes after the import
    test_split: str = ""                                     # labeled: "given" | "carve in prepare"
    replaced: list[ImportRecord] = field(default_factory=list)   # imports this one removed
    emptied: list[str] = field(default_factory=list)         # other datasets emptied (the demo's other half)


def import_folder(src: str | Path, kind: Literal["unlabeled", "labeled"], raw_dir: str | Path,
                  progress: Progress | None = None, replace: bool = False) -> ImportResult:
    """Add (or with replace=True, replace) the images of `src` to raw_dir/<kind>; see the module docstring."""
    if kind not in DATASETS:
        raise DataImportError(f"a dataset is 'unlabeled' or 'labeled' (--as), not {kind!r}")
    src, raw = _checked_paths(src, raw_dir)
    datasets.recover(raw)
    records = Records(raw)
    datasets.register_loose(raw, records)
    plan = plan_import(src, kind)
    fresh = replace or records.demo_only(kind)
    root = raw / kind
    if not fresh:
        _check_in_workspace(root, records)
    classes = _classes_after(plan, None if fresh else root)
    record = ImportRecord(id=records.next_id(), dataset=kind, source=str(src), time=now(),
                          folder=folder_name(records.next_id()), skipped=plan.skipped)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=raw))
    try:
        index = ContentIndex(None if fresh else root, labeled=kind == "labeled")
        stage_files(plan, index, staging / kind, record, progress)
        if fresh and record.added == 0:
            raise DataImportError(f"{src}: no file could be imported (see the skipped files); {root} is unchanged")
        result = ImportResult(record, plan.layout, classes)
        _commit(raw, records, record, staging, fresh, result)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if kind == "labeled":
        result.test_split = "given" if (root / "test").is_dir() else "carve in prepare"
    return result


def _checked_paths(src: str | Path, raw_dir: str | Path) -> tuple[Path, Path]:
    given = Path(src)
    if not given.is_dir():
        raise DataImportError(f"{given}: not a folder")
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    resolved, raw = given.resolve(), raw_dir.resolve()
    if inside(resolved, raw) or inside(raw, resolved):
        raise UnsafePathError(f"{given}: overlaps the data directory {raw_dir}; import from a folder outside it")
    return resolved, raw


def _check_in_workspace(root: Path, records: Records) -> None:
    """Adding to a dataset that is recorded but not here (a clone before `data pull`) would pin only the
    new files: refuse instead of dropping the rest from the next version."""
    held = [r for r in records.of(root.name) if r.added]
    if held and not any(dataset_files(root, root.name == "labeled")):
        raise DataImportError(f"{root} holds {sum(r.added for r in held)} imported files by its records but none "
                              "are in the workspace: fetch them first (`ssl-pipeline data pull`), or rebuild the "
                              "dataset from this folder alone with --replace")


def _classes_after(plan: Plan, existing_root: Path | None) -> list[str]:
    """The train classes once this import is added; refuses a label set that cannot train."""
    if plan.kind != "labeled":
        return []
    train = existing_root / "train" if existing_root is not None else None
    if existing_root is not None and existing_root.is_dir() and any(existing_root.iterdir()) and not train.is_dir():
        raise DataImportError(f"{existing_root} is not in the importer's layout (train/<class>/...); "
                              "import with --replace to rebuild it from this folder")
    held = {p.name for p in train.iterdir() if p.is_dir()} if train is not None and train.is_dir() else set()
    classes = held | set(plan.classes["train"])
    if len(classes) < 2:
        raise DataImportError(f"a labeled dataset needs at least 2 class folders with images; after this import it "
                              f"would hold {len(classes)} ({', '.join(sorted(classes))})")
    for split, names in plan.classes.items():
        extra = sorted(set(names) - classes)
        if extra:
            raise DataImportError(f"{split}/ holds classes {', '.join(extra)} that have no training images "
                                  "(in this folder's train/ or in the dataset)")
    return sorted(classes)


def stage_files(plan: Plan, index: ContentIndex, dest_root: Path, record: ImportRecord,
                progress: Progress | None = None) -> None:
    """Copy the plan's new files to dest_root/<place>/<import folder>/<md5>.<ext>; count the rest in `record`."""
    labeled = plan.kind == "labeled"
    incoming = dest_root.parent / ".incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    digest = ContentDigest()
    src_root = Path(record.source)
    for i, (source, place) in enumerate(plan.files()):
        rel = source.relative_to(src_root).as_posix()
        tmp = incoming / str(i)
        try:
            copy_checked(source, tmp, src_root)
        except OSError as err:
            record.skipped.append([rel, f"unreadable ({err.strerror or err})"])
            tmp.unlink(missing_ok=True)
            continue
        md5 = file_md5(tmp)   # of the copy: the name always matches the bytes stored
        name = md5 + canonical_ext(source.suffix)
        final = dest_root / place / record.folder / name
        held = index.find(md5)
        if held is None and final.exists():   # twice in this source
            held = place
        if held is not None:
            tmp.unlink()
            if held == place:
                record.already_present += 1
            else:
                record.skipped.append([rel, f"the same image is already in {plan.kind}/{held}"])
        else:
            if not inside(Path(os.path.abspath(final)), dest_root.resolve()):
                raise UnsafePathError(f"{source}: destination {final} escapes the data directory")
            final.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp, final)
            index.note(md5, place, labeled)
            record.files[place] = record.files.get(place, 0) + 1
            digest.add(f"{place}/{name} {md5}")
        if progress and (i % 200 == 0 or i == plan.count - 1):
            progress(i + 1, plan.count)
    record.added = sum(record.files.values())
    record.md5 = digest.hexdigest() if record.added else ""


def _commit(raw: Path, records: Records, record: ImportRecord, staging: Path, fresh: bool,
            result: ImportResult) -> None:
    """Land the staged files: a pending record first, then renames, then the record completed."""
    kind, labeled = record.dataset, record.dataset == "labeled"
    if fresh:
        result.replaced = records.of(kind)
        if any(r.is_demo for r in result.replaced):
            result.emptied = [d for d in DATASETS if d != kind and records.demo_only(d)]
            result.replaced += [r for d in result.emptied for r in records.of(d)]
        record.replaces = [r.id for r in result.replaced]
    if record.added == 0 and not fresh:
        records.add(record)   # nothing new: the attempt is still recorded
        records.save()
        return
    record.state = "pending"
    records.add(record)
    records.save()
    if fresh:
        (staging / kind).mkdir(parents=True, exist_ok=True)
        swap_in(staging / kind, raw / kind, replace=True)
        for other in result.emptied:
            datasets.empty_dataset(raw, other)
    else:
        for folder in import_dirs(staging / kind, labeled, record.folder):
            dest = raw / kind / folder.relative_to(staging / kind)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(folder, dest)
    records.drop(result.replaced)
    record.state = "complete"
    records.save()
