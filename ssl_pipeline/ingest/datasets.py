"""The datasets under data.raw_dir as a whole: finishing interrupted imports, recording data that has no
record yet, removing imports, and what `ssl-pipeline data status` shows about each import.

Every function that changes a dataset expects the caller to hold the workspace lock (the CLI holds the
DVC workspace lock from the first step to `dvc add`), so a leftover staging folder or a pending record
always belongs to an interrupted command, never to one still running.
"""
from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ssl_pipeline.ingest.demo import Progress, holds_demo, write_demo
from ssl_pipeline.ingest.records import DEMO_SOURCE, LOOSE_SOURCE, ImportRecord, Records, now
from ssl_pipeline.config.schema import RAW_DATASETS as DATASETS
from ssl_pipeline.ingest.store import (DataExistsError, DataImportError, dataset_files, import_dirs, import_summary,
                                       prune_empty, remove_folder, swap_in)


def recover(raw: Path) -> list[str]:
    """Clean up after an interrupted command: staging and trash folders go; a pending import is rolled
    back, or completed when its files already replaced the dataset (the last step but one). Returns
    one line per repaired import."""
    raw = Path(raw)
    for leftover in [*raw.glob(".import-*"), *raw.glob(".demo-*"), *raw.glob(".trash-*")]:
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    records = Records(raw)
    notes = []
    for record in [r for r in records.entries if r.state == "pending"]:
        labeled = record.dataset == "labeled"
        landed = import_dirs(raw / record.dataset, labeled, record.folder)
        if record.replaces and landed:
            replaced = [r for r in records.entries if r.id in record.replaces]
            for other in {r.dataset for r in replaced} - {record.dataset}:
                empty_dataset(raw, other)
            records.drop(replaced)
            record.state = "complete"
            notes.append(f"completed the interrupted {record.describe()}")
        else:
            for folder in landed:
                remove_folder(folder, raw)
            prune_empty(raw / record.dataset)
            records.drop([record])
            notes.append(f"rolled back the interrupted {record.describe()}: the dataset is as it was before it")
    records.save()
    return notes


def register_loose(raw: Path, records: Records, save: bool = True) -> list[ImportRecord]:
    """Give data present without any record one: the demo's digits (checked byte for byte), or
    LOOSE_SOURCE for files placed by hand or imported before imports were recorded."""
    added = []
    for dataset in DATASETS:
        root = Path(raw) / dataset
        if records.of(dataset) or not any(dataset_files(root, dataset == "labeled")):
            continue
        source = DEMO_SOURCE if holds_demo(raw, dataset) else LOOSE_SOURCE
        added.append(loose_record(raw, records, dataset, source))
    if added and save:
        records.save()
    return added


def loose_record(raw: Path, records: Records, dataset: str, source: str) -> ImportRecord:
    """A record for the loose files of a dataset (folder ""), added to `records`."""
    labeled = dataset == "labeled"
    files: dict[str, int] = {}
    for _, place in dataset_files(Path(raw) / dataset, labeled, ""):
        files[place] = files.get(place, 0) + 1
    count, md5 = import_summary(Path(raw) / dataset, labeled, "")
    record = ImportRecord(id=records.next_id(), dataset=dataset, source=source, time=now(), folder="",
                          added=count, files=files, md5=md5)
    records.add(record)
    return record


def empty_dataset(raw: Path, dataset: str) -> None:
    """Replace a dataset by an empty folder (kept, so DVC still tracks it and `prepare`'s deps exist)."""
    staged = Path(tempfile.mkdtemp(prefix=".import-", dir=raw))
    try:
        (staged / dataset).mkdir()
        swap_in(staged / dataset, Path(raw) / dataset, replace=True)
    finally:
        shutil.rmtree(staged, ignore_errors=True)


@dataclass
class Removal:
    record: ImportRecord
    files: dict[str, int]        # what went, per "<split>/<class>" ("" for the unlabeled pool)
    folders: list[str]           # the folders removed, relative to raw_dir ("" entries: loose files)


def plan_removal(raw: Path, records: Records, ids: list[int]) -> list[Removal]:
    """What removing these imports deletes (nothing is deleted here)."""
    unknown = [i for i in ids if records.get(i) is None]
    if unknown:
        known = ", ".join(str(r.id) for r in records.entries) or "none"
        raise DataImportError(f"no import {', '.join(map(str, unknown))} in {Path(raw) / 'imports.json'} "
                       f"(imports: {known}; `ssl-pipeline data status` lists them)")
    out = []
    for import_id in ids:
        record = records.get(import_id)
        root, labeled = Path(raw) / record.dataset, record.dataset == "labeled"
        files: dict[str, int] = {}
        for _, place in dataset_files(root, labeled, record.folder):
            files[place] = files.get(place, 0) + 1
        folders = ([str(p.relative_to(raw)) for p in import_dirs(root, labeled, record.folder)] if record.folder
                   else [f"{record.dataset}/ (loose files)"])
        out.append(Removal(record, files, folders))
    return out


def remove(raw: Path, records: Records, removals: list[Removal]) -> None:
    """Delete the planned imports' files and records (the dataset folders stay, maybe empty)."""
    for removal in removals:
        record = removal.record
        root, labeled = Path(raw) / record.dataset, record.dataset == "labeled"
        if record.folder:
            for folder in import_dirs(root, labeled, record.folder):
                remove_folder(folder, raw)
        else:
            for path, _ in list(dataset_files(root, labeled, "")):
                path.unlink()
        prune_empty(root)
        records.drop([record])
    records.save()


def import_status(raw: Path, records: Records) -> dict[str, list[dict]]:
    """Per dataset, each import as recorded and as it is now (files and md5 read from the dataset)."""
    out: dict[str, list[dict]] = {d: [] for d in DATASETS}
    for record in records.entries:
        labeled = record.dataset == "labeled"
        files_now, md5_now = import_summary(Path(raw) / record.dataset, labeled, record.folder)
        out.setdefault(record.dataset, []).append({
            "id": record.id, "source": record.source, "time": record.time, "folder": record.folder,
            "files": files_now, "md5": md5_now, "added": record.added, "already_present": record.already_present,
            "skipped": len(record.skipped), "recorded_md5": record.md5, "state": record.state,
            "intact": record.state == "complete" and files_now == record.added and md5_now == record.md5})
    return out


def install_demo(raw_dir: str | Path, seed: int = 0, progress: Progress | None = None, replace: bool = False,
                 if_empty: bool = False) -> dict:
    """`ssl-pipeline data demo`: write (or restore) the demo and record it. Where a dataset holds
    imported data, refuse (DataExistsError), or with if_empty=True leave everything as it is and say why
    in "kept", or with replace=True write the demo over it and list the imports removed in "removed"."""
    raw = Path(raw_dir)
    raw.mkdir(parents=True, exist_ok=True)
    recover(raw)
    records = Records(raw)
    register_loose(raw, records, save=False)
    imported = records.real_imports()
    if imported and not replace:
        listing = "; ".join(f"{r.describe()}: {r.added} files" for r in imported)
        if if_empty:
            return {"written": [], "kept": listing}
        raise DataExistsError(f"{raw} holds imported data ({listing}); `ssl-pipeline data demo --replace` "
                              "replaces it with the demo")
    counts = write_demo(raw, seed, progress, replace=True)
    if not all(records.demo_only(d) for d in DATASETS):   # a demo already recorded keeps its record (and git clean)
        records.drop(records.entries)
        for dataset in DATASETS:
            loose_record(raw, records, dataset, DEMO_SOURCE)
        records.save()
    return {**counts, "removed": imported}
