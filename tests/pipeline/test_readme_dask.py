"""The README's Prefect pull step that points prepare at a Dask cluster, run as written on a copy of
params.yaml: the schema then reads the scheduler's address (and nothing else changed)."""
from __future__ import annotations

import re
import shutil
import subprocess

import yaml

from fixtures_repo import PROJECT_ROOT
from ssl_pipeline.config.schema import load_params


def test_the_readme_pull_step_sets_the_dask_address(tmp_path):
    readme = (PROJECT_ROOT / "README.md").read_text()
    script = re.search(r"run_shell_script:\n\s+script: (sed .+ params\.yaml)\n", readme).group(1)
    shutil.copy(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")
    before = yaml.safe_load((tmp_path / "params.yaml").read_text())
    subprocess.run(script, shell=True, cwd=tmp_path, check=True)
    params = load_params(tmp_path / "params.yaml")
    assert params.prepare.dask_address == "tcp://dask-scheduler.ml:8786"
    after = yaml.safe_load((tmp_path / "params.yaml").read_text())
    after["prepare"]["dask_address"] = before["prepare"]["dask_address"]
    assert after == before
