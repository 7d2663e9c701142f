"""The import records: where each dataset's files came from (`<data.raw_dir>/imports.json`, kept in git
beside the `.dvc` files, so a commit pins the data and says where it came from).

One entry per import, in import order:
    {"id": 3, "dataset": "unlabeled", "source": "/home/me/photos", "time": "2026-12-04T17:40:00Z",
     "folder": "import-0003", "added": 300, "already_present": 12, "skipped": [["a/.DS_Store", "hidden file"]],
     "files": {"": 300}, "md5": "<content digest of the files it added>", "state": "complete"}
`folder` is where its files live inside the dataset (`unlabeled/import-0003/`, `labeled/<split>/<class>/import-0003/`);
"" means loose files (the demo, or data placed before imports were recorded). `files` counts what it added
per `<split>/<class>` ("" for the unlabeled pool). `state` is "pending" only while an import moves its files
into place: a pending entry found later is an interrupted import, which the next data command rolls back
(or, when its files already replaced the dataset, completes). `replaces` lists the imports a `--replace` removed.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ssl_core.fsutil import atomic_write_bytes

RECORDS_FILE = "imports.json"
IMPORT_FOLDER_PREFIX = "import-"
DEMO_SOURCE = "demo"
LOOSE_SOURCE = "(files present before imports were recorded)"


@dataclass
class ImportRecord:
    id: int
    dataset: str                       # "unlabeled" | "labeled"
    source: str                        # absolute source folder, DEMO_SOURCE or LOOSE_SOURCE
    time: str                          # UTC, ISO 8601
    folder: str                        # import-NNNN, or "" for loose files
    added: int = 0
    already_present: int = 0
    skipped: list[list[str]] = field(default_factory=list)   # [[path in the source, reason], ...]
    files: dict[str, int] = field(default_factory=dict)      # {"<split>/<class>" or "": files added}
    md5: str = ""
    state: str = "complete"
    replaces: list[int] = field(default_factory=list)        # ids an import with --replace removed

    @property
    def is_demo(self) -> bool:
        return self.source == DEMO_SOURCE

    def describe(self) -> str:
        what = "the demo digits" if self.is_demo else self.source
        return f"import {self.id} ({self.dataset}, {what}, {self.time})"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def folder_name(import_id: int) -> str:
    return f"{IMPORT_FOLDER_PREFIX}{import_id:04d}"


class Records:
    """The records of one workspace (`raw_dir/imports.json`); save() writes them atomically."""

    def __init__(self, raw_dir: str | Path):
        self.path = Path(raw_dir) / RECORDS_FILE
        self.entries: list[ImportRecord] = []
        if self.path.exists():
            data = json.loads(self.path.read_text())
            self.entries = [ImportRecord(**e) for e in data.get("imports", [])]

    def of(self, dataset: str) -> list[ImportRecord]:
        return [r for r in self.entries if r.dataset == dataset]

    def get(self, import_id: int) -> ImportRecord | None:
        return next((r for r in self.entries if r.id == import_id), None)

    def next_id(self) -> int:
        return max((r.id for r in self.entries), default=0) + 1

    def add(self, record: ImportRecord) -> None:
        self.entries.append(record)

    def drop(self, records: list[ImportRecord]) -> None:
        ids = {r.id for r in records}
        self.entries = [r for r in self.entries if r.id not in ids]

    def demo_only(self, dataset: str) -> bool:
        """True when the dataset's only records are the demo's (what a real import replaces)."""
        mine = self.of(dataset)
        return bool(mine) and all(r.is_demo for r in mine)

    def real_imports(self) -> list[ImportRecord]:
        return [r for r in self.entries if not r.is_demo]

    def save(self) -> None:
        if not self.entries and not self.path.exists():
            return   # nothing recorded yet: no file (a failed first import leaves nothing behind)
        # One import per line: a new import is a one-line diff in git.
        lines = [json.dumps(asdict(r), ensure_ascii=False) for r in self.entries]
        text = ('{"about": "what each dataset under this folder holds and where it came from (written by '
                '`ssl-pipeline data import|demo|remove`; `ssl-pipeline data status` shows it)",\n "imports": [\n  '
                + ",\n  ".join(lines) + "\n]}\n")
        if not self.path.exists() or self.path.read_text() != text:   # an unchanged file keeps git clean
            atomic_write_bytes(text.encode(), self.path)
