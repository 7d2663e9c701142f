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


def test_the_committed_dvc_lock_matches_this_trees_code_params_and_demo_data(tmp_path):
    """What a fresh clone's `make run` compares dvc.lock against, without training: every stage's code and
    params deps, and the demo data. A code or params change without `make lock` fails here."""
    import json
    import shutil

    from fixtures_repo import PROJECT_ROOT
    from ssl_pipeline.ingest.datasets import install_demo
    from ssl_pipeline.versioning import workspace as dvcops

    root = project_copy(tmp_path / "clone")
    (root / "data/raw").mkdir(parents=True, exist_ok=True)
    for tracked in [*(PROJECT_ROOT / "data/raw").glob("*.dvc"), PROJECT_ROOT / "data/raw/imports.json"]:
        shutil.copy(tracked, root / "data/raw" / tracked.name)
    shutil.copy(PROJECT_ROOT / "dvc.lock", root / "dvc.lock")
    install_demo(root / "data/raw")
    outputs = {out if isinstance(out, str) else next(iter(out))
               for stage in yaml_stages(root).values() for kind in ("outs", "metrics", "plots")
               for out in stage.get(kind, [])}
    status = json.loads(dvcops.dvc("status", "--json", cwd=root).stdout.strip().splitlines()[-1] or "{}")
    stale = []
    for stage, changes in status.items():
        for change in changes:
            if not isinstance(change, dict):
                continue
            stale += [f"{stage}: {path} {what}" for path, what in change.get("changed deps", {}).items()
                      if path not in outputs]
            stale += [f"{stage}: params {p}" for p in change.get("changed params", {}) or {}]
    assert not stale, "dvc.lock is stale: run `make lock` and commit dvc.lock\n" + "\n".join(stale)


def yaml_stages(root) -> dict:
    import yaml

    return yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
