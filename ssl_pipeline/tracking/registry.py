"""Model registry at the edge: register the pipeline's encoder and best classifier, set `champion`.

Registration is idempotent: a model logged by a run that is already registered is not registered
again, so rerunning an unchanged pipeline adds no versions.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mlflow.exceptions import MlflowException

from ssl_pipeline import outputs
from ssl_pipeline.tracking import runs as tracking
from ssl_pipeline.config.schema import Params
from ssl_pipeline.errors import StageError
from ssl_pipeline.tracking.models import logged_model
from ssl_pipeline.versioning.workspace import dataset_md5s

CHAMPION = "champion"


def params_digest(params: Params) -> str:
    return hashlib.sha256(params.model_dump_json().encode()).hexdigest()[:16]


def data_tags(root: Path) -> dict[str, str]:
    return {f"data.{Path(k).name}.md5": v for k, v in dataset_md5s(root).items()}


def _existing_version(client, name: str, run_id: str):
    try:
        for mv in client.search_model_versions(f"name='{name}'"):
            if mv.run_id == run_id:
                return mv
    except MlflowException:
        return None
    return None


def register(root: Path, weights: Path, name: str, extra_tags: dict[str, str]) -> tuple[object, bool]:
    """Register the MLflow model that logged `weights` (a stage output); returns (version, created)."""
    import mlflow

    info = logged_model(root, weights)
    if info is None:
        raise StageError(f"{weights} was not logged to MLflow by a run of this workspace (outputs restored by DVC "
                         "from elsewhere?): `dvc repro --force` of the stage that writes it logs it again")
    client = tracking.client()
    mv = _existing_version(client, name, info["run_id"])
    if mv is not None:
        return mv, False
    mv = mlflow.register_model(info["model_uri"], name, tags=extra_tags)
    return mv, True


def has_alias(name: str, alias: str) -> bool:
    try:
        tracking.client().get_model_version_by_alias(name, alias)
        return True
    except MlflowException:
        return False


def register_pipeline_models(params: Params, root: Path = Path(".")) -> dict:
    """Register ssl-encoder and ssl-classifier from the latest stage outputs; champion if none yet."""
    tracking.setup(params.tracking.experiment, root)
    tags = {**data_tags(root), "params_digest": params_digest(params), "git_commit": tracking.git_commit(root),
            "method": params.pretrain.method}
    enc, enc_new = register(root, root / outputs.ENCODER_PT, params.tracking.encoder_name, tags)
    clf_info = json.loads((root / outputs.CLASSIFIER_JSON).read_text())
    clf, clf_new = register(root, root / outputs.CLASSIFIER_PT, params.tracking.classifier_name,
                            {**tags, "test_accuracy": f"{clf_info['test_accuracy']:.4f}"})
    client = tracking.client()
    promoted = False
    if not has_alias(params.tracking.classifier_name, CHAMPION):
        client.set_registered_model_alias(params.tracking.classifier_name, CHAMPION, clf.version)
        promoted = True
    if not has_alias(params.tracking.encoder_name, CHAMPION):
        client.set_registered_model_alias(params.tracking.encoder_name, CHAMPION, enc.version)
    return {"classifier_version": int(clf.version), "classifier_new": clf_new, "encoder_version": int(enc.version),
            "encoder_new": enc_new, "champion_set": promoted}


def version_by_alias(name: str, alias: str):
    """The model version that holds `alias` (with its tags), or None when no version does."""
    try:
        return tracking.client().get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def set_alias(name: str, alias: str, version: int | str) -> None:
    tracking.client().set_registered_model_alias(name, alias, str(version))


def tag_version(name: str, version: int | str, tags: dict[str, str]) -> None:
    client = tracking.client()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))
