"""The CLI's exit paths that are about the terminal rather than a command."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from fixtures_repo import PROJECT_ROOT


def test_a_closed_stdout_pipe_ends_quietly_with_sigpipes_status():
    """`ssl-pipeline config | head`: once the reader is gone the command stops without an `error:` line."""
    read_end, write_end = os.pipe()
    os.close(read_end)   # the reader left before the first byte: every write to stdout is EPIPE
    try:
        done = subprocess.run([sys.executable, "-m", "ssl_pipeline", "config"], cwd=PROJECT_ROOT, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert done.returncode == 141, done.stderr
    assert done.stderr == ""


def test_unlabeled_import_as_the_readme_shows_it(tmp_path):
    """`ssl-pipeline data import FOLDER --as unlabeled`, the README's first own-data command."""
    from PIL import Image

    from fixtures_repo import make_workspace

    root = make_workspace(tmp_path)
    shutil.copy(PROJECT_ROOT / "params.yaml", root / "params.yaml")
    photos = tmp_path / "photos" / "unlabeled"
    photos.mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (40 + 10 * i, 30), (10 * i, 80, 160)).save(photos / f"p{i}.jpg")
    done = subprocess.run([sys.executable, "-m", "ssl_pipeline", "data", "import", str(photos), "--as", "unlabeled"],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(list((root / "data/raw/unlabeled").rglob("*.jpg"))) == 3
    assert (root / "data/raw/unlabeled.dvc").exists()
