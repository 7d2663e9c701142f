"""The pretrain stage's kNN monitor schedule (pretrain.knn_every), through the real stage and MLflow."""
from __future__ import annotations

import pandas as pd
import pytest


def test_knn_monitor_runs_every_n_epochs_and_after_the_last(tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    from ssl_pipeline.config.schema import load_params
    from ssl_pipeline import outputs
    from ssl_pipeline.ingest.prepare import prepare
    from ssl_pipeline.stages import pretrain
    from workspace import write_params, write_tiny_images

    write_tiny_images(tmp_path / "data/raw", classes=3)
    write_params(tmp_path, {"pretrain.device": "cpu", "pretrain.epochs": 3, "pretrain.knn_every": 2})
    params = load_params(tmp_path / "params.yaml")
    prepare(params, tmp_path)
    metrics = pretrain.run(params, tmp_path)

    curve = pd.read_csv(tmp_path / outputs.CURVE_CSV)
    assert curve["epoch"].tolist() == [1, 2, 3]
    assert curve["loss"].notna().all()
    assert curve["knn_accuracy"].isna().tolist() == [True, False, False]
    assert metrics["knn_accuracy"] == pytest.approx(curve["knn_accuracy"].iloc[-1])
    assert curve["feature_rank"].isna().tolist() == [True, False, False]   # measured with the kNN monitor
    assert 1 <= metrics["feature_rank"] == pytest.approx(curve["feature_rank"].iloc[-1])
    client = MlflowClient(mlflow_uri)
    run_id = client.search_runs([client.get_experiment_by_name(params.tracking.experiment).experiment_id])[0].info.run_id
    assert sorted(m.step for m in client.get_metric_history(run_id, "knn_accuracy")) == [2, 3]
    assert sorted(m.step for m in client.get_metric_history(run_id, "feature_rank")) == [2, 3]
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == [1, 2, 3]
