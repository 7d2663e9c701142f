"""`ssl-pipeline data ...` as a user types it, in a real git + DVC workspace: what it prints, what DVC
pins, and errors that speak in flags and commands."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fixtures_repo import PROJECT_ROOT, make_workspace
from ssl_pipeline.cli.main import main

PYTHON_WORDS = re.compile(r"\b(replace|kind|also_unlabeled|if_empty)=|=True|=False|kind='")


@pytest.fixture
def ws(tmp_path, monkeypatch):
    root = make_workspace(tmp_path)
    shutil.copy(PROJECT_ROOT / "params.yaml", root / "params.yaml")
    monkeypatch.chdir(root)
    return root


def photos(folder, n: int, seed: int, classes: tuple[str, ...] = ()) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n):
        where = folder / classes[i % len(classes)] if classes else folder
        where.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (20 + i % 7, 24, 3), dtype=np.uint8)).save(where / f"{seed}-{i}.jpg")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def status(capsys) -> dict:
    code, out, _ = run(capsys, "data", "status", "--json")
    assert code == 0
    return json.loads(out)


def test_imports_add_up_in_data_status_and_remove_lists_what_goes(ws, tmp_path, capsys):
    photos(tmp_path / "a", 12, seed=1)
    photos(tmp_path / "b", 5, seed=2)
    photos(tmp_path / "lab", 9, seed=3, classes=("cat", "dog", "fox"))
    (tmp_path / "a" / ".DS_Store").write_bytes(b"x")

    code, out, _ = run(capsys, "data", "import", str(tmp_path / "a"), "--as", "unlabeled")
    assert code == 0 and "import 1: " in out and "12 files added" in out and "skipped .DS_Store: hidden file" in out
    assert run(capsys, "data", "import", str(tmp_path / "lab"), "--as", "labeled")[0] == 0
    assert run(capsys, "data", "import", str(tmp_path / "b"), "--as", "unlabeled")[0] == 0
    code, out, _ = run(capsys, "data", "import", str(tmp_path / "a"), "--as", "unlabeled")
    assert "0 files added" in out and "12 already there" in out

    st = status(capsys)
    assert {p: d["files"] for p, d in st["datasets"].items()} == {"data/raw/labeled": 9, "data/raw/unlabeled": 17}
    assert all(d["state"] == "ok" for d in st["datasets"].values())
    assert [(i["id"], i["files"]) for i in st["imports"]["unlabeled"]] == [(1, 12), (3, 5), (4, 0)]
    code, text, _ = run(capsys, "data", "status")
    assert "import 2  " in text and str(tmp_path / "lab") in text and "9 files, md5 " in text

    code, out, _ = run(capsys, "data", "remove", "3", "--dry-run")
    assert out.startswith("would remove import 3 (unlabeled") and "5 files" in out
    assert status(capsys)["datasets"]["data/raw/unlabeled"]["files"] == 17
    code, out, _ = run(capsys, "data", "remove", "3")
    assert out.startswith("removed import 3") and "unlabeled/import-0003" in out
    st = status(capsys)
    assert st["datasets"]["data/raw/unlabeled"]["files"] == 12 and st["datasets"]["data/raw/unlabeled"]["state"] == "ok"


def test_demo_only_into_an_empty_workspace_and_errors_speak_flags(ws, tmp_path, capsys):
    assert run(capsys, "data", "demo")[0] == 0
    photos(tmp_path / "lab", 6, seed=4, classes=("x", "y"))
    code, out, _ = run(capsys, "data", "import", str(tmp_path / "lab"), "--as", "labeled")
    assert code == 0 and "replaced the demo digits in data/raw/labeled and emptied data/raw/unlabeled" in out
    st = status(capsys)
    assert {p: d["files"] for p, d in st["datasets"].items()} == {"data/raw/labeled": 6, "data/raw/unlabeled": 0}

    code, _, err = run(capsys, "data", "demo")
    assert code == 2 and "`ssl-pipeline data demo --replace`" in err and "hint: `ssl-pipeline data status`" in err
    code, out, _ = run(capsys, "data", "demo", "--if-empty")
    assert code == 0 and out.startswith("not writing the demo: the workspace holds imported data (import 3")
    code, _, err = run(capsys, "data", "remove", "7")
    assert code == 2 and "no import 7" in err
    with pytest.raises(SystemExit):
        main(["data", "import", str(tmp_path / "lab"), "--as", "labeled", "--no-unlabeled"])
    err = capsys.readouterr().err
    assert "--no-unlabeled is gone" in err and "data.pool_includes_labeled" in err
    for line in err.splitlines():
        assert not PYTHON_WORDS.search(line), line


def test_pull_on_a_clone_without_the_data_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    origin = make_workspace(tmp_path, "origin")
    shutil.copy(PROJECT_ROOT / "params.yaml", origin / "params.yaml")
    monkeypatch.chdir(origin)
    photos(tmp_path / "u", 3, seed=5)
    assert run(capsys, "data", "import", str(tmp_path / "u"), "--as", "unlabeled")[0] == 0
    subprocess.run(["git", "add", "-A"], cwd=origin, check=True)
    subprocess.run(["git", "commit", "-qm", "data"], cwd=origin, check=True)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True)
    done = subprocess.run([sys.executable, "-m", "ssl_pipeline", "data", "pull"], cwd=clone, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2
    error = next(line for line in done.stderr.splitlines() if line.startswith("error:"))
    assert error.count(". ") == 0 and "a folder of this clone only, and it is empty" in error
    assert "dvc remote add -d" in error and "`ssl-pipeline data demo`" in error


def test_predict_on_a_missing_image_hints_at_the_input_not_the_stages(ws, capsys):
    code, _, err = run(capsys, "predict", "no-such-photo.jpg")
    assert code == 2 and "no such image or folder: no-such-photo.jpg" in err
    assert "earlier stages" not in err and "hint: give an image file or a folder of images" in err
