"""ssl_core.data.listing against real folders: hidden files, symlinks, fifos, deep nesting."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from image_files import got_reason, reasons, rgb, save
from ssl_core.data.listing import IMAGE_EXTENSIONS, list_labeled, list_unlabeled


def test_supported_extensions():
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"} <= IMAGE_EXTENSIONS
    assert not {".gif", ".svg", ".txt", ".csv"} & IMAGE_EXTENSIONS


def test_list_unlabeled_recursive_sorted_and_reports_the_rest(tmp_path):
    for name in ["b.png", "a.JPG", "sub/c.png", "sub/deeper/d.bmp"]:
        save(tmp_path / name, rgb())
    (tmp_path / "anim.gif").write_bytes(b"GIF89a")
    (tmp_path / "draw.svg").write_text("<svg/>")
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "labels.csv").write_text("a,b")
    (tmp_path / "README").write_text("x")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    save(tmp_path / "sub" / "._c.png", rgb())
    save(tmp_path / ".cache" / "e.png", rgb())
    files, rejected = list_unlabeled(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in files] == \
        ["a.JPG", "b.png", "sub/c.png", "sub/deeper/d.bmp"]
    assert reasons(rejected) == {
        "anim.gif": "unsupported format .gif", "draw.svg": "unsupported format .svg",
        "notes.txt": "unsupported format .txt", "labels.csv": "unsupported format .csv",
        "README": "unsupported format (no extension)", ".DS_Store": "hidden file skipped",
        "sub/._c.png": "hidden file skipped", ".cache": "hidden folder skipped"}


def test_list_labeled_classes_wrong_place_and_empty_folders(tmp_path):
    save(tmp_path / "cat" / "1.png", rgb())
    save(tmp_path / "cat" / "nested" / "2.png", rgb())
    save(tmp_path / "dog" / "3.png", rgb())
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk_only").mkdir()
    (tmp_path / "junk_only" / "x.txt").write_text("x")
    save(tmp_path / ".ipynb_checkpoints" / "4.png", rgb())
    save(tmp_path / "stray.png", rgb())
    items, classes, rejected = list_labeled(tmp_path)
    assert classes == ["cat", "dog"]
    assert [(p.relative_to(tmp_path).as_posix(), c) for p, c in items] == \
        [("cat/1.png", "cat"), ("cat/nested/2.png", "cat"), ("dog/3.png", "dog")]
    assert reasons(rejected) == {
        "stray.png": "not inside a class folder", "empty": "empty class folder",
        "junk_only": "empty class folder", "junk_only/x.txt": "unsupported format .txt",
        ".ipynb_checkpoints": "hidden folder skipped"}


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="data folder not found"):
        list_unlabeled(tmp_path / "nope")


def test_symlinks_inside_are_followed_outside_rejected(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    save(outside / "secret.png", rgb())
    save(outside / "cls" / "s.png", rgb())
    save(root / "real" / "a.png", rgb())
    (root / "real" / "link_in.png").symlink_to(root / "real" / "a.png")
    (root / "linked_dir").symlink_to(root / "real", target_is_directory=True)
    (root / "real" / "escape.png").symlink_to(outside / "secret.png")
    (root / "escape_dir").symlink_to(outside / "cls", target_is_directory=True)
    (root / "real" / "broken.png").symlink_to(root / "missing.png")
    (root / "real" / "loop").symlink_to(root / "real", target_is_directory=True)
    files, rejected = list_unlabeled(root)
    # linked_dir points at a folder listed anyway: its files count once, under their real path.
    assert [p.relative_to(root).as_posix() for p in files] == ["real/a.png", "real/link_in.png"]
    assert got_reason(rejected, "linked_dir").startswith("folder already listed")
    got = reasons(rejected)
    assert got["real/escape.png"] == "symlink escapes data folder"
    assert got["escape_dir"] == "symlink escapes data folder"
    assert got["real/broken.png"] == "broken symlink"
    assert got["real/loop"].startswith("folder already listed")
    # The labeled layout: a class folder that is a symlink leaving the root is no class.
    (root / "real" / "escape.png").unlink()
    (root / "real" / "broken.png").unlink()
    (root / "real" / "loop").unlink()
    (root / "linked_dir").unlink()
    items, classes, rejected = list_labeled(root)
    assert classes == ["real"]
    assert reasons(rejected) == {"escape_dir": "symlink escapes data folder"}


def test_fifo_is_not_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")  # opening it would block forever
    files, rejected = list_unlabeled(tmp_path)
    assert files == [] and reasons(rejected) == {"pipe.png": "not a regular file"}


def test_deep_nesting_does_not_recurse(tmp_path):
    deep = tmp_path / "deep" / Path(*["d"] * 300)
    save(deep / "x.png", rgb())
    depth, frame = 0, sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(depth + 100)  # a walker recursing once per folder level would fail
    try:
        files, rejected = list_unlabeled(tmp_path / "deep")
    finally:
        sys.setrecursionlimit(old)
    assert len(files) == 1 and rejected == []
