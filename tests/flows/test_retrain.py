"""The retrain flow against one tiny real workspace (git + DVC + SQLite MLflow + Prefect harness).

One module fixture runs the sequence once; the tests read its snapshots:
  1. first retrain               -> trains, the first version becomes champion
  2. new images, margin 1.0      -> trains, challenger v2 cannot win: champion kept
  3. same again                  -> nothing changed (the "kept" decision is remembered)
  4. margin -1.0                 -> params changed, DVC reruns no stage, challenger promoted
  5. same again                  -> nothing changed: no training run, no model version
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow import MlflowClient
from PIL import Image

from ssl_pipeline.versioning import workspace as dvcops
from ssl_pipeline.retraining import decision
from ssl_pipeline.retraining.decision import FIRST, KEPT, NOTHING, PROMOTED

pytestmark = pytest.mark.slow
CLF, ENC = "ssl-classifier", "ssl-encoder"
STAGES = {"prepare", "pretrain", "finetune", "evaluate"}


def add_images(root: Path, per_class: int = 4, classes: int = 3, seed: int = 99) -> None:
    from workspace import class_image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        for i in range(per_class):
            image = class_image(c, rng, 16, False)
            Image.fromarray(image).save(root / f"data/raw/labeled/train/class{c}/new_{i:03d}.png")
            Image.fromarray(class_image(c, rng, 16, False)).save(root / f"data/raw/unlabeled/new_{c}_{i:03d}.png")
    dvcops.track(root, ["data/raw/unlabeled", "data/raw/labeled"])


def snapshot(client: MlflowClient) -> dict:
    exp = client.get_experiment_by_name("ssl-pipeline")
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []

    def alias(name, a):
        try:
            return int(client.get_model_version_by_alias(name, a).version)
        except mlflow.exceptions.MlflowException:
            return None

    versions = {int(v.version): v.tags for v in client.search_model_versions(f"name='{CLF}'")}
    return {"runs": {r.info.run_id: r.data.tags.get("stage") for r in runs},
            "versions": sorted(versions), "tags": versions,
            "encoder_versions": sorted(int(v.version) for v in client.search_model_versions(f"name='{ENC}'")),
            "champion": alias(CLF, "champion"), "challenger": alias(CLF, "challenger"),
            "encoder_champion": alias(ENC, "champion")}


def new_stage_runs(before: dict, after: dict) -> set[str]:
    return {stage for rid, stage in after["runs"].items() if rid not in before["runs"]} & STAGES


def reference_accuracy(model_uri: str, root: Path) -> float:
    """Straightforward scoring of a registered model on the workspace's test split."""
    from ssl_core.data.cache import load_split

    test = load_split(root / "data/prepared", "test")
    model = mlflow.pytorch.load_model(model_uri)
    with torch.no_grad():
        pred = model(test.images[0:len(test)].float() / 255).argmax(1)
    return (pred == test.labels).float().mean().item()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prefect_harness):
    from flows.retrain import retrain
    from workspace import make_pipeline_workspace

    tmp = tmp_path_factory.mktemp("retrain")
    root = make_pipeline_workspace(tmp)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    steps = {"start": (None, snapshot(client), {})}

    def step(name: str, **kwargs) -> None:
        result = retrain(root=str(root), **kwargs)
        steps[name] = (result, snapshot(client), dvcops.dataset_md5s(root))

    step("first")
    first_json = json.loads((root / "models/classifier.json").read_text())
    add_images(root)
    step("kept", overrides=["retrain.margin=1.0"])
    kept_json = json.loads((root / "models/classifier.json").read_text())
    kept_scores = {v: reference_accuracy(f"models:/{CLF}/{v}", root) for v in (1, 2)}
    step("kept_again", overrides=["retrain.margin=1.0"])
    step("promoted", overrides=["retrain.margin=-1.0"])
    step("unchanged", overrides=["retrain.margin=-1.0"])
    yield {"root": root, "client": client, "steps": steps, "first_json": first_json, "kept_json": kept_json,
           "kept_scores": kept_scores, "retrain": retrain}
    mp.undo()


def test_first_retrain_trains_and_creates_the_champion(runs):
    result, snap, md5s = runs["steps"]["first"]
    assert new_stage_runs(runs["steps"]["start"][1], snap) == STAGES
    assert result["decision"] == FIRST
    assert snap["versions"] == [1] and snap["champion"] == 1 and snap["challenger"] == 1
    assert snap["encoder_champion"] == 1
    # The retrain's own score of the champion equals the evaluate stage's test accuracy.
    assert result["challenger_accuracy"] == pytest.approx(runs["first_json"]["test_accuracy"], abs=1e-6)
    tags = snap["tags"][1]
    assert tags["retrain.decision"] == FIRST
    assert tags["retrain.state.data.labeled.md5"] == md5s["data/raw/labeled"]
    assert tags["retrain.state.params_digest"] == result["state"]["params_digest"]


def test_new_data_with_a_margin_it_cannot_meet_keeps_the_champion(runs):
    client = runs["client"]
    (_, before, old_md5s), (result, snap, md5s) = runs["steps"]["first"], runs["steps"]["kept"]
    assert md5s["data/raw/labeled"] != old_md5s["data/raw/labeled"]
    assert new_stage_runs(before, snap) == STAGES
    assert result["decision"] == KEPT
    assert snap["versions"] == [1, 2] and snap["champion"] == 1 and snap["challenger"] == 2
    assert snap["encoder_champion"] == 1
    # Both scored on the same current split: the challenger's own evaluate number, and an
    # independent scoring of v1 on the new test.pt.
    assert result["challenger_accuracy"] == pytest.approx(runs["kept_json"]["test_accuracy"], abs=1e-6)
    assert result["champion_accuracy"] == pytest.approx(runs["kept_scores"][1], abs=1e-6)
    assert result["challenger_accuracy"] == pytest.approx(runs["kept_scores"][2], abs=1e-6)
    for version in (1, 2):   # decision, scores and both data versions on both model versions
        tags = snap["tags"][version]
        assert tags["retrain.decision"] == KEPT
        assert tags["retrain.champion_version"] == "1" and tags["retrain.challenger_version"] == "2"
        assert float(tags["retrain.champion_accuracy"]) == pytest.approx(runs["kept_scores"][1], abs=1e-4)
        assert float(tags["retrain.challenger_accuracy"]) == pytest.approx(runs["kept_scores"][2], abs=1e-4)
        assert tags["retrain.champion.data.labeled.md5"] == old_md5s["data/raw/labeled"]
        assert tags["retrain.challenger.data.labeled.md5"] == md5s["data/raw/labeled"]
        assert tags["retrain.margin"] == "1.0"
    run = client.get_run(result["retrain_run_id"])
    assert run.data.tags["stage"] == "retrain" and run.data.params["retrain.decision"] == KEPT
    assert run.data.metrics["champion_accuracy"] == pytest.approx(result["champion_accuracy"])


def test_a_kept_decision_is_remembered_nothing_is_retrained(runs):
    (_, before, _), (result, snap, _) = runs["steps"]["kept"], runs["steps"]["kept_again"]
    assert result["decision"] == NOTHING
    assert set(snap["runs"]) - set(before["runs"]) == {result["retrain_run_id"]}   # only the retrain run
    assert snap["versions"] == before["versions"] and snap["champion"] == 1
    assert snap["tags"] == before["tags"]


def test_margin_that_any_challenger_meets_promotes_without_training(runs):
    (_, before, _), (result, snap, _) = runs["steps"]["kept_again"], runs["steps"]["promoted"]
    assert result["decision"] == PROMOTED
    assert new_stage_runs(before, snap) == set()   # DVC: no stage depends on retrain.margin
    assert snap["versions"] == [1, 2] and snap["encoder_versions"] == [1, 2]
    assert snap["champion"] == 2 and snap["challenger"] == 2 and snap["encoder_champion"] == 2
    assert result["champion_accuracy"] == pytest.approx(runs["kept_scores"][1], abs=1e-6)
    assert snap["tags"][1]["retrain.decision"] == PROMOTED == snap["tags"][2]["retrain.decision"]
    assert snap["tags"][2]["retrain.margin"] == "-1.0"
    assert mlflow.pytorch.load_model(f"models:/{CLF}@champion") is not None


def test_nothing_changed_trains_nothing_and_says_so(runs):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    client = runs["client"]
    (_, before, _), (result, snap, _) = runs["steps"]["promoted"], runs["steps"]["unchanged"]
    assert result["decision"] == NOTHING
    new_runs = {rid: stage for rid, stage in snap["runs"].items() if rid not in before["runs"]}
    assert new_runs == {result["retrain_run_id"]: "retrain"}   # no pipeline, no pretrain run
    assert snap["versions"] == before["versions"] and snap["champion"] == 2
    assert snap["tags"] == before["tags"]
    run = client.get_run(result["retrain_run_id"])
    assert run.data.tags["retrain.decision"] == NOTHING == run.data.params["retrain.decision"]
    with get_client(sync_client=True) as prefect:
        arts = prefect.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["retrain-decision"])))
    texts = [a.data for a in arts]
    assert any("# Retrain: nothing changed" in t for t in texts)
    assert any("# Retrain: kept" in t and "| challenger | v2 |" in t for t in texts)


def test_the_tag_concurrency_limit_exists_with_limit_one(runs):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as prefect:
        assert prefect.read_concurrency_limit_by_tag("ssl-retrain").concurrency_limit == 1


HOLD_LOCK = """
import sys
from pathlib import Path
from ssl_pipeline.retraining.decision import retrain_lock
with retrain_lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.readline()
"""


def test_a_second_retrain_is_rejected_or_waits_while_one_runs(runs):
    """Real processes: one holds the workspace's retrain lock (as a running retrain does); a second
    `ssl-pipeline retrain` is refused with a clear message; one with --wait queues, touches nothing
    while it waits, and runs once the first is done."""
    from prefect.settings import PREFECT_API_URL

    root, client = runs["root"], runs["client"]
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}   # the harness's API
    cli = [sys.executable, "-m", "ssl_pipeline", "retrain", "--margin", "-1.0"]   # the last state: nothing changed
    lock_before = (root / "dvc.lock").read_bytes()
    before = snapshot(client)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(root)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    waiter = None
    try:
        assert holder.stdout.readline().strip() == "held"
        refused = subprocess.run(cli, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        assert refused.returncode == 2
        assert f"error: another retrain is running in {root} (pid {holder.pid} on " in refused.stderr
        assert "--wait SECONDS" in refused.stderr

        waiter = subprocess.Popen([*cli, "--wait", "-1"], cwd=root, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        watchdog = threading.Timer(600, waiter.kill)   # a broken lock must fail the test, not hang it
        watchdog.start()
        seen = []
        for line in waiter.stdout:   # until the waiter reports it is queued behind the holder (a Prefect log line)
            seen.append(line)
            if f"waiting for the retrain running in {root} (pid {holder.pid} " in line:
                break
        assert waiter.poll() is None, "".join(seen)[-3000:]
        assert (root / "dvc.lock").read_bytes() == lock_before and snapshot(client) == before
        holder.stdin.write("\n")
        holder.stdin.flush()
        out, _ = waiter.communicate(timeout=300)
        assert waiter.returncode == 0, "".join(seen)[-2000:] + out[-3000:]
    finally:
        if waiter is not None:
            watchdog.cancel()
        for proc in (holder, waiter):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert "decision: nothing changed" in out
    after = snapshot(client)
    assert after["versions"] == before["versions"] and not new_stage_runs(before, after)
    assert (root / "dvc.lock").read_bytes() == lock_before


def test_a_retrain_elsewhere_holding_the_prefect_slot_blocks_this_one(runs):
    from prefect.concurrency.sync import concurrency

    root, retrain = runs["root"], runs["retrain"]
    before = snapshot(runs["client"])
    with concurrency("tag:ssl-retrain", occupy=1):
        with pytest.raises(decision.RetrainBusy, match="Prefect concurrency slot 'ssl-retrain'"):
            retrain(root=str(root), overrides=["retrain.margin=-1.0"])
    assert snapshot(runs["client"]) == before


# ---------------------------------------------------------------- pieces, without the pipeline

def test_decide_applies_the_margin_inclusively():
    assert decision.decide(0.6, 0.7, 0.1) == PROMOTED          # 0.7 - 0.6 < 0.1 in floats: tolerated
    assert decision.decide(0.6, 0.69, 0.1) == KEPT
    assert decision.decide(0.8, 0.8, 0.0) == PROMOTED
    assert decision.decide(0.8, 0.5, -0.5) == PROMOTED
    assert decision.decide(0.8, 0.5, 0.0) == KEPT
    assert decision.decide(None, 0.1, 0.5) == PROMOTED         # the champion could not score the split


def test_recorded_state_prefers_what_the_last_retrain_decided_on():
    registered = {"params_digest": "p1", "data.labeled.md5": "a.dir", "data.unlabeled.md5": "b.dir", "method": "simclr"}
    assert decision.recorded_state(registered) == {"params_digest": "p1", "data.labeled.md5": "a.dir",
                                                "data.unlabeled.md5": "b.dir"}
    decided = {**registered, "retrain.state.params_digest": "p2", "retrain.state.data.labeled.md5": "c.dir",
               "retrain.state.data.unlabeled.md5": "b.dir", "retrain.decision": KEPT}
    assert decision.recorded_state(decided) == {"params_digest": "p2", "data.labeled.md5": "c.dir",
                                             "data.unlabeled.md5": "b.dir"}


def test_refresh_data_pulls_missing_data_and_refuses_unversioned_changes(tmp_path):
    import shutil

    from fixtures_repo import make_workspace

    root = make_workspace(tmp_path)
    for name in ("labeled/train/a", "unlabeled"):
        (root / "data/raw" / name).mkdir(parents=True)
        (root / "data/raw" / name / "x.png").write_bytes(name.encode())
    dvcops.track(root, ["data/raw/unlabeled", "data/raw/labeled"])
    notes: list[str] = []
    dvcops.push(root)
    shutil.rmtree(root / "data/raw/unlabeled")
    shutil.rmtree(root / ".dvc/cache")   # a fresh clone: only the remote has the data
    assert decision.refresh_data(root, "data/raw", notes.append)["pulled"] == ["data/raw/unlabeled"]
    assert (root / "data/raw/unlabeled/x.png").read_bytes() == b"unlabeled"

    (root / "data/raw/labeled/train/a/y.png").write_bytes(b"new, not dvc add-ed")
    with pytest.raises(decision.UncommittedData, match="dvc add data/raw/labeled"):
        decision.refresh_data(root, "data/raw", notes.append)


def test_refresh_data_fails_clearly_when_no_one_has_the_data(tmp_path):
    import shutil

    from fixtures_repo import make_workspace

    root = make_workspace(tmp_path)
    (root / "data/raw/unlabeled").mkdir(parents=True)
    (root / "data/raw/unlabeled/x.png").write_bytes(b"u")
    dvcops.track(root, ["data/raw/unlabeled"])
    shutil.rmtree(root / "data/raw/unlabeled")
    shutil.rmtree(root / ".dvc/cache")   # never pushed: the remote is empty
    with pytest.raises(dvcops.MissingDataError, match="data/raw/unlabeled missing and `dvc pull` could not fetch it"):
        decision.refresh_data(root, "data/raw", lambda _: None)


def test_refresh_data_updates_imported_datasets(tmp_path):
    """`dvc import` from a data-registry repo; a new version there arrives through `dvc update`."""
    from fixtures_repo import make_workspace

    source = make_workspace(tmp_path, "registry")
    (source / "images").mkdir()
    (source / "images/a.png").write_bytes(b"a")
    dvcops.track(source, ["images"])
    dvcops.push(source)
    dvcops.git("add", "-A", cwd=source)
    dvcops.git("commit", "-q", "-m", "v1", cwd=source)

    root = make_workspace(tmp_path)
    (root / "data/raw").mkdir(parents=True)
    dvcops.dvc("import", str(source), "images", "-o", "data/raw/unlabeled", cwd=root)
    assert decision.imported_datasets(root, "data/raw") == ["data/raw/unlabeled.dvc"]
    first = dvcops.dataset_md5(root, "data/raw/unlabeled")

    (source / "images/b.png").write_bytes(b"b")
    dvcops.track(source, ["images"])
    dvcops.push(source)
    dvcops.git("commit", "-q", "-am", "v2", cwd=source)
    actions = decision.refresh_data(root, "data/raw", lambda _: None)
    assert actions["updated"] == ["data/raw/unlabeled.dvc"]
    assert dvcops.dataset_md5(root, "data/raw/unlabeled") != first
    assert sorted(p.name for p in (root / "data/raw/unlabeled").iterdir()) == ["a.png", "b.png"]
    assert yaml.safe_load((root / "data/raw/unlabeled.dvc").read_text())["deps"][0]["repo"]["url"] == str(source)


def test_an_incomparable_champion_is_named_in_words():
    from ssl_pipeline.tracking import registry

    digits = {"classes": json.dumps([str(i) for i in range(10)]), "channels": "1"}
    photos = {"classes": json.dumps(["cat", "dog", "eel"]), "channels": "3"}
    assert registry.incomparable(digits, photos) == ("its label set differs: the champion knows 10 classes "
                                                     "(0, 1, 2, 3, 4, 5, 6, 7, ...), this data has 3 (cat, dog, eel)")
    assert registry.incomparable(digits, {**digits, "channels": "3"}) == ("it takes 1-channel images and this data "
                                                                         "has 3-channel images")
    assert registry.incomparable(digits, digits) == "" and registry.incomparable({}, photos) == ""
    err = RuntimeError("Guard failed: x.size()[1] == 1")
    assert decision._in_words(err) == "it expects channels 1 and the test split's images differ"
