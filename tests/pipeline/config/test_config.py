"""Bad configuration and environment are reported before any work: one sentence naming the key
(or path) and what is allowed, exit code non-zero, no traceback, nothing written."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import crash_worker as cw
from ssl_pipeline.config.schema import ConfigError, load_params
from ssl_pipeline.versioning.repro import stage_env
from workspace import make_pipeline_workspace
from fixtures_repo import PROJECT_ROOT

PROJECT_PARAMS = PROJECT_ROOT / "params.yaml"


@pytest.mark.parametrize("overrides, expected", [
    # wrong type
    (["pretrain.epochs=abc"], ["pretrain.epochs", "valid integer"]),
    (["pretrain.small_stem=maybe"], ["pretrain.small_stem", "valid boolean"]),
    (["data=3"], ["data", "valid dictionary"]),
    # out of range
    (["pretrain.epochs=0"], ["pretrain.epochs", "greater than or equal to 1"]),
    (["data.val_fraction=1.5"], ["data.val_fraction", "less than 1"]),
    (["flow.retries=99"], ["flow.retries", "less than or equal to 10"]),
    (["data.label_fractions=[0, 0.5]"], ["data.label_fractions", "(0, 1]", "got 0"]),
    # not one of the allowed values
    (["pretrain.backbone=vgg"], ["pretrain.backbone", "'resnet18'", "'vit_tiny'", "got 'vgg'"]),
    (["pretrain.optimizer=adam"], ["pretrain.optimizer", "'sgd', 'adamw' or 'lars'", "got 'adam'"]),
    (["data.channels=17"], ["data.channels", "auto or a count from 1 to 16", "got 17"]),
    (["data.resize=stretch"], ["data.resize", "'crop', 'pad' or 'squash'", "got 'stretch'"]),
    (["data.range_percentiles=[50, 10]"], ["data.range_percentiles", "0 <= low < high <= 100"]),
    (["prepare.workers=-1"], ["prepare.workers", "greater than or equal to 0"]),
    (["finetune.protocols=[linear, probe]"], ["finetune.protocols", "'linear' or 'finetune'", "got 'probe'"]),
    # unknown keys, with the keys that exist
    (["pretrain.epoch=3"], ["pretrain.epoch: unknown key", "allowed:", "epochs", "checkpoint_every"]),
    (["trainer.epochs=3"], ["trainer: unknown key", "allowed:", "pretrain", "finetune"]),
    # unknown method, and the method's own knobs
    (["pretrain.method=simclrr"], ["pretrain.method", "unknown method 'simclrr'", "allowed:", "byol", "moco", "simclr"]),
    (["pretrain.method_params={temp: 0.1}"], ["pretrain.method_params.temp: unknown key", "allowed:", "temperature"]),
    (["pretrain.method_params={temperature: warm}"], ["pretrain.method_params.temperature", "expected a value like 0.2"]),
    (["pretrain.method=moco", "pretrain.method_params={queue_size: 0}"], ["pretrain.method_params.queue_size: must be an integer in [1, "]),
    (["pretrain.method=moco", "pretrain.method_params={version: v4}"], ["pretrain.method_params.version", "'v2' or 'v3'"]),
    (["pretrain.augment={hflip: 0.5}"], ["pretrain.augment.hflip: unknown key", "allowed:", "hflip_p"]),
    # combinations that cannot work
    (["pretrain.method=mae"], ["pretrain.backbone", "'mae' needs a ViT backbone (vit_tiny)", "got 'resnet_narrow'"]),
    (["pretrain.method=colorization", "data.channels=1"], ["pretrain.method", "'colorization' needs colour", "data.channels"]),
    (["pretrain.nproc_per_node=3"], ["pretrain.batch_size", "must divide evenly"]),
    # values the schema used to let through (issue 24): non-finite floats, probabilities, temperatures,
    # the schedule, the seed, and a range on every number
    (["pretrain.lr=.inf"], ["pretrain.lr: must be a finite number, got inf"]),
    (["finetune.weight_decay=.nan"], ["finetune.weight_decay: must be a finite number, got nan"]),
    (["retrain.margin=-.inf"], ["retrain.margin: must be a finite number"]),
    (["data.label_fractions=[.nan]"], ["data.label_fractions.0: must be a finite number"]),
    (["pretrain.augment.hflip_p=7"], ["pretrain.augment.hflip_p: must be a probability in [0, 1], got 7"]),
    (["finetune.augment.gray_p=-0.5"], ["finetune.augment.gray_p: must be a probability in [0, 1]"]),
    (["finetune.augment.brightness=.nan"], ["finetune.augment.brightness: must be a finite number"]),
    (["pretrain.augment.crop_scale=[0.5, .inf]"], ["pretrain.augment.crop_scale: must be a finite number"]),
    (["pretrain.augment.blur_kernel_frac=0"], ["pretrain.augment.blur_kernel_frac: must be in (0, 1]"]),
    (["pretrain.method_params.temperature=-1"], ["pretrain.method_params.temperature: must be a temperature in [0.001, 100]", "got -1"]),
    (["pretrain.method_params.temperature=.nan"], ["pretrain.method_params.temperature: must be a finite number"]),
    (["pretrain.method_params.hidden_dim=0"], ["pretrain.method_params.hidden_dim: must be an integer in [1, "]),
    (["pretrain.method_params.hidden_dim=1.5"], ["pretrain.method_params.hidden_dim: expected a value like 512"]),
    (["compare.method_params={moco: {temperature: 0}}"], ["compare.method_params.moco.temperature: must be a temperature in"]),
    (["retrain.cron=61 3 * * *"], ["retrain.cron: not a cron schedule Prefect accepts: '61 3 * * *'"]),
    (["retrain.cron=every night"], ["retrain.cron: not a cron schedule"]),
    (["retrain.timezone=Mars/Base"], ["retrain.timezone: unknown timezone 'Mars/Base'", "IANA"]),
    (["seed=99999999999999999999"], ["seed", "less than or equal to 2147483647"]),
    (["pretrain.epochs=100000000000"], ["pretrain.epochs", "less than or equal to"]),
    (["finetune.batch_size=1"], ["finetune.batch_size", "greater than or equal to 2"]),
    (["flow.retry_delay_seconds=[-5]"], ["flow.retry_delay_seconds: every delay must be between 0 and"]),
    (["compare.method_batch_size={moco: 1}"], ["compare.method_batch_size.moco: must be between 2 and"]),
])
def test_every_params_error_names_the_key_and_what_is_allowed(overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_params(PROJECT_PARAMS, overrides)
    message = str(err.value)
    assert message.startswith("params.yaml: ") and "\n" not in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def edited_params(tmp_path: Path, edit) -> Path:
    raw = yaml.safe_load(PROJECT_PARAMS.read_text())
    edit(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_several_problems_give_one_line_each_naming_its_key():
    with pytest.raises(ConfigError) as err:
        load_params(PROJECT_PARAMS, ["pretrain.lr=.inf", "pretrain.epochs=0", "retrain.timezone=Nowhere"])
    lines = str(err.value).splitlines()
    assert [line.split(": ")[1] for line in lines] == ["pretrain.epochs", "pretrain.lr", "retrain.timezone"]
    assert all(line.startswith("params.yaml: ") for line in lines)
    with pytest.raises(ConfigError) as err:   # the method's and augmentation's knobs, all of them
        load_params(PROJECT_PARAMS, ["pretrain.augment.hflip_p=7", "pretrain.method_params.temperature=.nan",
                                     "finetune.augment.gray_p=2"])
    assert sorted(line.split(": ")[1] for line in str(err.value).splitlines()) == [
        "finetune.augment.gray_p", "pretrain.augment.hflip_p", "pretrain.method_params.temperature"]


def test_cli_prints_one_error_line_per_problem(tmp_path, capsys):
    from ssl_pipeline.cli import main as cli

    assert cli.main(["config", "--check", "--params", str(PROJECT_PARAMS), "--set", "pretrain.lr=.inf",
                     "--set", "retrain.cron=61 3 * * *"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert [line.split(": ")[2] for line in err if line.startswith("error: ")] == ["pretrain.lr", "retrain.cron"]


def test_missing_keys_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"pretrain: missing required key\(s\): knn_k"):
        load_params(edited_params(tmp_path, lambda raw: raw["pretrain"].pop("knn_k")))
    with pytest.raises(ConfigError, match=r"missing required key\(s\): seed"):
        load_params(edited_params(tmp_path, lambda raw: raw.pop("seed")))


def test_unreadable_params_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: not found"):
        load_params(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("pretrain: [unclosed\n")
    with pytest.raises(ConfigError, match="broken.yaml: not valid YAML"):
        load_params(broken)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_params(PROJECT_PARAMS, ["pretrain.epochs"])


def cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = stage_env(root)
    env.pop("MLFLOW_TRACKING_URI", None)   # default store = ./mlflow.db: it appears if any tracking happened
    return subprocess.run([sys.executable, "-m", "ssl_pipeline", *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=300)


def assert_one_clear_error(done: subprocess.CompletedProcess, *parts: str) -> None:
    """Exit code non-zero, no traceback, one `error:` message (it may list several problems on
    indented lines) that contains every part."""
    assert done.returncode != 0
    lines = done.stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert len(starts) == 1, done.stderr
    message = [lines[starts[0]]]
    for line in lines[starts[0] + 1:]:
        if not line.startswith("  "):
            break
        message.append(line)
    text = "\n".join(message)
    for part in parts:
        assert part in text, text
    assert "Traceback" not in done.stderr


def test_config_check_rejects_a_bad_override_in_one_line(tmp_path):
    shutil.copy(PROJECT_PARAMS, tmp_path / "params.yaml")
    done = cli(tmp_path, "config", "--check", "--set", "pretrain.optimizer=adam")
    assert_one_clear_error(done, "pretrain.optimizer", "'sgd', 'adamw' or 'lars'")
    assert "OK" not in done.stdout


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_pipeline_workspace(tmp_path_factory.mktemp("config"))


def nothing_done(root: Path) -> bool:
    return not any((root / p).exists() for p in ("data/prepared", "reports", "models", "checkpoints", "mlflow.db",
                                                   "mlruns", "mlartifacts"))


@pytest.mark.slow
def test_a_stage_with_bad_params_fails_before_any_work(workspace, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(workspace, root, symlinks=True)
    done = cli(root, "prepare", "--set", "pretrain.method=simclrr")
    assert_one_clear_error(done, "pretrain.method", "unknown method 'simclrr'", "allowed:")
    assert nothing_done(root)


@pytest.mark.slow
def test_data_not_pulled_names_the_path_and_data_pull(workspace, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(workspace, root, symlinks=True)
    shutil.rmtree(root / "data/raw/labeled")   # tracked by DVC (labeled.dvc) but not in the workspace
    done = cli(root, "prepare")
    assert_one_clear_error(done, "data/raw/labeled", "ssl-pipeline data pull")
    assert nothing_done(root)


@pytest.mark.slow
def test_colour_method_on_grayscale_data_fails_before_training(workspace, tmp_path, monkeypatch):
    """With data.channels: auto the colour check needs the prepared data: pretrain refuses before
    it opens a tracking run or writes a checkpoint."""
    from ssl_pipeline.stages import pretrain, prepare
    from ssl_pipeline.errors import StageError

    root = tmp_path / "ws"
    shutil.copytree(workspace, root, symlinks=True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", cw.fresh_mlflow_db(tmp_path / "mlflow.db"))
    prepare.run(load_params(root / "params.yaml"), root)    # grayscale images -> 1 channel
    params = load_params(root / "params.yaml", ["pretrain.method=colorization"])
    with pytest.raises(StageError, match=r"pretrain.method: 'colorization' needs colour .* 1 channel\(s\) "
                                         r"\(data.channels: auto\); pick another pretrain.method"):
        pretrain.run(params, root)
    assert not (root / "checkpoints").exists() and not (root / "models").exists()
    from mlflow.tracking import MlflowClient

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(params.tracking.experiment)
    assert [r.info.run_name for r in client.search_runs([exp.experiment_id])] == ["prepare"]   # no pretrain run
