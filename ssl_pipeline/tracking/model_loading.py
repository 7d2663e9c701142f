"""The one way the project loads an MLflow model: only the form it logs itself, never model-supplied code.

`mlflow.pytorch.load_model` trusts the folder's MLmodel: a `code:` entry is put first on sys.path and a
pickle-format folder names a "pickle module" that MLflow imports, so a crafted folder runs its own Python
before MLflow's pickle refusal is reached (and pyfunc's `loader_module` is imported by `mlflow models serve`).
Here the folder is first copied into a private temporary folder (a registry or run URI is downloaded,
a local folder copied, so nothing can change between the check and the load), then checked against
what `tracking/models.py` writes:
- MLmodel: flavours `pytorch` (+ `python_function` with `loader_module: mlflow.pytorch`), `model_data:
  data`, no `code`, no extra files but the plain state_dict `extra_files/state_dict.pt`;
- files: MLmodel, the environment and input-example files MLflow writes, `data/model.pt2`
  (a torch.export program), optionally that state_dict (never loaded here; pretrain.init reads it with
  weights_only=True), and nothing else; no links.
Anything else is refused with one sentence before any of it is imported or unpickled. The checked copy
is then loaded by MLflow with pickle deserialization off (MLflow also checks that the pt2 archive holds
no pickled objects).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator

import yaml

from ssl_pipeline.tracking.models import WEIGHTS_FILE, WEIGHTS_IN_MODEL

PT2_FILE = "model.pt2"
DATA_DIR = "data"
# What mlflow.pytorch.log_model(export_model=True, serialization_format="pt2") writes beside MLmodel.
ALLOWED_FILES = {"MLmodel", "conda.yaml", "python_env.yaml", "requirements.txt", "constraints.txt",
                 "input_example.json", "serving_input_example.json", "registered_model_meta"}
PYTORCH_KEYS = {"code", "model_data", "pytorch_version", "extra_files"}
EXTRA_DIR = "extra_files"
PYFUNC_KEYS = {"config", "data", "env", "loader_module", "pickle_module_name", "python_version", "code"}
PYFUNC_PICKLE_MODULE = "mlflow.pytorch.pickle_module"   # recorded even for pt2; never imported for pt2
PICKLE_ENV = "MLFLOW_ALLOW_PICKLE_DESERIALIZATION"


class UnsafeModelError(ValueError):
    """The model folder is not one ssl-pipeline logged: it is refused before anything in it runs."""


def check_model_folder(folder: Path, uri: str = "") -> dict:
    """Raise UnsafeModelError unless `folder` is exactly what the project logs; returns its MLmodel."""
    folder = Path(folder)
    where = uri or str(folder)

    def refuse(why: str) -> UnsafeModelError:
        return UnsafeModelError(f"refusing to load the model {where}: {why}; only models logged by ssl-pipeline "
                                "(a PyTorch pt2 program, no code, no pickles) are loaded")

    _check_files(folder, refuse)
    try:
        spec = yaml.safe_load((folder / "MLmodel").read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise refuse(f"its MLmodel file is unreadable ({type(err).__name__})") from None
    flavors = spec.get("flavors") if isinstance(spec, dict) else None
    if not isinstance(flavors, dict) or "pytorch" not in flavors:
        raise refuse("its MLmodel has no pytorch flavour")
    other = sorted(set(flavors) - {"pytorch", "python_function"})
    if other:
        raise refuse(f"its MLmodel has the flavour(s) {', '.join(other)}")
    torch_conf = flavors["pytorch"]
    if not isinstance(torch_conf, dict) or set(torch_conf) - PYTORCH_KEYS:
        raise refuse("its pytorch flavour has entries ssl-pipeline never writes "
                     f"({', '.join(sorted(set(torch_conf or {}) - PYTORCH_KEYS)) or 'not a mapping'})")
    if torch_conf.get("code"):
        raise refuse(f"its MLmodel names a code folder ({torch_conf['code']!r}) that MLflow would import")
    if torch_conf.get("extra_files", [{"path": WEIGHTS_IN_MODEL}]) != [{"path": WEIGHTS_IN_MODEL}]:
        raise refuse(f"its pytorch flavour lists extra files other than {WEIGHTS_IN_MODEL}")
    if torch_conf.get("model_data") != DATA_DIR:
        raise refuse(f"its model data is {torch_conf.get('model_data')!r}, not {DATA_DIR!r}")
    if "python_function" in flavors:
        _check_pyfunc(flavors["python_function"], refuse)
    return spec


def _check_pyfunc(conf, refuse) -> None:
    if not isinstance(conf, dict) or set(conf) - PYFUNC_KEYS:
        raise refuse("its python_function flavour has entries ssl-pipeline never writes")
    if conf.get("code"):
        raise refuse(f"its python_function flavour names a code folder ({conf['code']!r})")
    if conf.get("loader_module") != "mlflow.pytorch":
        raise refuse(f"its python_function flavour loads through the module {conf.get('loader_module')!r}")
    if conf.get("data") != DATA_DIR or conf.get("pickle_module_name") not in (None, PYFUNC_PICKLE_MODULE):
        raise refuse("its python_function flavour points at other data or another pickle module")


def _check_files(folder: Path, refuse) -> None:
    """Exactly the files the project logs, all plain files or folders (lstat: links are refused)."""
    if not (folder / "MLmodel").is_file():
        raise refuse("it has no MLmodel file")
    for entry in sorted(os.listdir(folder)):
        mode = os.lstat(folder / entry).st_mode
        if entry == DATA_DIR and stat.S_ISDIR(mode):
            continue
        if entry == EXTRA_DIR and stat.S_ISDIR(mode):
            _check_extra_files(folder / EXTRA_DIR, refuse)
            continue
        if entry not in ALLOWED_FILES or not stat.S_ISREG(mode):
            raise refuse(f"it holds {entry!r}, which ssl-pipeline never logs")
    data = folder / DATA_DIR
    if not data.is_dir() or os.listdir(data) != [PT2_FILE] or not stat.S_ISREG(os.lstat(data / PT2_FILE).st_mode):
        found = ", ".join(sorted(os.listdir(data))) if data.is_dir() else "nothing"
        raise refuse(f"its data folder holds {found or 'nothing'} instead of the pt2 program {PT2_FILE}")


def _check_extra_files(extra: Path, refuse) -> None:
    """extra_files/ holds exactly the plain state_dict tracking/models.py logs beside the program."""
    if os.listdir(extra) != [WEIGHTS_FILE] or not stat.S_ISREG(os.lstat(extra / WEIGHTS_FILE).st_mode):
        found = ", ".join(sorted(os.listdir(extra))) or "nothing"
        raise refuse(f"its extra_files folder holds {found} instead of {WEIGHTS_FILE} alone")


def _is_local_folder(uri: str) -> bool:
    return "://" not in uri and ":/" not in uri and Path(uri).is_dir()


@contextlib.contextmanager
def private_copy(uri: str) -> Iterator[Path]:
    """The model at `uri` (models:/, runs:/, any artifact URI or a local folder) copied into a fresh
    folder only this process writes to; removed afterwards."""
    import mlflow

    tmp = Path(tempfile.mkdtemp(prefix="ssl-model-"))   # mode 0700
    try:
        dst = tmp / "model"
        if _is_local_folder(uri):
            shutil.copytree(uri, dst, symlinks=True)   # links are copied as links, then refused
        else:
            dst.mkdir()
            dst = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)))
        yield dst
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _pickle_refused() -> Iterator[None]:
    """MLflow's pickle refusal on for this load, whatever the environment says."""
    before = os.environ.get(PICKLE_ENV)
    os.environ[PICKLE_ENV] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(PICKLE_ENV, None)
        else:
            os.environ[PICKLE_ENV] = before


def load_project_model(uri: str):
    """(torch module, mlflow.models.Model) for a model the project logged; see the module docstring."""
    import mlflow
    from mlflow.models import Model

    with private_copy(uri) as folder:
        check_model_folder(folder, uri)
        info = Model.load(str(folder / "MLmodel"))
        with _pickle_refused():
            model = mlflow.pytorch.load_model(str(folder))
    return model, info


def checked_copy(uri: str, dest: Path) -> Path:
    """Copy the model at `uri` to `dest` (e.g. for `mlflow models serve`) only if it passes the check."""
    with private_copy(uri) as folder:
        check_model_folder(folder, uri)
        shutil.copytree(folder, dest, symlinks=True)
    return Path(dest)
