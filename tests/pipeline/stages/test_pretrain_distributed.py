"""The pretrain stage with pretrain.nproc_per_node = 2: torchrun ranks (gloo, CPU), one MLflow run."""
from __future__ import annotations

from pathlib import Path

import pytest


def _tiny_workspace(root: Path, **overrides):
    from ssl_pipeline.config.schema import load_params
    from workspace import write_params, write_tiny_images

    write_tiny_images(root / "data/raw", classes=3)
    write_params(root, {"pretrain.device": "cpu", **overrides})
    return load_params(root / "params.yaml")


def test_sync_batchnorm_on_cpu_is_refused_before_any_work(tmp_path):
    from ssl_pipeline.config.schema import load_params
    from ssl_pipeline.errors import StageError
    from ssl_pipeline.stages import pretrain
    from workspace import write_params

    write_params(tmp_path, {"pretrain.nproc_per_node": 2, "pretrain.sync_batchnorm": True, "pretrain.device": "cpu"})
    params = load_params(tmp_path / "params.yaml")
    with pytest.raises(StageError, match="sync_batchnorm.*CUDA"):
        pretrain.run(params, tmp_path)


@pytest.mark.slow
def test_pretrain_stage_on_two_processes_logs_once_from_rank_zero(tmp_path, mlflow_uri):
    """The stage opens the MLflow run, torchrun trains on 2 gloo ranks, rank 0 logs each epoch into
    that run; the stage writes the usual outputs. No other run is created, nothing is left behind."""
    from mlflow.tracking import MlflowClient

    from ssl_core.models.spec import load_encoder
    from ssl_pipeline import outputs
    from ssl_pipeline.ingest.prepare import prepare
    from ssl_pipeline.stages import pretrain
    from ssl_pipeline.tracking.models import logged_model

    params = _tiny_workspace(tmp_path, **{"pretrain.nproc_per_node": 2, "pretrain.epochs": 2})
    prepare(params, tmp_path)
    metrics = pretrain.run(params, tmp_path)

    load_encoder(tmp_path / outputs.ENCODER_JSON, tmp_path / outputs.ENCODER_PT)   # the weights load back
    run_id = logged_model(tmp_path, tmp_path / outputs.ENCODER_PT)["run_id"]   # the run that logged these weights
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name(params.tracking.experiment)
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [run_id]
    assert runs[0].info.status == "FINISHED"
    losses = client.get_metric_history(run_id, "loss")
    assert [m.step for m in sorted(losses, key=lambda m: m.step)] == [1, 2]
    assert max(losses, key=lambda m: m.step).value == pytest.approx(metrics["loss"])
    assert len(client.get_metric_history(run_id, "knn_accuracy")) == 2
    assert metrics["epochs"] == 2 and 0 <= metrics["knn_accuracy"] <= 1
    assert not (tmp_path / "checkpoints/pretrain/dist").exists()
    assert not (tmp_path / "checkpoints/pretrain/last.pt").exists()
