"""The README is executed: every ```bash and ```python block runs, in README order, as a user types it.

Why a harness of our own rather than a markdown collector from PyPI: pytest-markdown-docs and phmdoctest
run Python blocks only; mktestdocs runs bash blocks, but one at a time in one shared folder with no way to
say "this block needs an S3 bucket" (a skip with its reason), "this block serves until Ctrl-C", or "run
these blocks in a fresh clone with the user's photos in ~". Our blocks are shell sessions over workspaces
and real files; about 150 lines here and in tests/helpers/readme_blocks.py do exactly that.

How the blocks run (the user's side of the screen, with small budgets):
- Workspaces are fresh copies of the project as a clone holds it (code, Makefile, dvc.yaml, params.yaml,
  the committed data/raw/*.dvc and imports.json, no data), with params.yaml edited to a budget of seconds
  (README_PARAMS), as a user would edit it. "main" is the quick start's; blocks marked
  `<!-- readme-test: workspace: NAME -->` run in their own (see readme_blocks.py for the markers).
- HOME is a temporary folder holding what the README's paths name: ~/photos/unlabeled (a few hundred
  JPEGs of 120-800 px), ~/photos/labeled (3 classes), ~/photos/new, ~/cifar (train/ and test/ of JPEGs).
- `make` and `ssl-pipeline` are the real Makefile and CLI; the Makefile's `.venv` is this interpreter
  (tool_venv: nothing is installed). `make test` runs one small test file (PYTEST_ADDOPTS): this test is
  inside the suite it would start. PREFECT_API_URL points at the session's Prefect test server, as after
  `ssl-pipeline ui`; MLflow writes the workspace's own mlflow.db (the default).

A renamed flag fails test_every_readme_command_still_parses at once (no training), and the block that uses
it here.
"""
from __future__ import annotations

import csv
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fixtures_repo import PROJECT_ROOT
from readme_blocks import readme_blocks, commands
from user_shell import git, project_copy, shell, tool_venv, user_env
from workspace import class_image

README = PROJECT_ROOT / "README.md"
BLOCKS = readme_blocks(README.read_text())
# Small budgets, set in params.yaml the way a user sets them (on top of tests/helpers/workspace.py's TINY_PARAMS).
README_PARAMS = {"data.image_size": 28, "compare.method_epochs": {}, "compare.method_batch_size": {}}
PHOTO_CLASSES = ["cat", "dog", "fox"]
N_UNLABELED, N_PER_CLASS = 240, 30
INNER_TEST = "tests/core/training/test_optim.py"   # what `make test` runs inside this test
BLOCK_TIMEOUT_S = 3600   # a hang guard, not a speed requirement


def test_every_readme_command_still_parses():
    """Each `ssl-pipeline ...` line of every block (skipped ones too) parses with today's CLI, and each
    `make TARGET` names a Makefile target: renaming a flag the README uses fails here, in a second."""
    from ssl_pipeline.cli.main import build_parser

    parser, targets = build_parser(), (PROJECT_ROOT / "Makefile").read_text()
    checked = 0
    for block in BLOCKS:
        for argv in commands(block, "ssl-pipeline"):
            try:
                parser.parse_args(argv)
            except SystemExit:
                pytest.fail(f"README line {block.line}: `ssl-pipeline {' '.join(argv)}` does not parse any more")
            checked += 1
        for argv in commands(block, "make"):
            assert all(f"\n{t}:" in targets for t in argv if not t.startswith("-") and "=" not in t), \
                f"README line {block.line}: `make {' '.join(argv)}` names no Makefile target"
    assert checked >= 10


def _photo(rng: np.random.Generator, size: tuple[int, int], tint: np.ndarray, angle: float) -> Image.Image:
    """A smooth picture (stripes at a class angle, a tint, noise), so JPEG stores it like a photo."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    stripes = np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * 12 + rng.uniform(0, 6)) * 0.5 + 0.5
    img = stripes[..., None] * tint * 200 + rng.normal(0, 8, (h, w, 1)) + 30
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _photos(folder: Path, n: int, rng: np.random.Generator, cls: int | None = None, sizes=(120, 800)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tints = np.array([[1.0, 0.5, 0.3], [0.3, 1.0, 0.5], [0.4, 0.4, 1.0]])
    for i in range(n):
        c = int(rng.integers(3)) if cls is None else cls
        size = tuple(int(s) for s in rng.integers(sizes[0], sizes[1] + 1, 2))
        _photo(rng, size, tints[c], np.pi * c / 3).save(folder / f"IMG_{i:04d}.jpg", quality=85)


def _user_files(home: Path) -> None:
    rng = np.random.default_rng(28)
    _photos(home / "photos" / "unlabeled" / "2025", N_UNLABELED // 2, rng)
    _photos(home / "photos" / "unlabeled" / "2026", N_UNLABELED - N_UNLABELED // 2, rng)
    (home / "photos" / "unlabeled" / ".DS_Store").write_bytes(b"\0Bud1")
    for c, name in enumerate(PHOTO_CLASSES):
        _photos(home / "photos" / "labeled" / name, N_PER_CLASS, rng, cls=c)
    _photos(home / "photos" / "new", 6, rng)
    for split, n in (("train", 10), ("test", 3)):   # CIFAR-10 as its JPEG repository lays it out
        for c in range(10):
            folder = home / "cifar" / split / f"class{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(class_image(c % 4, rng, 32, True)).save(folder / f"{i:04d}.jpg")
    (home / "cifar" / "README.md").write_text("CIFAR-10 images\n")
    (home / "cifar" / ".git").mkdir()


class World:
    """The user's machine: HOME, the tool venv, the workspaces (made on first use) and each block's output."""

    def __init__(self, base: Path, prefect_api_url: str):
        self.base, self.home = base, base / "home"
        _user_files(self.home)
        self.env = user_env(tool_venv(base / "venv"), self.home, PREFECT_API_URL=prefect_api_url,
                            PYTEST_ADDOPTS=f"-p no:cacheprovider {INNER_TEST}")
        self.workspaces: dict[str, Path] = {}
        self.outputs: dict[str, str] = {}

    def workspace(self, name: str) -> Path:
        if name not in self.workspaces:
            self.workspaces[name] = self._make(name)
        return self.workspaces[name]

    def _make(self, name: str) -> Path:
        root = project_copy(self.base / name, params=README_PARAMS)
        for tracked in [*(PROJECT_ROOT / "data" / "raw").glob("*.dvc"), PROJECT_ROOT / "data/raw/imports.json"]:
            (root / "data/raw").mkdir(parents=True, exist_ok=True)
            shutil.copy(tracked, root / "data/raw" / tracked.name)   # what a clone has: the pins, not the data
        if name == "main":
            shutil.copytree(PROJECT_ROOT / "tests", root / "tests", ignore=shutil.ignore_patterns("__pycache__"))
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "as cloned")
        if name == "tiny":   # the comparison's blocks: a small labeled set of the user's, imported as the README says
            folder = self.base / "tiny-labeled"
            rng = np.random.default_rng(1)
            for c in range(3):
                (folder / f"c{c}").mkdir(parents=True)
                for i in range(24):
                    Image.fromarray(class_image(c, rng, 28, True)).save(folder / f"c{c}" / f"{i}.png")
            done = shell(f"ssl-pipeline data import {folder} --as labeled", root, self.env)
            assert done.returncode == 0, done.stdout[-3000:]
        return root


@pytest.fixture(scope="module")
def world(tmp_path_factory, prefect_harness):
    from prefect.settings import PREFECT_API_URL

    return World(tmp_path_factory.mktemp("readme"), PREFECT_API_URL.value())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_until(script: str, cwd: Path, env: dict, text: str) -> subprocess.CompletedProcess:
    """Run a block that serves until Ctrl-C: once `text` is printed, SIGINT its process group."""
    proc = subprocess.Popen(["bash", "-e", "-o", "pipefail", "-c", script], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put(None)], daemon=True).start()
    seen, interrupted = [], False
    while True:
        try:
            line = lines.get(timeout=BLOCK_TIMEOUT_S)
        except queue.Empty:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        if line is None:
            break
        seen.append(line)
        if text in line and not interrupted:
            os.killpg(proc.pid, signal.SIGINT)   # Ctrl-C, as the README says
            interrupted = True
    code = proc.wait(timeout=300)
    return subprocess.CompletedProcess(proc.args, 0 if interrupted and code in (0, 130) else code or 1, "".join(seen))


@pytest.mark.slow
@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs(block, world):
    if block.skip:
        pytest.skip(block.skip)
    root = world.workspace(block.workspace)
    code = block.code.replace(str(block.port), str(_free_port())) if block.port else block.code
    if block.lang == "python":
        script = world.base / f"block-{block.index:02d}.py"
        script.write_text(code)
        code = f"python {script}\n"
    if block.stop_when:
        done = _run_until(code, root, world.env, block.stop_when)
    else:
        done = shell(code, root, world.env, timeout=BLOCK_TIMEOUT_S)
    world.outputs[block.id] = done.stdout
    if done.returncode == 0 and block.section.startswith("Bring your own data") and "--as unlabeled" in block.code:
        # What the user does next, before anything else touches the registry: ask the new model.
        probe = shell("ssl-pipeline predict ~/photos/new --out preds-after-own-data.csv", root, world.env)
        world.outputs["predict-after-own-data"] = probe.stdout
    assert done.returncode == 0, (f"README line {block.line} ({block.section}) failed in workspace {block.workspace}:\n"
                                  f"{block.code}\n---- output (tail) ----\n{done.stdout[-6000:]}")


def _output(world: World, section: str, contains: str) -> str:
    block = next(b for b in BLOCKS if b.section.startswith(section) and contains in b.code)
    if block.id not in world.outputs:
        pytest.fail(f"README block {block.id} did not run")
    return world.outputs[block.id]


@pytest.mark.slow
def test_make_run_in_an_empty_workspace_writes_and_uses_the_demo(world):
    out = _output(world, "Quick start", "make run")
    assert "demo wrote 4000 unlabeled and 5000 labeled digits" in out
    assert "stages: prepare: ran, pretrain: ran" in out and "ssl-classifier v1 (new), set as @champion" in out


@pytest.mark.slow
def test_own_data_block_imports_adds_up_and_make_run_trains_on_it(world):
    out = _output(world, "Bring your own data", "--as unlabeled")
    assert f"-> data/raw/unlabeled: {N_UNLABELED} files added, 0 already there, 1 skipped" in out
    assert "replaced the demo digits in data/raw/unlabeled and emptied data/raw/labeled" in out
    assert f"-> data/raw/labeled: {3 * N_PER_CLASS} files added (train/cat 30, train/dog 30, train/fox 30)" in out
    assert f"data/raw/unlabeled: {N_UNLABELED} files" in out and f"data/raw/labeled: {3 * N_PER_CLASS} files" in out
    assert "not writing the demo: the workspace holds imported data" in out and "stages: prepare: ran" in out
    meta = json.loads((world.workspace("main") / "data/prepared/meta.json").read_text())
    assert meta["classes"] == PHOTO_CLASSES and meta["channels"] == 3
    counts = meta["counts"]   # the pool: the unlabeled photos and the labeled ones not held out for test
    assert counts["unlabeled"] == N_UNLABELED + counts["train"] + counts["val"]
    assert counts["train"] + counts["val"] + counts["test"] == 3 * N_PER_CLASS


def _predicted_classes(csv_path: Path) -> set[str]:
    assert csv_path.exists(), f"predict did not write {csv_path.name}"
    with open(csv_path) as fh:
        return {row["class"] for row in csv.DictReader(fh) if not row["error"]}


@pytest.mark.slow
def test_predict_right_after_the_own_data_run_answers_in_the_new_label_set(world):
    """The acceptance order: the demo champion exists, the own-data block trains, then `predict`."""
    classes = _predicted_classes(world.workspace("main") / "preds-after-own-data.csv")
    assert classes and classes <= set(PHOTO_CLASSES), classes   # not the demo's digits: the new label set is champion


@pytest.mark.slow
def test_the_readme_predict_block_answers_in_the_label_set_of_the_photos(world):
    """In README order, `ssl-pipeline retrain` ran before this block: a champion that cannot score the
    photos' test split loses to the photos' model, so predict names the photos' classes."""
    classes = _predicted_classes(world.workspace("main") / "preds.csv")
    assert classes and classes <= set(PHOTO_CLASSES)
