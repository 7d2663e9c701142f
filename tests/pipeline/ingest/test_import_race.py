"""The import's check-then-copy race: a source image swapped for a link to a file outside the source
folder, after the import checked it, never gets that file into data/raw. The worst interleaving is made
deterministic (the swap happens right after the last check; a plain copy leaks the file there, so the test
exercises the race), and a real concurrent swapper process, bounded in time, never makes it leak."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ssl_pipeline.ingest import importer, sources
from ssl_pipeline.ingest.importer import DataImportError, SourceChanged, copy_checked, import_folder

SECRET = b"SECRET-OUTSIDE-THE-SOURCE"
ATTEMPTS = 200          # imports per test; each stops early once it has seen what it looks for
SWAPPER_LIFETIME_S = 120   # the swapper exits on its own even if a test dies: never left behind

SWAPPER = textwrap.dedent("""
    import os, sys, time
    victim, outside, genuine, stop = sys.argv[1:5]
    link, regular = os.path.join(os.path.dirname(victim), ".swap.lnk"), os.path.join(os.path.dirname(victim), ".swap.reg")
    deadline = time.monotonic() + float(sys.argv[5])
    data = open(genuine, "rb").read()
    print("ready", flush=True)
    while not os.path.exists(stop) and time.monotonic() < deadline:
        for tmp in (link, regular):
            if os.path.lexists(tmp):
                os.unlink(tmp)
        os.symlink(outside, link)
        os.rename(link, victim)           # atomically: victim is now a link out of the source
        with open(regular, "wb") as fh:
            fh.write(data)
        os.rename(regular, victim)        # ... and a genuine image again
""")


@pytest.fixture
def racing_source(tmp_path):
    """A class-layout source folder whose cat/000.png is swapped with a link to an outside file."""
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (src / cls).mkdir(parents=True)
        for i in range(30):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(src / cls / f"{i:03d}.png")
    outside = tmp_path / "outside.png"
    outside.write_bytes(SECRET)
    genuine = tmp_path / "genuine.png"
    shutil.copy(src / "cat/000.png", genuine)
    stop = tmp_path / "STOP"
    proc = subprocess.Popen([sys.executable, "-c", SWAPPER, str(src / "cat/000.png"), str(outside), str(genuine),
                             str(stop), str(SWAPPER_LIFETIME_S)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    try:
        yield src, tmp_path / "raw"
    finally:
        stop.write_text("stop")
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def leaked(raw: Path) -> bool:
    return any(p.is_file() and SECRET in p.read_bytes() for p in raw.rglob("*")) if raw.exists() else False


@pytest.fixture
def swap_after_check(tmp_path, monkeypatch):
    """The worst interleaving, made deterministic: right after the import's last check of cat/000.png
    (the listing that feeds the copy), the file becomes a link to a file outside the source."""
    src = tmp_path / "src"
    rng = np.random.default_rng(1)
    for cls in ("cat", "dog"):
        (src / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(src / cls / f"{i:03d}.png")
    outside = tmp_path / "outside.png"
    outside.write_bytes(SECRET)
    victim = src / "cat/000.png"
    checks = {"n": 0}
    original = sources._Reader.file_problem

    def check_then_swap(reader, path):
        reason = original(reader, path)
        if path == victim and not path.is_symlink():
            checks["n"] += 1
            if checks["n"] == 2:   # the second listing: its check is the last before the copy
                path.unlink()
                path.symlink_to(outside)
        return reason

    monkeypatch.setattr(sources._Reader, "file_problem", check_then_swap)
    return src, tmp_path / "raw"


def test_a_plain_copy_leaks_the_outside_file_when_it_is_swapped_after_the_check(swap_after_check, monkeypatch):
    src, raw = swap_after_check
    monkeypatch.setattr(importer, "copy_checked", lambda path, dest, root: shutil.copyfile(path, dest))
    import_folder(src, "labeled", raw)
    assert leaked(raw)   # what the checked copy must prevent


def test_a_file_swapped_for_a_link_after_the_check_is_refused_and_nothing_is_imported(swap_after_check):
    src, raw = swap_after_check
    with pytest.raises(SourceChanged, match="cat/000.png.*nothing was imported"):
        import_folder(src, "labeled", raw)
    assert not leaked(raw)
    assert not list(raw.glob(".import-*")), "a refused import left its staging folder"
    assert not (raw / "labeled").exists()


def test_the_import_never_copies_the_outside_file_while_a_swapper_races_it(racing_source):
    """A real concurrent swapper: whatever the interleaving (imported, refused, or the scan lost the race),
    the outside file never reaches the dataset and no staging folder is left."""
    src, raw = racing_source
    for _ in range(ATTEMPTS // 4):
        try:
            result = import_folder(src, "labeled", raw, replace=True)
        except SourceChanged as err:
            assert "cat/000.png" in str(err) and "nothing was imported" in str(err)
        except OSError:   # the scan's own link checks lost a race before any copy: nothing imported
            pass
        else:
            # every cat imported (files are named by content), or 000.png listed as skipped
            assert (result.record.files.get("train/cat") == 30
                    or any("000.png" in path for path, _ in result.record.skipped)), result.record
        assert not leaked(raw)
        assert not list(raw.glob(".import-*")), "a refused import left its staging folder"


def test_copy_checked_refuses_links_out_special_files_and_swapped_files(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a/x.png").write_bytes(b"inside")
    (tmp_path / "secret").write_bytes(SECRET)
    dest = tmp_path / "out"
    dest.mkdir()
    copy_checked(src / "a/x.png", dest / "1", src)
    assert (dest / "1").read_bytes() == b"inside"
    (src / "a/link.png").symlink_to(src / "a/x.png")       # a link inside the source is followed
    copy_checked(src / "a/link.png", dest / "2", src)
    assert (dest / "2").read_bytes() == b"inside"
    (src / "a/out.png").symlink_to(tmp_path / "secret")
    with pytest.raises(SourceChanged, match="link out of the source"):
        copy_checked(src / "a/out.png", dest / "3", src)
    os.mkfifo(src / "a/fifo.png")                          # never blocks, never copied
    with pytest.raises(DataImportError, match="not a regular file"):
        copy_checked(src / "a/fifo.png", dest / "4", src)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere/x.png").write_bytes(SECRET)
    shutil.rmtree(src / "a")
    (src / "a").symlink_to(tmp_path / "elsewhere")          # the folder itself swapped for a link
    with pytest.raises(SourceChanged):
        copy_checked(src / "a/x.png", dest / "5", src)
    assert not any(SECRET in p.read_bytes() for p in dest.iterdir())
