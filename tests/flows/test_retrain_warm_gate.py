"""Warm start, the drift gate and model cards through the real retrain flow (git + DVC + SQLite MLflow +
Prefect harness), on one tiny workspace:

  1. first retrain                         -> cold pretraining, v1 champion, its model card
  2. +11 % images of the same distribution  -> gate: no drift, the champion's encoder is reused (no pretraining)
  3. +33 % inverted, washed-out images      -> gate: drift, pretraining warm-started from the champion
"""
from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from ssl_core.recipes.warm_start import state_digest
from ssl_pipeline.versioning import workspace as dvcops

pytestmark = pytest.mark.slow
CLF, ENC = "ssl-classifier", "ssl-encoder"
GATE = ["retrain.drift_policy=gate", "retrain.warm_start=true", "retrain.warm_epochs=1", "retrain.warm_warmup_epochs=0",
        "retrain.drift_sample=200", "retrain.drift_permutations=199", "retrain.margin=-1.0"]


def add_pool_images(root: Path, n_per_class: int, seed: int, invert: bool = False) -> None:
    """More unlabeled images (and as many labeled train images), drawn like the originals or inverted."""
    from workspace import class_image

    rng = np.random.default_rng(seed)
    tag = "inv" if invert else "more"
    for c in range(3):
        for i in range(n_per_class):
            image = class_image(c, rng, 16, False)
            # inverted and washed out (inverting these gratings alone only shifts their random phase)
            image = (255 - image * 0.3).astype(np.uint8) if invert else image
            Image.fromarray(image).save(root / f"data/raw/unlabeled/{tag}_{seed}_{c}_{i:03d}.png")
            Image.fromarray(image).save(root / f"data/raw/labeled/train/class{c}/{tag}_{seed}_{i:03d}.png")
    dvcops.track(root, ["data/raw/unlabeled", "data/raw/labeled"])


def pretrain_run(client: MlflowClient, encoder_version: int):
    return client.get_run(client.get_model_version(ENC, str(encoder_version)).run_id)


@pytest.fixture(scope="module")
def steps(tmp_path_factory, prefect_harness):
    from flows.retrain import retrain
    from workspace import make_pipeline_workspace

    tmp = tmp_path_factory.mktemp("retrain-gate")
    root = make_pipeline_workspace(tmp, **{"pretrain.epochs": 2})
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    out = {"root": root, "client": MlflowClient(uri)}
    out["first"] = retrain(root=str(root), overrides=GATE)
    shutil.copy(root / "models/encoder.pt", tmp / "champion_encoder.pt")   # the champion's weights, as the stage wrote them
    out["champion_encoder"] = torch.load(tmp / "champion_encoder.pt", weights_only=True)
    add_pool_images(root, 3, seed=7)            # 9 more of 72: the same distribution
    out["same"] = retrain(root=str(root), overrides=GATE)
    out["reused_encoder"] = torch.load(root / "models/encoder.pt", weights_only=True)
    add_pool_images(root, 9, seed=8, invert=True)   # 27 inverted images: another distribution
    out["champion_before_warm"] = int(out["client"].get_model_version_by_alias(ENC, "champion").version)
    out["warm_champion_encoder"] = torch.load(root / "models/encoder.pt", weights_only=True)
    out["shifted"] = retrain(root=str(root), overrides=GATE)
    yield out
    mp.undo()


def test_the_first_retrain_pretrains_cold(steps):
    result, client = steps["first"], steps["client"]
    assert result["plan"]["mode"] == "cold" and "no champion" in result["plan"]["reason"]
    run = pretrain_run(client, 1)
    assert run.data.tags.get("warm_start.from") is None
    assert client.get_model_version(ENC, "1").tags["lineage.from"] == ""


def test_the_same_distribution_does_not_drift_and_the_encoder_is_reused(steps):
    result, client = steps["same"], steps["client"]
    drift = result["drift"]
    assert drift["measured"] and drift["drifted"] is False and drift["n_new"] == 9
    assert result["plan"]["mode"] == "reuse" and "drift gate" in result["plan"]["reason"]
    assert result["challenger_version"] == 2
    run = pretrain_run(client, 2)
    assert run.data.tags["warm_start.mode"] == "reuse" and run.data.tags["warm_start.from"] == "models:/ssl-encoder/1"
    assert "loss" not in run.data.metrics                          # no pretraining step ran
    assert state_digest(steps["reused_encoder"]) == state_digest(steps["champion_encoder"])
    assert "drift gate: no drift" in result["markdown"] and "**reuse**" in result["markdown"]


def test_shifted_images_drift_and_the_challenger_starts_from_the_champion(steps):
    result, client = steps["shifted"], steps["client"]
    drift = result["drift"]
    assert drift["measured"] and drift["drifted"] is True and drift["n_new"] == 27
    assert drift["stats"]["p_value"] < 0.01 and drift["stats"]["mmd2"] >= 0.02
    assert result["plan"]["mode"] == "warm"
    champion = steps["champion_before_warm"]
    run = pretrain_run(client, result["challenger_version"])
    tags = run.data.tags
    assert tags["warm_start.from"] == f"models:/ssl-encoder/{champion}" and tags["warm_start.loaded"] == "method"
    assert tags["warm_start.from_version"] == str(champion)
    # The challenger's weights before its first optimizer step are the champion encoder's.
    assert tags["warm_start.encoder_sha256_at_step_0"] == state_digest(steps["warm_champion_encoder"])
    assert run.data.params["pretrain.epochs"] == "1"                # retrain.warm_epochs, not the cold schedule
    version = client.get_model_version(CLF, str(result["challenger_version"]))
    assert version.tags["lineage.from"] == f"models:/ssl-encoder/{champion}"
    retrain_run = client.get_run(result["retrain_run_id"])
    assert retrain_run.data.tags["drift.drifted"] == "True" and retrain_run.data.metrics["drift_mmd2"] >= 0.02


def test_every_registered_version_carries_a_model_card(steps):
    client, root = steps["client"], steps["root"]
    version = steps["shifted"]["challenger_version"]
    card = client.get_model_version(CLF, str(version)).description
    md5s = dvcops.dataset_md5s(root)
    for needle in (f"# Model card: {CLF} v{version}", "## Intended use", md5s["data/raw/labeled"],
                   md5s["data/raw/unlabeled"], "| train |", "class0:", "## Label efficiency (test split)",
                   "s0:", "## Drift vs its predecessor", "drifted: MMD^2", "warm start from models:/ssl-encoder/",
                   "loaded: method", "grayscale (1-channel) images at 16x16 px", "## Known limitations (measured)",
                   "Retrain decision: promoted"):
        assert needle in card, needle
    run_id = client.get_model_version(CLF, str(version)).run_id
    artifact = mlflow.artifacts.load_text(f"runs:/{run_id}/model_card/{CLF}-v{version}.md")
    assert artifact == card
    encoder_card = client.get_model_version(ENC, str(version)).description
    assert encoder_card.startswith(f"# Model card: {ENC} v{version} (encoder of {CLF} v{version})")
    for v in range(1, version + 1):
        assert client.get_model_version(CLF, str(v)).description.startswith(f"# Model card: {CLF} v{v}")


def test_the_readme_commands_run_as_written(steps):
    """The README's block under "Nightly retraining that costs what changed", in a real process."""
    import os
    import re
    import shlex
    import subprocess
    import sys

    from prefect.settings import PREFECT_API_URL

    from fixtures_repo import PROJECT_ROOT

    text = (PROJECT_ROOT / "README.md").read_text().split("### Nightly retraining that costs what changed", 1)[1]
    block = re.search(r"```bash\n(.*?)```", text, re.S)[1]
    commands = [shlex.split(line, comments=True) for line in block.splitlines() if line.strip()]
    assert [c[:2] for c in commands] == [["ssl-pipeline", "retrain"], ["ssl-pipeline", "card"]]
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}
    outs = []
    for argv in commands:
        done = subprocess.run([sys.executable, "-m", "ssl_pipeline", *argv[1:]], cwd=steps["root"], env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        outs.append(done.stdout)
    assert "Drift vs champion encoder" in outs[0] and "decision:" in outs[0]
    assert outs[1].startswith("# Model card: ssl-classifier v")
