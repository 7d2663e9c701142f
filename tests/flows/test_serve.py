"""The retrain deployment, read back through the Prefect client of a real (test harness) API:
built in-process, registered by the `ssl-pipeline serve` command in its own process, and from
prefect.yaml by `prefect deploy`."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from fixtures_repo import PROJECT_ROOT
from ssl_pipeline.config.schema import load_params

DEPLOY_WAIT_S = 240   # a cold subprocess imports prefect + torch + mlflow: slow on a busy 2-core box
# `python -m ssl_pipeline` with SIGINT live: when pytest runs as a background job of a script (`make test &`),
# its children start with SIGINT ignored and Ctrl-C would (rightly) do nothing to them.
LIVE_SIGINT_MAIN = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                    "runpy.run_module('ssl_pipeline', run_name='__main__', alter_sys=True)")


def _read_deployment(name: str):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            return client.read_deployment_by_name(name)
        except ObjectNotFound:
            return None


def _child_env(**extra: str) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    # The harness API lives in this process's settings only: hand its URL to the child.
    return {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), **extra}


def test_apply_registers_the_cron_schedule_from_params(prefect_harness, tmp_path):
    from flows.retrain import apply_deployment
    from prefect.client.orchestration import get_client

    params = load_params(PROJECT_ROOT / "params.yaml",
                         ["retrain.cron=15 2 * * 1", "retrain.timezone=Europe/Berlin",
                          "retrain.deployment_name=apply-test", "retrain.concurrency_tag=apply-tag"])
    apply_deployment(params, tmp_path, overrides=["retrain.margin=0.01"])
    dep = _read_deployment("retrain/apply-test")
    assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in dep.schedules] == [("15 2 * * 1", "Europe/Berlin", True)]
    assert dep.parameters == {"root": str(tmp_path.resolve()), "params_file": "params.yaml",
                              "overrides": ["retrain.margin=0.01"]}
    assert dep.tags == ["apply-tag"]
    assert dep.global_concurrency_limit.limit == 1
    assert dep.entrypoint == "flows.retrain.retrain"
    with get_client(sync_client=True) as client:
        assert client.read_concurrency_limit_by_tag("apply-tag").concurrency_limit == 1


def test_serve_command_registers_the_deployment_and_stops_on_ctrl_c(prefect_harness, tmp_path):
    shutil.copy(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")
    # --set values are YAML: a cron starting with "*" needs quotes (else it reads as a YAML alias).
    cmd = [sys.executable, "-c", LIVE_SIGINT_MAIN, "serve", "--set", "retrain.deployment_name=serve-test",
           "--set", "retrain.cron='*/30 6-18 * * 1-5'", "--set", "retrain.timezone=America/New_York"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_child_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + DEPLOY_WAIT_S
        dep = None
        while dep is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(2)
            dep = _read_deployment("retrain/serve-test")
        assert dep is not None, f"no deployment; serve exited {proc.poll()}:\n{proc.stdout.read() if proc.poll() is not None else ''}"
        assert [(s.schedule.cron, s.schedule.timezone) for s in dep.schedules] == [("*/30 6-18 * * 1-5", "America/New_York")]
        assert dep.parameters["root"] == str(tmp_path.resolve())
        assert proc.poll() is None   # serving: it blocks until interrupted
        proc.send_signal(signal.SIGINT)
        # Prefect's own shutdown, or the forced exit SERVE_GRACE_S later: either way the deployment is paused.
        out, _ = proc.communicate(timeout=DEPLOY_WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert "serving deployment retrain/serve-test" in out
    assert proc.returncode in (0, 130), out[-3000:]
    # Prefect pauses a served deployment when serve shuts down: no runs pile up while nobody serves.
    assert _read_deployment("retrain/serve-test").paused, out[-3000:]


def test_prefect_yaml_agrees_with_params_and_deploys_to_a_process_pool(prefect_harness):
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    config = PrefectYamlModel.model_validate(yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text()))
    retrain = load_params(PROJECT_ROOT / "params.yaml").retrain
    [dep] = config.deployments
    assert dep.name == retrain.deployment_name
    assert dep.tags == [retrain.concurrency_tag]
    assert [(s.cron, s.timezone) for s in dep.schedules] == [(retrain.cron, retrain.timezone)]
    assert dep.entrypoint == "flows/retrain.py:retrain"

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=dep.work_pool.name, type="process"))
    proc = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--name", dep.name],
                          cwd=PROJECT_ROOT, env=_child_env(PWD=str(PROJECT_ROOT)), capture_output=True, text=True,
                          timeout=DEPLOY_WAIT_S, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    deployed = _read_deployment(f"retrain/{dep.name}")
    assert deployed.work_pool_name == dep.work_pool.name
    assert [(s.schedule.cron, s.schedule.timezone) for s in deployed.schedules] == [(retrain.cron, retrain.timezone)]
    assert deployed.global_concurrency_limit.limit == 1
    assert deployed.pull_steps == [{"prefect.deployments.steps.set_working_directory":
                                    {"directory": str(PROJECT_ROOT)}}]
    assert Path(PROJECT_ROOT / deployed.entrypoint.split(":")[0]).is_file()
