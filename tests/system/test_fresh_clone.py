"""Clone, pull, rerun: a teammate's fresh clone of a project whose data and dvc.lock were committed runs
`make run` and leaves `git status --porcelain` empty: every output is git-ignored and dvc.lock comes out
byte for byte as committed (no run ids, wall-clock times or other run-specific values in what DVC hashes)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from user_shell import git, project_copy, shell, tool_venv, user_env
from workspace import class_image


def _tiny_photos(folder, classes: int = 3, per_class: int = 24, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (folder / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(class_image(c, rng, 16, False)).save(folder / f"class{c}" / f"{i:03d}.png")


@pytest.mark.slow
def test_a_fresh_clone_is_clean_after_pull_and_make_run(tmp_path):
    venv = tool_venv(tmp_path / "venv")
    env = user_env(venv)
    origin = project_copy(tmp_path / "origin", params={})
    _tiny_photos(tmp_path / "labeled")
    team_remote = tmp_path / "team-remote"
    setup = shell(f"""
        ssl-pipeline data import {tmp_path / 'labeled'} --as labeled
        dvc remote add -d team {team_remote}
        ssl-pipeline data push
        make run
        git add -A && git commit -q -m 'data, team remote, dvc.lock'
        git status --porcelain
    """, origin, env)
    assert setup.returncode == 0, setup.stdout[-4000:]
    assert "registry: ssl-classifier v1 (new), set as @champion" in setup.stdout
    lock = (origin / "dvc.lock").read_text()

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(origin), str(clone))
    done = shell("""
        ssl-pipeline data pull
        make run
        dvc plots show -q
    """, clone, env)
    assert done.returncode == 0, done.stdout[-4000:]
    assert "prepare: ran" in done.stdout   # the clone trained: nothing came from the origin's outputs
    assert git(clone, "status", "--porcelain") == "", (git(clone, "status", "--porcelain"), git(clone, "diff"))
    assert (clone / "dvc.lock").read_text() == lock
