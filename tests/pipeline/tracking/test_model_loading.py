"""A crafted MLflow model folder never runs its own code, on any path the project loads a model:
`predict` (a local folder, runs:/ and models:/ URIs), retraining's champion/challenger scoring, and the
model server. The crafted folders carry a code/ module that writes a marker file when imported; the
first tests show that plain MLflow does import it, so the refusal tests guard a live attack."""
from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from fixtures_repo import PROJECT_ROOT
from ssl_core.data.cache import save_split
from ssl_core.models import Classifier, build_backbone
from ssl_pipeline.tracking.model_loading import UnsafeModelError, check_model_folder, load_project_model
from ssl_pipeline.tracking.models import log_torch_model

EVIL_MODULE = "evil_model_code"


def evil_module(tmp_path: Path, marker: Path) -> Path:
    path = tmp_path / f"{EVIL_MODULE}.py"
    path.write_text(f"open({str(marker)!r}, 'w').write('model code ran')\nimport pickle\n"
                    "load, loads, Unpickler = pickle.load, pickle.loads, pickle.Unpickler\n")
    return path


def pickle_folder_naming_its_module(tmp_path: Path, marker: Path) -> Path:
    """MLflow's pickle format with code_paths, and the pickle module set to the folder's own module:
    mlflow.pytorch.load_model imports it before its pickle refusal."""
    folder = tmp_path / "evil-pickle"
    mlflow.pytorch.save_model(torch.nn.Linear(2, 2), str(folder), serialization_format="pickle",
                              code_paths=[str(evil_module(tmp_path, marker))])
    (folder / "data" / "pickle_module_info.txt").write_text(EVIL_MODULE)
    return folder


def pt2_folder_with_loader_module(tmp_path: Path, marker: Path) -> Path:
    """A pt2 program (what the project logs) plus a code folder named as pyfunc's loader module:
    `mlflow models serve` / mlflow.pyfunc.load_model import it."""
    folder = tmp_path / "evil-pt2"
    mlflow.pytorch.save_model(torch.nn.Linear(2, 2), str(folder), serialization_format="pt2",
                              input_example=np.zeros((2, 2), np.float32),
                              code_paths=[str(evil_module(tmp_path, marker))])
    spec = yaml.safe_load((folder / "MLmodel").read_text())
    spec["flavors"]["python_function"]["loader_module"] = EVIL_MODULE
    (folder / "MLmodel").write_text(yaml.safe_dump(spec))
    return folder


CRAFTED = {"pickle module from code/": pickle_folder_naming_its_module,
           "pyfunc loader module from code/": pt2_folder_with_loader_module}


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "MODEL_CODE_RAN"
    yield path
    assert not path.exists(), "a project loader imported code shipped in a model folder"
    assert EVIL_MODULE not in sys.modules


def run_plain_mlflow(code: str) -> subprocess.CompletedProcess:
    """In a child: a plain MLflow load imports the folder's module into the process that does it."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}, timeout=300)


@pytest.mark.parametrize("kind", ["pickle", "pyfunc"])
def test_the_crafted_folders_run_their_code_under_plain_mlflow(tmp_path, kind):
    marker = tmp_path / "ran"
    if kind == "pickle":
        folder = pickle_folder_naming_its_module(tmp_path, marker)
        call = f"mlflow.pytorch.load_model({str(folder)!r})"
    else:
        folder = pt2_folder_with_loader_module(tmp_path, marker)
        call = f"mlflow.pyfunc.load_model({str(folder)!r})"
    run_plain_mlflow(f"import mlflow\ntry:\n    {call}\nexcept Exception as e:\n    print(e)\n")
    assert marker.read_text() == "model code ran"   # the refusal below guards a live attack


@pytest.mark.parametrize("make", CRAFTED.values(), ids=list(CRAFTED))
def test_predict_refuses_a_crafted_local_folder_before_its_code_runs(tmp_path, marker, make):
    from ssl_pipeline.serving.predict import load_predictor

    folder = make(tmp_path, marker)
    with pytest.raises(UnsafeModelError, match=r"refusing to load the model .*only models logged by ssl-pipeline"):
        load_predictor(str(folder), tmp_path)
    assert str(folder / "code") not in sys.path


@pytest.fixture
def crafted_in_registry(tmp_path, mlflow_uri, marker):
    """Both crafted folders logged as run artifacts and registered (versions 1, 2), alias champion on 1."""
    mlflow.set_experiment("crafted")
    uris = []
    for i, make in enumerate(CRAFTED.values()):
        (tmp_path / f"m{i}").mkdir()
        folder = make(tmp_path / f"m{i}", marker)
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(folder), "classifier")
        uris.append(f"runs:/{run.info.run_id}/classifier")
        mlflow.register_model(uris[-1], "evil-classifier")
    MlflowClient(mlflow_uri).set_registered_model_alias("evil-classifier", "champion", 1)
    return uris


def test_predict_refuses_crafted_runs_and_registry_uris(tmp_path, crafted_in_registry):
    from ssl_pipeline.serving.predict import load_predictor

    for uri in crafted_in_registry + ["models:/evil-classifier@champion", "models:/evil-classifier/2"]:
        with pytest.raises(UnsafeModelError, match="refusing to load the model"):
            load_predictor(uri, tmp_path)


def test_retrain_scoring_refuses_a_crafted_champion(tmp_path, crafted_in_registry):
    from ssl_pipeline.retraining.decision import score

    prepared = tmp_path / "prepared"
    prepared.mkdir()
    save_split(prepared / "test.pt", np.zeros((4, 1, 2, 2), np.uint8), np.zeros(4, np.int64))
    for uri in ("models:/evil-classifier@champion", "models:/evil-classifier/2"):
        with pytest.raises(UnsafeModelError):
            score(uri, tmp_path, "prepared")


def test_the_model_server_refuses_a_crafted_model_before_starting(tmp_path, crafted_in_registry, mlflow_uri):
    import os

    from ssl_pipeline.serving import servers

    with pytest.raises(UnsafeModelError):
        servers.start_model_server("models:/evil-classifier/2", tmp_path, state_dir=tmp_path / "state",
                                   env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri})
    assert not (tmp_path / "state" / "model-server.log").exists()   # nothing was started


def project_model_folder(tmp_path: Path) -> tuple[Path, torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = Classifier(build_backbone("resnet_narrow", 1, 8, small_stem=True, width=4), 3).eval()
    example = torch.rand(2, 1, 8, 8)
    with mlflow.start_run() as run:
        log_torch_model(model, example, "classifier", metadata={"classes": ["a", "b", "c"]})
    folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/classifier", dst_path=str(tmp_path)))
    return folder, model, example


def test_the_projects_own_model_loads_and_predicts_like_the_original(tmp_path, mlflow_uri):
    mlflow.set_experiment("own")
    folder, model, example = project_model_folder(tmp_path / "dl")
    loaded, info = load_project_model(str(folder))
    assert info.metadata["classes"] == ["a", "b", "c"]
    with torch.no_grad():
        torch.testing.assert_close(loaded(example), model(example))


@pytest.mark.parametrize("tamper, reason", [
    (lambda f: (f / "code").mkdir(), "holds 'code'"),
    (lambda f: (f / "data" / "model.pth").write_bytes(b"x"), "data folder holds"),
    (lambda f: (f / "extra.py").write_text("print(1)"), "holds 'extra.py'"),
    (lambda f: (f / "conda.yaml").unlink() or (f / "conda.yaml").symlink_to("/etc/hostname"), "holds 'conda.yaml'"),
    (lambda f: edit_mlmodel(f, lambda s: s["flavors"]["pytorch"].update(code="code")), "names a code folder"),
    (lambda f: edit_mlmodel(f, lambda s: s["flavors"].update(sklearn={"pickled_model": "m.pkl"})), "sklearn"),
    (lambda f: edit_mlmodel(f, lambda s: s["flavors"]["python_function"].update(loader_module="os")), "module 'os'"),
    (lambda f: edit_mlmodel(f, lambda s: s["flavors"]["pytorch"].update(extra_files=[{"path": "x"}])), "extra_files"),
    (lambda f: (f / "extra_files" / "hook.py").write_text("print(1)"), "extra_files folder holds hook.py"),
    (lambda f: (f / "extra_files" / "state_dict.pt").unlink() or (f / "extra_files" / "state_dict.pt").symlink_to("/etc/hostname"),
     "instead of state_dict.pt alone"),
])
def test_anything_but_what_the_project_logs_is_refused_with_one_sentence(tmp_path, mlflow_uri, tamper, reason):
    mlflow.set_experiment("own")
    folder, _, _ = project_model_folder(tmp_path / "dl")
    check_model_folder(folder)   # the untouched folder passes
    tamper(folder)
    with pytest.raises(UnsafeModelError, match=reason) as err:
        check_model_folder(folder, "my-model")
    assert "\n" not in str(err.value) and str(err.value).startswith("refusing to load the model my-model: ")


def edit_mlmodel(folder: Path, change) -> None:
    spec = yaml.safe_load((folder / "MLmodel").read_text())
    change(spec)
    (folder / "MLmodel").write_text(yaml.safe_dump(spec))


LOADERS = {"mlflow.pytorch.load_model", "mlflow.pyfunc.load_model", "mlflow.models.get_model_info",
           "mlflow.pytorch.load_state_dict", "mlflow.pyfunc.spark_udf"}


def test_no_other_module_loads_mlflow_models():
    """Evaluate, export and every other path: the only MLflow model loading is the checked loader's
    (evaluate and export read local state_dicts with torch.load(weights_only=True))."""
    found = []
    for path in sorted(p for pkg in ("ssl_core", "ssl_pipeline", "flows") for p in (PROJECT_ROOT / pkg).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                name = ast.unparse(node)
                if name in LOADERS or name.endswith(".pyfunc.load_model"):
                    found.append(f"{path.relative_to(PROJECT_ROOT)}: {name}")
    assert found == ["ssl_pipeline/tracking/model_loading.py: mlflow.pytorch.load_model"]
