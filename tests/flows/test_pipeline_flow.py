"""The whole pipeline through the Prefect flow on a tiny real workspace (git + DVC + SQLite MLflow)."""
from __future__ import annotations

import json
import subprocess
import sys

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow import MlflowClient

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, prefect_harness):
    from workspace import make_pipeline_workspace

    tmp = tmp_path_factory.mktemp("pipeline")
    root = make_pipeline_workspace(tmp, **{"pretrain.epochs": 2})
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    from flows.pipeline import pipeline

    result = pipeline(root=str(root))
    yield root, uri, result, pipeline
    mp.undo()


def test_every_stage_runs_and_dvc_records_it(first_run):
    root, _, result, _ = first_run
    assert result["stages"] == {"prepare": True, "pretrain": True, "finetune": True, "evaluate": True}
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"prepare", "pretrain", "finetune", "evaluate"}
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=root, capture_output=True, text=True)
    assert json.loads(status.stdout or "{}") == {}


def test_label_efficiency_table_covers_every_cell(first_run):
    root = first_run[0]
    table = pd.read_csv(root / "reports/label_efficiency.csv")
    assert list(table.columns) == ["method", "init", "protocol", "label_fraction", "seed", "accuracy"]
    cells = set(zip(table.init, table.protocol))
    assert cells == {("ssl", "knn"), ("ssl", "linear"), ("ssl", "finetune"), ("scratch", "finetune"), ("scratch", "knn")}
    assert set(table.label_fraction) == {0.25, 1.0}
    assert table.accuracy.between(0, 1).all()
    assert (root / "reports/label_efficiency.png").stat().st_size > 1000
    metrics = json.loads((root / "metrics/evaluate.json").read_text())
    assert "ssl_gain_over_scratch_0.25" in metrics


def test_mlflow_has_parent_and_nested_stage_runs_with_params_and_dataset_md5(first_run):
    root, uri, result, _ = first_run
    client = MlflowClient(uri)
    parent = client.get_run(result["parent_run_id"])
    exp_id = parent.info.experiment_id
    children = client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert {r.data.tags["stage"] for r in children} == {"prepare", "pretrain", "finetune", "evaluate"}
    md5s = {p.stem: yaml.safe_load(p.read_text())["outs"][0]["md5"] for p in (root / "data/raw").glob("*.dvc")}
    for run in children:
        assert run.data.params["pretrain.method"] == "simclr"
        assert run.data.tags["git_commit"] not in ("", "unknown")
        assert run.data.tags["prefect_flow_run_id"]
        assert run.data.tags["data.labeled.md5"] == md5s["labeled"]
        digests = {d.dataset.name: d.dataset.digest for d in run.inputs.dataset_inputs}
        assert digests["labeled"] == md5s["labeled"][:36]
    pretrain = next(r for r in children if r.data.tags["stage"] == "pretrain")
    history = client.get_metric_history(pretrain.info.run_id, "loss")
    assert [m.step for m in history] == [1, 2]
    assert len(client.get_metric_history(pretrain.info.run_id, "knn_accuracy")) == 2


def test_champion_loads_and_classifies_like_the_local_classifier(first_run):
    root = first_run[0]
    from ssl_core.data.cache import load_split
    from ssl_core.models import Classifier
    from ssl_core.models.spec import EncoderSpec, build_encoder

    model = mlflow.pytorch.load_model("models:/ssl-classifier@champion")
    test = load_split(root / "data/prepared", "test")
    x = test.images[:16].float() / 255
    spec = json.loads((root / "models/classifier.json").read_text())
    local = Classifier(build_encoder(EncoderSpec.from_dict(spec)), spec["num_classes"]).eval()
    local.load_state_dict(torch.load(root / "models/classifier.pt", weights_only=True))
    with torch.no_grad():
        np.testing.assert_allclose(model(x).numpy(), local(x).numpy(), atol=1e-4)
    encoder = mlflow.pytorch.load_model("models:/ssl-encoder@champion")
    assert encoder(x).shape[0] == 16


def test_prefect_artifacts_hold_the_table(first_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["label-efficiency"])))
    assert arts
    assert "simclr | ssl | linear" in arts[0].data


def test_rerun_unchanged_skips_every_stage_and_registers_nothing(first_run):
    root, uri, _, pipeline = first_run
    before = len(MlflowClient(uri).search_model_versions("name='ssl-classifier'"))
    result = pipeline(root=str(root))
    assert result["stages"] == {"prepare": False, "pretrain": False, "finetune": False, "evaluate": False}
    assert len(MlflowClient(uri).search_model_versions("name='ssl-classifier'")) == before
    assert result["registered"]["classifier_new"] is False


def test_changing_one_param_reruns_only_dependent_stages(first_run):
    root, _, _, pipeline = first_run
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["finetune"]["linear_epochs"] = 3
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    result = pipeline(root=str(root))
    assert result["stages"] == {"prepare": False, "pretrain": False, "finetune": True, "evaluate": True}


@pytest.mark.parametrize("edited", ["ssl_core/evaluation/protocols.py", "ssl_pipeline/stages/evaluate.py"])
def test_a_code_change_makes_dvc_report_the_stages_that_run_it(first_run, tmp_path, edited):
    """dvc.yaml's code deps are honest: one line added to the kNN code (or to the evaluate stage)
    and `dvc status` names every stage that runs that code, never "up to date"."""
    import shutil

    root = first_run[0]
    copy = tmp_path / "ws"
    shutil.copytree(root, copy, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    clean = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=copy, capture_output=True, text=True)
    changed_before = set(json.loads(clean.stdout or "{}"))
    with open(copy / edited, "a") as fh:
        fh.write("\n# a change a stage's results may depend on\n")
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "--json"], cwd=copy, capture_output=True, text=True)
    changed = set(json.loads(status.stdout or "{}")) - changed_before
    expected = {"prepare", "pretrain", "finetune", "evaluate"} if edited.startswith("ssl_core") else {"evaluate"}
    assert changed == expected, status.stdout


def test_a_run_from_the_champion_encoder_as_the_readme_shows_it(first_run, tmp_path):
    """`ssl-pipeline run --set pretrain.init=models:/ssl-encoder@champion` (a real process): pretrain
    reruns from the registered encoder, pinned to its version, and DVC records the param."""
    import os

    root, uri, _, _ = first_run
    client = MlflowClient(uri)
    champion = client.get_model_version_by_alias("ssl-encoder", "champion").version
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run([sys.executable, "-m", "ssl_pipeline", "run", "--set",
                           "pretrain.init=models:/ssl-encoder@champion"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((root / "models/encoder.json").read_text())["init"]
    assert record["source"] == "models:/ssl-encoder@champion" and record["resolved"] == f"models:/ssl-encoder/{champion}"
    runs = client.search_runs([client.get_experiment_by_name("ssl-pipeline").experiment_id],
                              "tags.stage = 'pretrain'", order_by=["attributes.start_time DESC"])
    assert runs[0].data.tags["init.resolved"] == f"models:/ssl-encoder/{champion}"
    assert runs[0].data.tags["init.sha256"] == record["sha256"]
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert lock["stages"]["pretrain"]["params"]["params.yaml"]["pretrain"]["init"] == "models:/ssl-encoder@champion"
