"""Which --set overrides need a run workspace: exactly those that change a params key a dvc.yaml stage reads
(retrain.start_from does, retrain.margin does not); and a run workspace finds the user's own files."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ssl_pipeline.outputs import RUNS_DIR, user_workspace
from ssl_pipeline.versioning.run_workspace import needs_own_workspace, stage_params

PROJECT = Path(__file__).resolve().parents[3]


@pytest.fixture
def workspace(tmp_path):
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(PROJECT / name, tmp_path / name)
    return tmp_path


def test_the_stage_keys_are_dvc_yamls(workspace):
    keys = stage_params(workspace)
    assert {"seed", "data", "pretrain", "retrain.start_from", "retrain.start_mode"} <= keys
    assert not {"flow", "compare", "retrain", "tracking"} & keys


@pytest.mark.parametrize("override, own", [
    ("retrain.start_from=models:/ssl-encoder/1", True),   # the pretrain stage reads it (a warm start)
    ("retrain.start_mode=reuse", True),
    ("pretrain.epochs=3", True),
    ("retrain.margin=0.1", False),                         # only the retrain flow reads it
    ("compare.epochs=3", False),
    ("flow.retries=0", False),
    ("pretrain.epochs=50", False),                         # the value params.yaml already has
])
def test_an_override_needs_a_run_workspace_when_a_stage_reads_it(workspace, override, own):
    assert needs_own_workspace(workspace / "params.yaml", [override]) is own


def test_a_run_workspace_reads_the_users_files_from_its_workspace(tmp_path):
    run = tmp_path / "ws" / RUNS_DIR / "0123abcd"
    run.mkdir(parents=True)
    assert user_workspace(run) == (tmp_path / "ws").resolve()
    assert user_workspace(tmp_path / "ws") == tmp_path / "ws"
