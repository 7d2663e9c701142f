"""import_folder against real folders: adding by content, replacing one dataset, the demo, the records,
every skipped entry with a reason, escaping symlinks and `..`, interrupted imports."""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_pipeline.ingest import datasets
from ssl_pipeline.ingest.datasets import install_demo
from ssl_pipeline.ingest.importer import DataImportError, UnsafePathError, import_folder
from ssl_pipeline.ingest.records import Records

SECRET = b"outside-secret-bytes"
HASHED = re.compile(r"[0-9a-f]{32}\.(png|jpg|bmp|tif|webp)")


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _make(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _contents(folder: Path) -> Counter:
    """Multiset of (place, md5) of a dataset: place is "<split>/<class>" for labeled data, "" otherwise."""
    out = Counter()
    for p in folder.rglob("*"):
        if p.is_file():
            parts = p.relative_to(folder).parts
            place = "/".join(parts[:2]) if folder.name == "labeled" else ""
            out[(place, _md5(p.read_bytes()))] += 1
    return out


def _names_are_content(folder: Path) -> bool:
    files = [p for p in folder.rglob("*") if p.is_file()]
    return all(HASHED.fullmatch(p.name) and p.name.startswith(_md5(p.read_bytes())) for p in files)


@pytest.fixture
def outside(tmp_path) -> Path:
    """A secret file and folder next to the source: nothing of them may be imported."""
    _make(tmp_path / "outside", {"secret.png": SECRET, "dir/also-secret.png": SECRET})
    return tmp_path / "outside"


def test_class_layout_copies_images_lists_every_skip_and_refuses_escaping_symlinks(tmp_path, outside):
    src = _make(tmp_path / "src", {
        "cat/a.png": _png(1), "cat/b.JPG": _png(2), "cat/nested/c.png": _png(3),
        "dog/d.png": _png(4), "dog/.hidden.png": _png(5), "dog/README.txt": b"notes",
        ".git/objects/x.png": _png(6), ".DS_Store": b"mac", "loose.png": _png(7), "empty/notes.txt": b"x",
    })
    (src / "bare").mkdir()
    os.symlink("../../outside/secret.png", src / "cat" / "evil.png")           # `..` escaping src
    os.symlink(str(outside / "secret.png"), src / "dog" / "abs-evil.png")     # absolute, escaping
    os.symlink(str(outside / "dir"), src / "dog" / "linked-dir")              # folder escaping
    os.symlink("../cat/a.png", src / "dog" / "alias.png")                     # `..` but stays inside
    os.symlink(str(outside), src / "bird")                                   # a whole class folder escaping
    raw = tmp_path / "raw"

    result = import_folder(src, "labeled", raw)

    assert _contents(raw / "labeled") == Counter({
        ("train/cat", _md5(_png(1))): 1, ("train/cat", _md5(_png(2))): 1, ("train/cat", _md5(_png(3))): 1,
        ("train/dog", _md5(_png(4))): 1})
    assert _names_are_content(raw / "labeled")
    assert {p.parent.name for p in (raw / "labeled").rglob("*.*")} == {"import-0001"}
    assert result.layout == "class" and result.test_split == "carve in prepare" and result.classes == ["cat", "dog"]
    record = result.record
    assert (record.added, record.already_present, record.files) == (4, 0, {"train/cat": 3, "train/dog": 1})
    skipped = dict(record.skipped)
    for rel in ("cat/evil.png", "dog/abs-evil.png", "dog/linked-dir", "bird"):
        assert "escapes the source folder" in skipped[rel]
    assert skipped["dog/README.txt"] == "not an image file (.txt)"
    assert skipped["dog/.hidden.png"] == "hidden file" and skipped[".DS_Store"] == "hidden file"
    assert skipped[".git"] == "hidden folder"
    assert skipped["loose.png"] == "outside any class folder"
    assert skipped["dog/alias.png"] == "the same image is already in labeled/train/cat"   # a link inside src
    assert skipped["empty/notes.txt"] == "not an image file (.txt)"
    assert skipped["empty"] == skipped["bare"] == "empty class folder (no images)"
    assert not (raw / "unlabeled").exists()   # labeled images are not copied into the pool any more
    assert SECRET not in b"".join(p.read_bytes() for p in raw.rglob("*") if p.is_file())
    assert sorted(p.name for p in raw.iterdir()) == ["imports.json", "labeled"]   # no staging folder left
    assert json.loads((raw / "imports.json").read_text())["imports"][0]["skipped"] == record.skipped


def test_one_odd_entry_is_skipped_with_its_reason_and_the_rest_imported(tmp_path):
    long_dir = "/".join(["a-rather-long-folder-name-" * 4] * 3)   # deeper than one flattened file name can hold
    src = _make(tmp_path / "src", {"ok/1.png": _png(1), "ok/2.png": _png(2), f"ok/{long_dir}/3.png": _png(3),
                                   "back\\slash/4.png": _png(4), "tab\there/5.png": _png(5),
                                   "import-0007/6.png": _png(6), "fine/7.png": _png(7)})
    os.mkfifo(src / "ok" / "pipe.png")   # would block forever if opened
    result = import_folder(src, "labeled", tmp_path / "raw")
    skipped = dict(result.record.skipped)
    assert skipped == {
        "ok/pipe.png": "not a regular file (fifos, devices and sockets are never opened)",
        "back\\slash": "class folder name has a backslash",
        "tab\there": "class folder name has a control character",
        "import-0007": "class folder name starts with 'import-' (the importer's own folder names)"}
    assert result.record.files == {"train/ok": 3, "train/fine": 1}


def test_split_layout_is_kept_and_test_images_never_reach_the_pool(tmp_path):
    files = {f"{split}/{cls}/{split}{i}.png": _png(100 * s + 10 * int(cls) + i)   # distinct seeds: distinct images
             for s, (split, n) in enumerate((("train", 6), ("val", 2), ("test", 3))) for cls in ("0", "1", "2") for i in range(n)}
    src = _make(tmp_path / "cifar", files)
    raw = tmp_path / "raw"

    result = import_folder(src, "labeled", raw)

    assert _contents(raw / "labeled") == Counter(("/".join(rel.split("/")[:2]), _md5(data)) for rel, data in files.items())
    assert result.layout == "split" and result.test_split == "given"
    assert result.record.added == 33 and not (raw / "unlabeled").exists()


def test_unlabeled_import_is_recursive_and_named_by_content(tmp_path):
    src = _make(tmp_path / "photos", {"2023/x.png": _png(1), "2024/trip/y.jpeg": _png(2), "z.PNG": _png(3),
                                      ".thumbs/t.png": _png(4), "2024/copy-of-x.png": _png(1)})
    raw = tmp_path / "raw"
    progress = []
    result = import_folder(src, "unlabeled", raw, progress=lambda done, total: progress.append((done, total)))
    names = sorted(p.name for p in (raw / "unlabeled" / "import-0001").iterdir())
    assert names == sorted(_md5(_png(i)) + ext for i, ext in ((1, ".png"), (2, ".jpg"), (3, ".png")))
    assert (result.record.added, result.record.already_present) == (3, 1)   # the copy of x.png is the same image
    assert result.record.skipped == [[".thumbs", "hidden folder"]]
    assert result.layout == "flat" and progress[-1] == (4, 4)


def _status(raw: Path) -> dict[str, list[dict]]:
    return datasets.import_status(raw, Records(raw))


def test_imports_add_and_never_lose_and_the_counts_add_up(tmp_path):
    """Unlabeled A, labeled L, unlabeled B (overlapping A), then A again: nothing imported earlier goes."""
    raw = tmp_path / "raw"
    a = _make(tmp_path / "a", {f"{i}.png": _png(i) for i in range(10)})
    b = _make(tmp_path / "b", {f"{i}.png": _png(i) for i in range(7, 15)})          # 3 shared with A
    lab = _make(tmp_path / "lab", {f"{c}/{i}.png": _png(100 + 10 * k + i) for k, c in enumerate("xyz") for i in range(4)})

    first = import_folder(a, "unlabeled", raw).record
    labeled = import_folder(lab, "labeled", raw).record
    second = import_folder(b, "unlabeled", raw).record
    again = import_folder(a, "unlabeled", raw).record

    assert (first.added, labeled.added, second.added, again.added) == (10, 12, 5, 0)
    assert (second.already_present, again.already_present) == (3, 10)
    assert _contents(raw / "unlabeled") == Counter(("", _md5(_png(i))) for i in range(15))
    assert sum(_contents(raw / "labeled").values()) == 12
    status = _status(raw)
    assert [(s["id"], s["files"], s["intact"]) for s in status["unlabeled"]] == [(1, 10, True), (3, 5, True), (4, 0, True)]
    assert [(s["source"], s["files"]) for s in status["labeled"]] == [(str(lab), 12)]
    assert status["unlabeled"][0]["md5"] == first.md5 != second.md5


def test_labeled_imports_add_classes_and_refuse_an_image_under_two_labels(tmp_path):
    raw = tmp_path / "raw"
    import_folder(_make(tmp_path / "l1", {"a/1.png": _png(1), "b/2.png": _png(2)}), "labeled", raw)
    result = import_folder(_make(tmp_path / "l2", {"c/3.png": _png(3), "a/4.png": _png(4), "b/1.png": _png(1)}),
                           "labeled", raw)
    assert result.classes == ["a", "b", "c"]   # one class folder is fine when the dataset has others
    assert dict(result.record.skipped) == {"b/1.png": "the same image is already in labeled/train/a"}
    assert sum(_contents(raw / "labeled").values()) == 4

    with pytest.raises(DataImportError, match="at least 2 class folders"):
        import_folder(_make(tmp_path / "one", {"a/1.png": _png(1)}), "labeled", tmp_path / "raw2")
    with pytest.raises(DataImportError, match="no training images"):
        import_folder(_make(tmp_path / "orphan", {"train/a/9.png": _png(9), "test/d/8.png": _png(8)}), "labeled", raw)


def test_replace_touches_only_the_named_dataset_and_says_what_it_removed(tmp_path):
    raw = tmp_path / "raw"
    import_folder(_make(tmp_path / "u", {"1.png": _png(1)}), "unlabeled", raw)
    old = import_folder(_make(tmp_path / "first", {"a/1.png": _png(11), "b/2.png": _png(12)}), "labeled", raw).record
    unlabeled_before = _contents(raw / "unlabeled")

    result = import_folder(_make(tmp_path / "second", {"a/3.png": _png(13), "b/4.png": _png(14)}), "labeled", raw,
                           replace=True)

    assert _contents(raw / "labeled") == Counter({("train/a", _md5(_png(13))): 1, ("train/b", _md5(_png(14))): 1})
    assert _contents(raw / "unlabeled") == unlabeled_before
    assert [r.id for r in result.replaced] == [old.id] and result.emptied == []
    assert [r.dataset for r in Records(raw).entries] == ["unlabeled", "labeled"]


def test_the_first_real_import_replaces_the_demo_and_says_so(tmp_path):
    raw = tmp_path / "raw"
    install_demo(raw)
    assert [(r.source, r.dataset) for r in Records(raw).entries] == [("demo", "unlabeled"), ("demo", "labeled")]

    result = import_folder(_make(tmp_path / "photos", {"p.png": _png(1)}), "unlabeled", raw)

    assert [r.dataset for r in result.replaced] == ["unlabeled", "labeled"] and result.emptied == ["labeled"]
    assert _contents(raw / "unlabeled") == Counter({("", _md5(_png(1))): 1})
    assert list((raw / "labeled").iterdir()) == []   # the demo's labels without the demo pool mean nothing
    assert [r.source for r in Records(raw).entries] == [str(tmp_path / "photos")]
    with pytest.raises(DataImportError, match="data demo --replace"):
        install_demo(raw)
    assert install_demo(raw, if_empty=True)["kept"].startswith("import 3 (unlabeled")
    back = install_demo(raw, replace=True)
    assert [r.id for r in back["removed"]] == [3] and sum(_contents(raw / "unlabeled").values()) == 4000


def test_remove_deletes_one_import_and_lists_it(tmp_path):
    raw = tmp_path / "raw"
    import_folder(_make(tmp_path / "a", {"1.png": _png(1), "2.png": _png(2)}), "unlabeled", raw)
    import_folder(_make(tmp_path / "lab", {"x/1.png": _png(3), "y/2.png": _png(4)}), "labeled", raw)
    import_folder(_make(tmp_path / "b", {"3.png": _png(5)}), "unlabeled", raw)
    records = Records(raw)

    plan = datasets.plan_removal(raw, records, [2])
    assert [(p.record.id, p.files, p.folders) for p in plan] == [
        (2, {"train/x": 1, "train/y": 1}, ["labeled/train/x/import-0002", "labeled/train/y/import-0002"])]
    datasets.remove(raw, records, plan)

    assert list((raw / "labeled").iterdir()) == []
    assert sum(_contents(raw / "unlabeled").values()) == 3
    assert [r.id for r in Records(raw).entries] == [1, 3]
    with pytest.raises(DataImportError, match="no import 9"):
        datasets.plan_removal(raw, Records(raw), [9])


def test_interrupted_import_leaves_the_dataset_as_it_was(tmp_path):
    raw = tmp_path / "raw"
    import_folder(_make(tmp_path / "old", {"a/1.png": _png(1), "b/2.png": _png(2)}), "labeled", raw)
    before = _contents(raw / "labeled")
    big = _make(tmp_path / "new", {f"{c}/{i}.png": _png(1000 + i + 500 * (c == "b")) for c in "ab" for i in range(300)})

    def interrupt(done, total):
        if done > 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_folder(big, "labeled", raw, progress=interrupt)
    assert _contents(raw / "labeled") == before
    assert sorted(p.name for p in raw.iterdir()) == ["imports.json", "labeled"]
    assert [r.id for r in Records(raw).entries] == [1]


def test_a_killed_import_is_rolled_back_by_the_next_command(tmp_path, monkeypatch):
    """Killed between moving its first class folder in and completing its record (as by kill -9)."""
    raw = tmp_path / "raw"
    import_folder(_make(tmp_path / "old", {"a/1.png": _png(1), "b/2.png": _png(2)}), "labeled", raw)
    before = _contents(raw / "labeled")
    renames = []

    def rename_then_die(a, b):
        if str(b).startswith(str(raw / "labeled")) and "import-0002" in str(b):   # landing, not staging
            if renames:
                raise SystemExit("killed")
            renames.append(b)
        os.replace(a, b)

    monkeypatch.setattr("ssl_pipeline.ingest.importer.os.rename", rename_then_die)
    with pytest.raises(SystemExit):
        import_folder(_make(tmp_path / "new", {"a/3.png": _png(3), "b/4.png": _png(4)}), "labeled", raw)
    monkeypatch.undo()
    assert Records(raw).get(2).state == "pending" and _contents(raw / "labeled") != before

    notes = datasets.recover(raw)

    assert len(notes) == 1 and notes[0].startswith(f"rolled back the interrupted import 2 (labeled, {tmp_path / 'new'}")
    assert _contents(raw / "labeled") == before and [r.id for r in Records(raw).entries] == [1]
    assert not [p for p in raw.iterdir() if p.name.startswith(".")]


def test_refuses_overlap_with_data_dir_and_bad_layouts(tmp_path):
    raw = tmp_path / "raw"
    _make(raw / "unlabeled", {"x.png": _png(1)})
    with pytest.raises(UnsafePathError, match="overlaps the data directory"):
        import_folder(raw / "unlabeled", "unlabeled", raw, replace=True)
    # `..` in the given path is resolved first, so it cannot sneak around the check.
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(UnsafePathError):
        import_folder(tmp_path / "elsewhere" / ".." / "raw", "unlabeled", raw, replace=True)
    with pytest.raises(UnsafePathError):  # a parent of the data directory
        import_folder(tmp_path / "elsewhere" / "..", "unlabeled", raw, replace=True)
    assert [p.relative_to(raw).as_posix() for p in raw.rglob("*") if p.is_file()] == ["unlabeled/x.png"]

    mixed = _make(tmp_path / "mixed", {"train/a/1.png": _png(1), "cat/2.png": _png(2)})
    with pytest.raises(DataImportError, match="mixes split folders"):
        import_folder(mixed, "labeled", tmp_path / "raw2")
    with pytest.raises(DataImportError, match="no image files"):
        import_folder(_make(tmp_path / "empty", {"notes.txt": b"x"}), "unlabeled", tmp_path / "raw2")
    with pytest.raises(DataImportError, match="not a folder"):
        import_folder(tmp_path / "nope", "unlabeled", tmp_path / "raw2")
    assert not any((tmp_path / "raw2").iterdir())


def test_adding_to_a_dataset_that_is_recorded_but_not_pulled_is_refused(tmp_path):
    """A clone before `data pull`: the new version would pin the new files only."""
    raw = tmp_path / "raw"
    import_folder(_make(tmp_path / "a", {"1.png": _png(1)}), "unlabeled", raw)
    shutil.rmtree(raw / "unlabeled")
    with pytest.raises(DataImportError, match="ssl-pipeline data pull"):
        import_folder(_make(tmp_path / "b", {"2.png": _png(2)}), "unlabeled", raw)
    assert not (raw / "unlabeled").exists()
    import_folder(tmp_path / "b", "unlabeled", raw, replace=True)   # or start over from this folder
    assert _contents(raw / "unlabeled") == Counter({("", _md5(_png(2))): 1})
