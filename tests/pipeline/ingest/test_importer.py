"""import_folder against real folders: layouts, escaping symlinks and `..`, no overwrite, atomicity."""
from __future__ import annotations

import hashlib
import io
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_pipeline.ingest.importer import DataExistsError, DataImportError, UnsafePathError, import_folder

SECRET = b"outside-secret-bytes"


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


def _digests(folder: Path) -> Counter:
    return Counter(hashlib.md5(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file())


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def outside(tmp_path) -> Path:
    """A secret file and folder next to the source: nothing of them may be imported."""
    _make(tmp_path / "outside", {"secret.png": SECRET, "dir/also-secret.png": SECRET})
    return tmp_path / "outside"


def test_class_layout_copies_images_and_refuses_escaping_symlinks(tmp_path, outside):
    src = _make(tmp_path / "src", {
        "cat/a.png": _png(1), "cat/b.JPG": _png(2), "cat/nested/c.png": _png(3),
        "dog/d.png": _png(4), "dog/.hidden.png": _png(5), "dog/README.txt": b"notes",
        ".git/objects/x.png": _png(6),
    })
    os.symlink("../../outside/secret.png", src / "cat" / "evil.png")           # `..` escaping src
    os.symlink(str(outside / "secret.png"), src / "dog" / "abs-evil.png")     # absolute, escaping
    os.symlink(str(outside / "dir"), src / "dog" / "linked-dir")              # folder escaping
    os.symlink("../cat/a.png", src / "dog" / "alias.png")                     # `..` but stays inside
    os.symlink(str(outside), src / "bird")                                   # a whole class folder escaping
    raw = tmp_path / "raw"

    result = import_folder(src, "labeled", raw)

    assert _files(raw / "labeled") == {
        "train/cat/a.png": _png(1), "train/cat/b.JPG": _png(2), "train/cat/nested__c.png": _png(3),
        "train/dog/d.png": _png(4), "train/dog/alias.png": _png(1),
    }
    assert result["layout"] == "class" and result["test_split"] == "carve in prepare"
    assert result["classes"] == ["cat", "dog"]
    assert result["copied"] == {"labeled/train": 5}
    skipped = dict(result["skipped"])
    for rel in ("cat/evil.png", "dog/abs-evil.png", "dog/linked-dir", "bird"):
        assert "escapes the source folder" in skipped[rel]
    assert skipped["dog/README.txt"] == "not an image file"
    assert not (raw / "unlabeled").exists()
    assert SECRET not in b"".join(p.read_bytes() for p in raw.rglob("*") if p.is_file())
    assert [p.name for p in raw.iterdir()] == ["labeled"]  # no staging folder left behind


def test_split_layout_with_unlabeled_pool_keeps_test_images_out(tmp_path):
    files = {f"{split}/{cls}/{split}{i}.png": _png(hash((split, cls, i)) % 10_000)
             for split, n in (("train", 6), ("val", 2), ("test", 3)) for cls in ("0", "1", "2") for i in range(n)}
    src = _make(tmp_path / "cifar", files)
    raw = tmp_path / "raw"

    result = import_folder(src, "labeled", raw, also_unlabeled=True)

    assert _files(raw / "labeled") == files
    assert result["layout"] == "split" and result["test_split"] == "given"
    assert result["copied"] == {"labeled/train": 18, "labeled/val": 6, "labeled/test": 9, "unlabeled": 24}
    unlabeled = sorted(p.name for p in (raw / "unlabeled").iterdir())
    assert unlabeled == [f"img_{k:06d}.png" for k in range(1, 25)]  # flat; names carry no class
    assert _digests(raw / "unlabeled") == _digests(raw / "labeled/train") + _digests(raw / "labeled/val")
    # The pool order is a shuffle, not class after class.
    by_name = {p.name: p.read_bytes() for p in (raw / "unlabeled").iterdir()}
    class_of = {data: rel.split("/")[1] for rel, data in files.items()}
    sequence = [class_of[by_name[name]] for name in unlabeled]
    assert sequence != sorted(sequence)


def test_unlabeled_import_is_recursive_and_renamed(tmp_path):
    src = _make(tmp_path / "photos", {"2023/x.png": _png(1), "2024/trip/y.jpeg": _png(2), "z.PNG": _png(3),
                                      ".thumbs/t.png": _png(4)})
    raw = tmp_path / "raw"
    progress = []
    result = import_folder(src, "unlabeled", raw, progress=lambda done, total: progress.append((done, total)))
    names = sorted(p.name for p in (raw / "unlabeled").iterdir())
    assert len(names) == 3 and all(re.fullmatch(r"img_\d{6}\.(png|jpeg)", n) for n in names)
    assert _digests(raw / "unlabeled") == Counter(hashlib.md5(_png(i)).hexdigest() for i in (1, 2, 3))
    assert result["copied"] == {"unlabeled": 3} and result["layout"] == "flat"
    assert progress[-1] == (3, 3)


def test_existing_data_is_kept_unless_replace(tmp_path):
    raw = tmp_path / "raw"
    first = _make(tmp_path / "first", {"a/1.png": _png(1), "b/2.png": _png(2)})
    second = _make(tmp_path / "second", {"a/3.png": _png(3), "b/4.png": _png(4)})
    import_folder(first, "labeled", raw)
    before = _files(raw / "labeled")

    with pytest.raises(DataExistsError, match="replace"):
        import_folder(second, "labeled", raw)
    assert _files(raw / "labeled") == before

    import_folder(second, "labeled", raw, replace=True)
    assert _files(raw / "labeled") == {"train/a/3.png": _png(3), "train/b/4.png": _png(4)}
    assert sorted(p.name for p in raw.iterdir()) == ["labeled"]


def test_interrupted_import_leaves_old_data_and_no_partial_copy(tmp_path):
    raw = tmp_path / "raw"
    import_folder(_make(tmp_path / "old", {"a/1.png": _png(1), "b/2.png": _png(2)}), "labeled", raw)
    before = _files(raw / "labeled")
    big = _make(tmp_path / "new", {f"{c}/{i}.png": _png(i) for c in "ab" for i in range(300)})

    def interrupt(done, total):
        if done > 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        import_folder(big, "labeled", raw, replace=True, progress=interrupt)
    assert _files(raw / "labeled") == before
    assert sorted(p.name for p in raw.iterdir()) == ["labeled"]


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
    assert _files(raw) == {"unlabeled/x.png": _png(1)}

    mixed = _make(tmp_path / "mixed", {"train/a/1.png": _png(1), "cat/2.png": _png(2)})
    with pytest.raises(DataImportError, match="mixes split folders"):
        import_folder(mixed, "labeled", tmp_path / "raw2")
    one_class = _make(tmp_path / "one", {"a/1.png": _png(1)})
    with pytest.raises(DataImportError, match="at least 2 class folders"):
        import_folder(one_class, "labeled", tmp_path / "raw2")
    orphan_test = _make(tmp_path / "orphan", {"train/a/1.png": _png(1), "train/b/2.png": _png(2),
                                              "test/c/3.png": _png(3)})
    with pytest.raises(DataImportError, match="no images in train"):
        import_folder(orphan_test, "labeled", tmp_path / "raw2")
    with pytest.raises(DataImportError, match="no image files"):
        import_folder(_make(tmp_path / "empty", {"notes.txt": b"x"}), "unlabeled", tmp_path / "raw2")
    with pytest.raises(DataImportError, match="not a folder"):
        import_folder(tmp_path / "nope", "unlabeled", tmp_path / "raw2")
    assert not any((tmp_path / "raw2").iterdir())
