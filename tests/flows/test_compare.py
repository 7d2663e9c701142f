"""The method comparison flow on tiny real workspaces (git + DVC + SQLite MLflow + Prefect)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import mlflow
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from ssl_pipeline.config.schema import ConfigError, load_params

COLOUR_METHODS = ["colorization", "simclr", "mae"]   # pretext (colour), contrastive, masked ViT


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, prefect_harness):
    """One tiny colour workspace and MLflow store for the module; the grayscale run re-prepares it
    with data.channels=1 (cheaper than a second workspace)."""
    from workspace import make_pipeline_workspace

    tmp = tmp_path_factory.mktemp("compare")
    root = make_pipeline_workspace(tmp, color=True)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    yield root, uri
    mp.undo()


def _run_flow(root, methods: list[str], extra: list[str] = ()) -> dict:
    from flows.compare import compare

    return compare(root=str(root), overrides=[f"compare.methods=[{','.join(methods)}]", "compare.epochs=1", *extra])


@pytest.fixture(scope="module")
def colour_run(workspace):
    root, uri = workspace
    return root, uri, _run_flow(root, COLOUR_METHODS)


@pytest.fixture(scope="module")
def gray_run(workspace, colour_run):
    """Grayscale data: colorization must be skipped; rotation fails on every attempt (one retry)."""
    from ssl_pipeline.comparison import methods as comparison

    root, uri = workspace
    calls = []
    real = comparison.pretrain_for_comparison

    def failing(mp, *args, **kwargs):
        if mp.pretrain.method == "rotation":
            calls.append(1)
            raise RuntimeError("boom: injected failure")
        return real(mp, *args, **kwargs)

    patch = pytest.MonkeyPatch()
    patch.setattr(comparison, "pretrain_for_comparison", failing)
    try:
        result = _run_flow(root, ["colorization", "rotation", "jigsaw"],
                           ["data.channels=1", "data.label_fractions=[1.0]", "flow.retries=1",
                            "flow.retry_delay_seconds=[0]", "finetune.protocols=[linear]"])
    finally:
        patch.undo()
    return root, uri, result, len(calls)


@pytest.mark.slow
def test_csv_has_every_method_protocol_fraction_and_seed_plus_baselines(colour_run):
    root, _, result = colour_run
    table = pd.read_csv(root / "reports/method_comparison.csv")
    assert {"method", "protocol", "label_fraction", "seed", "accuracy", "backbone", "pretrain_seconds",
            "status"} <= set(table.columns)
    assert (table.status == "ok").all() and table.accuracy.between(0, 1).all()
    cells = {(0.25, 0), (1.0, 0)}   # the tiny workspace: fractions 0.25 and 1.0, one seed each
    got = {(m, b, p, f, s) for m, b, p, f, s in
           zip(table.method, table.backbone, table.protocol, table.label_fraction, table.seed)}
    want = set()
    for method, backbone in [("colorization", "resnet_narrow"), ("simclr", "resnet_narrow"), ("mae", "vit_tiny")]:
        want |= {(method, backbone, p, f, s) for p in ("knn", "linear", "finetune") for f, s in cells}
    for backbone in ("resnet_narrow", "vit_tiny"):   # one baseline per architecture used
        want |= {("random", backbone, p, f, s) for p in ("knn", "linear") for f, s in cells}
        want |= {("scratch", backbone, "finetune", f, s) for f, s in cells}
    assert got == want and len(table) == len(want)
    assert (table[table.method.isin(COLOUR_METHODS)].pretrain_seconds > 0).all()
    assert (table[table.method.isin(["random", "scratch"])].pretrain_seconds == 0).all()
    # every encoder kNN/probes read has its features' effective rank; a scratch classifier has no such encoder
    assert table[table.method != "scratch"].feature_rank.between(1, 512).all()
    assert table[table.method == "scratch"].feature_rank.isna().all()
    assert (root / "reports/method_comparison.png").stat().st_size > 5000
    assert "| simclr | resnet_narrow | knn |" in result["markdown"]
    assert result["failed"] == [] and result["skipped"] == []


@pytest.mark.slow
def test_mlflow_parent_with_one_child_per_method_and_baseline(colour_run):
    root, uri, result = colour_run
    client = MlflowClient(uri)
    parent = client.get_run(result["parent_run_id"])
    assert parent.info.run_name == "compare" and parent.info.status == "FINISHED"
    assert yaml.safe_load(parent.data.tags["overrides"]) == ["compare.methods=[colorization,simclr,mae]",
                                                            "compare.epochs=1"]
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "reports")}
    assert {"reports/method_comparison.csv", "reports/method_comparison.png"} <= artifacts
    assert "accuracy.simclr.resnet_narrow.knn.1" in parent.data.metrics
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_name = {r.info.run_name: r for r in children}
    assert set(by_name) == {"prepare", "compare-colorization", "compare-simclr", "compare-mae", "compare-random",
                            "compare-scratch"}
    md5 = yaml.safe_load((root / "data/raw/labeled.dvc").read_text())["outs"][0]["md5"]
    for method, backbone in [("colorization", "resnet_narrow"), ("simclr", "resnet_narrow"), ("mae", "vit_tiny")]:
        run = by_name[f"compare-{method}"]
        assert run.data.params["pretrain.method"] == method
        assert run.data.params["pretrain.backbone"] == backbone
        assert run.data.params["pretrain.epochs"] == "1"
        assert run.data.tags["data.labeled.md5"] == md5
        assert run.data.tags["overrides"] == parent.data.tags["overrides"]
        assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == [1]
        assert len(client.get_metric_history(run.info.run_id, "knn_accuracy")) == 1
    assert by_name["compare-mae"].data.params["method_params.mask_ratio"] == "0.75"
    assert by_name["compare-simclr"].data.params["method_params.temperature"]


@pytest.mark.slow
def test_prefect_artifacts_hold_the_comparison(colour_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        md = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["method-comparison"])))
        tables = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["method-comparison-table"])))
    assert md and "| mae | vit_tiny | finetune |" in md[0].data
    assert tables and "scratch" in str(tables[0].data)


@pytest.mark.slow
def test_grayscale_skips_colour_method_and_reports_a_failing_one(gray_run):
    root, uri, result, attempts = gray_run
    table = pd.read_csv(root / "reports/method_comparison.csv")
    skipped = table[table.method == "colorization"]
    assert len(skipped) == 1 and skipped.status.iloc[0].startswith("skipped: needs colour images")
    failed = table[table.method == "rotation"]
    assert len(failed) == 1 and failed.status.iloc[0] == "failed: RuntimeError: boom: injected failure"
    assert attempts == 2   # flow.retries = 1
    jigsaw = table[table.method == "jigsaw"]
    assert set(jigsaw.protocol) == {"knn", "linear"} and (jigsaw.status == "ok").all()
    assert {"random", "scratch"} <= set(table.method)
    assert (table.backbone[table.status == "ok"] == "resnet_narrow").all()   # no ViT method ran: no ViT baselines
    assert result["failed"] == ["rotation"] and result["skipped"] == ["colorization"]
    assert "colorization (resnet_narrow): skipped: needs colour images" in result["markdown"]
    parent = MlflowClient(uri).get_run(result["parent_run_id"])
    assert parent.data.tags["compare.failed"] == "rotation"


@pytest.mark.slow
def test_init_weights_add_an_init_row_and_every_method_starts_from_them(workspace, colour_run):
    """pretrain.init in the comparison: "weights + SSL" rows for the methods on the weights' backbone,
    an `init` row ("weights, no SSL", every protocol), random and scratch below; mae (vit_tiny) cannot
    start from ResNet weights and is skipped with the reason."""
    import torch

    from ssl_core.data.cache import load_meta
    from ssl_core.fsutil import file_sha256
    from ssl_core.models.spec import build_encoder
    from ssl_pipeline.recipes import encoder_spec

    root, uri = workspace
    params = load_params(root / "params.yaml")
    torch.manual_seed(5)
    (root / "weights").mkdir(exist_ok=True)
    torch.save(build_encoder(encoder_spec(params, load_meta(root / "data/prepared"))).state_dict(),
               root / "weights/start.pt")
    result = _run_flow(root, ["simclr", "mae"], ["pretrain.init=weights/start.pt", "data.label_fractions=[1.0]"])
    table = pd.read_csv(root / "reports/method_comparison.csv")
    assert list(dict.fromkeys(table.method)) == ["simclr", "mae", "init", "random", "scratch"]
    init_rows = table[table.method == "init"]
    assert set(init_rows.protocol) == {"knn", "linear", "finetune"} and (init_rows.backbone == "resnet_narrow").all()
    assert table[table.method == "mae"].status.iloc[0] == ("skipped: pretrain.init holds resnet_narrow weights and "
                                                           "mae trains vit_tiny (compare.backbones)")
    assert result["skipped"] == ["mae"] and set(table.backbone[table.status == "ok"]) == {"resnet_narrow"}
    client = MlflowClient(uri)
    parent = client.get_run(result["parent_run_id"])
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_name = {r.info.run_name: r for r in children}
    for name in ("compare-simclr", "compare-init"):
        assert by_name[name].data.tags["init.sha256"] == file_sha256(root / "weights/start.pt")
    assert "init.sha256" not in by_name["compare-random"].data.tags


HANG_DETECTOR_S = 600   # not a speed limit: only ends a test whose process would never get there


@pytest.mark.slow
def test_a_killed_comparison_leaves_its_report_so_far_and_the_rerun_reuses_what_it_finished(workspace, colour_run,
                                                                                             tmp_path):
    """`ssl-pipeline compare` (a real process with Prefect's temporary server) is killed with SIGKILL
    once simclr is finished, while rotation trains: the report holds simclr's rows; the rerun takes
    simclr's results from the killed run instead of training it again, and measures rotation."""
    from flows.compare import compare

    root, uri = workspace
    sets = ["compare.methods=[simclr,rotation]", "compare.method_epochs={rotation: 20}",
            "finetune.protocols=[linear]", "data.label_fractions=[1.0]"]
    out = root / "reports/killed"

    def finished_result():
        """simclr's finished result: in the workspace, or in the run workspace these overrides get."""
        found = [*root.glob("checkpoints/compare/simclr/result.json"),
                 *root.glob(".dvc/tmp/ssl-runs/*/checkpoints/compare/simclr/result.json")]
        return found[0] if found else None

    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    with open(tmp_path / "compare.log", "w") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "ssl_pipeline", "compare", "--out", "reports/killed",
                                 *[arg for s in sets for arg in ("--set", s)]], cwd=root, env=env,
                                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + HANG_DETECTOR_S
            while finished_result() is None and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            finished = finished_result()
            assert finished is not None, (tmp_path / "compare.log").read_text()[-3000:]
            time.sleep(0.5)   # simclr's rows reach the report right after its result file
        finally:
            os.killpg(proc.pid, signal.SIGKILL)   # the flow and its Prefect server, mid-rotation
            proc.wait()
    partial = pd.read_csv(out / "method_comparison.csv")
    assert set(partial.method) == {"simclr"} and (partial.status == "ok").all()
    killed_simclr = json.loads(finished.read_text())["run_id"]

    result = compare(root=str(root), overrides=sets, out_dir="reports/killed")
    table = pd.read_csv(out / "method_comparison.csv")
    assert {"simclr", "rotation", "random", "scratch"} == set(table.method) and (table.status == "ok").all()
    pd.testing.assert_frame_equal(table[table.method == "simclr"].reset_index(drop=True), partial)
    client = MlflowClient(uri)
    parent = client.get_run(result["parent_run_id"])
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_name = {r.info.run_name: r for r in children}
    simclr, rotation = by_name["compare-simclr"], by_name["compare-rotation"]
    assert simclr.data.tags["compare.reused_from_run_id"] == killed_simclr
    assert client.get_metric_history(simclr.info.run_id, "loss") == []   # not trained again
    assert simclr.data.metrics["test_accuracy.resnet_narrow.linear.1.0"] == pytest.approx(
        partial[partial.protocol == "linear"].accuracy.iloc[0])
    assert "compare.reused_from_run_id" not in rotation.data.tags
    assert len(client.get_metric_history(rotation.info.run_id, "loss")) == 20
    assert not list((root / "checkpoints/compare").glob("*/result.json"))   # published: a new comparison measures afresh


def test_unknown_method_names_the_key_and_the_allowed_values(tmp_path):
    from workspace import write_params

    write_params(tmp_path, {})
    with pytest.raises(ConfigError, match=r"compare\.methods: unknown method 'simclrr'; allowed: .*byol, .*simclr"):
        load_params(tmp_path / "params.yaml", ["compare.methods=[simclrr]"])
    with pytest.raises(ConfigError, match=r"compare\.backbones\.mae: .*needs a ViT backbone"):
        load_params(tmp_path / "params.yaml", ["compare.backbones={mae: resnet18}"])
    with pytest.raises(ConfigError, match=r"compare\.method_params\.moco\.nope: unknown key"):
        load_params(tmp_path / "params.yaml", ["compare.method_params={moco: {nope: 1}}"])


def test_per_method_params_budget_backbone_and_knobs(tmp_path):
    from ssl_pipeline.comparison import methods as comparison
    from workspace import write_params

    write_params(tmp_path, {"pretrain.epochs": 7, "pretrain.method": "moco", "pretrain.method_params": {"version": "v3"},
                            "compare.method_batch_size": {}, "compare.method_epochs": {"mae": 100}})
    params = load_params(tmp_path / "params.yaml", ["compare.epochs=2", "compare.method_params={byol: {base_momentum: 0.9}}"])
    mae, moco, byol = (comparison.params_for(params, m).pretrain for m in ("mae", "moco", "byol"))
    assert (mae.backbone, mae.epochs, mae.method_params) == ("vit_tiny", 2, {})
    assert (moco.backbone, moco.method_params) == (params.pretrain.backbone, {"version": "v3"})
    assert byol.method_params == {"base_momentum": 0.9}
    assert comparison.params_for(load_params(tmp_path / "params.yaml"), "simclr").pretrain.epochs == 7
    own = load_params(tmp_path / "params.yaml", ["compare.method_epochs={mae: 40}"])
    assert [comparison.params_for(own, m).pretrain.epochs for m in ("mae", "simclr")] == [40, 7]
    batch = params.pretrain.batch_size
    assert comparison.budget_text(own) == f"7 epochs at batch {batch} (mae: 40 epochs)"
    assert comparison.budget_text(params) == f"2 epochs at batch {batch}"   # compare.epochs wins
    with pytest.raises(ConfigError, match=r"compare\.method_epochs\.mae: must be between 1 and"):
        load_params(tmp_path / "params.yaml", ["compare.method_epochs={mae: 0}"])
    sized = load_params(tmp_path / "params.yaml", ["compare.method_batch_size={mae: 256}"])
    assert [comparison.params_for(sized, m).pretrain.batch_size for m in ("mae", "simclr")] == [256, batch]
    assert comparison.budget_text(sized) == f"7 epochs at batch {batch} (mae: 100 epochs, batch 256)"
    with pytest.raises(ConfigError, match=r"compare\.method_batch_size\.mae: must be between 2 and"):
        load_params(tmp_path / "params.yaml", ["compare.method_batch_size={mae: 0}"])
    with pytest.raises(ConfigError, match=r"compare\.method_batch_size: unknown method 'nope'"):
        load_params(tmp_path / "params.yaml", ["compare.method_batch_size={nope: 32}"])
    entries = comparison.plan(params, {"channels": 1})
    assert [e.skip_reason is not None for e in entries] == [m == "colorization" for m in params.compare.method_list()]
    assert comparison.baseline_backbones(params, entries) == sorted({params.pretrain.backbone, "vit_tiny"})


def test_cli_shortcuts_become_recorded_overrides():
    from ssl_pipeline.cli.main import build_parser
    from ssl_pipeline.cli.commands.compare import overrides

    args = build_parser().parse_args(["compare", "--methods", "simclr, rotation", "--epochs", "3",
                                      "--set", "data.image_size=32", "--out", "reports/cmp"])
    assert overrides(args) == ["data.image_size=32", "compare.methods=[simclr,rotation]", "compare.epochs=3"]
    assert args.out == "reports/cmp"


def test_cli_rejects_bad_methods_before_any_work(tmp_path, capsys):
    from ssl_pipeline.cli.main import main
    from workspace import write_params

    write_params(tmp_path, {})
    code = main(["compare", "--params", str(tmp_path / "params.yaml"), "--methods", "simclr,nope"])
    assert code == 2
    assert "compare.methods: unknown method 'nope'" in capsys.readouterr().err
