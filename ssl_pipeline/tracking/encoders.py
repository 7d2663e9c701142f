"""An encoder's weights in MLflow as plain tensors: what warm starts, the drift gate and the embedding
commands load.

The pretrain stage logs the whole method (ssl_core.recipes.warm_start.saved_method: encoder, heads,
momentum state, and what it was built from) as the artifact method_state/method.pt of its run, the run
the registered encoder version points to. Loading reads that file with weights_only=True and builds
the encoder with the project's own code, so no code from a model folder ever runs.
"""
from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from ssl_core.models.spec import EncoderSpec, build_encoder, load_encoder
from ssl_pipeline.tracking import runs as tracking

ARTIFACT_DIR = "method_state"
ARTIFACT_FILE = "method.pt"
_MODELS = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[0-9]+)|@(?P<alias>[^/]+))$")
_RUNS = re.compile(r"^runs:/(?P<run>[^/]+)(?:/.*)?$")


class ModelNotFound(FileNotFoundError):
    """A model URI or file that does not exist (or holds no encoder the project can load)."""


@dataclass(frozen=True)
class EncoderSource:
    uri: str                   # what the user gave
    run_id: str                # the pretraining run that logged it ("" for a local file)
    name: str = ""             # registered model name, when it is a registered version
    version: int | None = None

    def fixed_uri(self) -> str:
        """The same weights later, even after an alias moves: models:/NAME/VERSION, else what was given."""
        return f"models:/{self.name}/{self.version}" if self.version is not None else self.uri

    def describe(self) -> str:
        return f"{self.name} v{self.version} ({self.uri})" if self.version is not None else self.uri


def log_method_state(saved: dict) -> None:
    """Log saved_method() under the active run as method_state/method.pt."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ARTIFACT_FILE
        torch.save(saved, path)
        tracking.mlflow.log_artifact(str(path), artifact_path=ARTIFACT_DIR)


def resolve(uri: str) -> EncoderSource:
    """models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN_ID[/...] -> the run that logged it."""
    from mlflow.exceptions import MlflowException

    client = tracking.client()
    found = _MODELS.match(uri)
    try:
        if found:
            name = found["name"]
            mv = (client.get_model_version(name, found["version"]) if found["version"]
                  else client.get_model_version_by_alias(name, found["alias"]))
            return EncoderSource(uri, mv.run_id, name, int(mv.version))
        found = _RUNS.match(uri)
        if found:
            client.get_run(found["run"])
            return EncoderSource(uri, found["run"])
    except MlflowException as err:
        raise ModelNotFound(f"the model {uri} does not exist in the MLflow registry at {tracking.tracking_uri()} "
                            f"({str(err).splitlines()[0][:160]})") from None
    raise ModelNotFound(f"{uri!r} is not a model URI this command reads: use models:/NAME/VERSION, "
                        "models:/NAME@ALIAS, runs:/RUN_ID, or a local models/encoder.pt")


def load_saved_method(uri: str) -> tuple[dict, EncoderSource]:
    """(saved_method() dict, where it came from) of a registered encoder version or a pretraining run."""
    import mlflow
    from mlflow.exceptions import MlflowException

    source = resolve(uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=source.run_id, artifact_path=f"{ARTIFACT_DIR}/{ARTIFACT_FILE}",
                                                       dst_path=tmp, tracking_uri=tracking.tracking_uri())
        except (MlflowException, OSError) as err:
            raise ModelNotFound(f"{source.describe()} has no saved encoder weights ({ARTIFACT_DIR}/{ARTIFACT_FILE} "
                                f"is missing from run {source.run_id}: {str(err).splitlines()[0][:120]}); it was "
                                "logged before this version of ssl-pipeline, so run the pipeline again") from None
        saved = torch.load(path, weights_only=True, map_location="cpu")
    return saved, source


def encoder_from_saved(saved: dict) -> tuple[torch.nn.Module, EncoderSpec]:
    spec = EncoderSpec.from_dict(json.loads(saved["encoder"]))
    encoder = build_encoder(spec)
    encoder.load_state_dict({k[len("backbone."):]: v for k, v in saved["state"].items() if k.startswith("backbone.")})
    return encoder.eval(), spec


def load_encoder_model(model: str) -> tuple[torch.nn.Module, EncoderSpec, EncoderSource]:
    """An encoder from a model URI (see resolve) or a local models/encoder.pt beside its encoder.json."""
    path = Path(model)
    if "://" not in model and ":/" not in model:
        weights = path / "encoder.pt" if path.is_dir() else path
        spec_json = weights.with_suffix(".json")
        if not weights.exists() or not spec_json.exists():
            raise ModelNotFound(f"no encoder at {model}: a local encoder is a .pt state_dict beside its .json "
                                "(models/encoder.pt and models/encoder.json after a pipeline run)")
        encoder, spec = load_encoder(spec_json, weights)
        run_id = json.loads(spec_json.read_text()).get("run_id", "")
        return encoder.eval(), spec, EncoderSource(str(path), run_id)
    saved, source = load_saved_method(model)
    encoder, spec = encoder_from_saved(saved)
    return encoder, spec, source
