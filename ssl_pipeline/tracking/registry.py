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


def input_tags(clf_info: dict) -> dict[str, str]:
    """What a classifier version can be fed and what it answers: its label set, channels, image size."""
    return {"classes": json.dumps([str(c) for c in clf_info["classes"]]), "num_classes": str(len(clf_info["classes"])),
            "channels": str(clf_info["in_channels"]), "image_size": str(clf_info["image_size"])}


def label_set(tags: dict[str, str]) -> list[str] | None:
    return json.loads(tags["classes"]) if "classes" in tags else None


def incomparable(champion_tags: dict[str, str], new_tags: dict[str, str]) -> str:
    """Why the champion cannot be scored on the new version's test split ('' when it can): another label
    set or other channels. Versions registered before these tags existed count as comparable."""
    old_classes, new_classes = label_set(champion_tags), label_set(new_tags)
    if old_classes is not None and new_classes is not None and old_classes != new_classes:
        return (f"its label set differs: the champion knows {len(old_classes)} classes ({_short(old_classes)}), "
                f"this data has {len(new_classes)} ({_short(new_classes)})")
    old_ch, new_ch = champion_tags.get("channels"), new_tags.get("channels")
    if old_ch and new_ch and old_ch != new_ch:
        return f"it takes {old_ch}-channel images and this data has {new_ch}-channel images"
    return ""


def _short(classes: list[str], limit: int = 8) -> str:
    return ", ".join(classes[:limit]) + (", ..." if len(classes) > limit else "")


def lineage_tags(root: Path) -> dict[str, str]:
    """Where the encoder started from (the pretrain run's warm_start.* tags), for both model versions."""
    run_id = (logged_model(root, root / outputs.ENCODER_PT) or {}).get("run_id", "")
    try:
        run_tags = tracking.client().get_run(run_id).data.tags if run_id else {}
    except MlflowException:
        run_tags = {}
    out = {f"lineage.{k[len('warm_start.'):]}": v for k, v in run_tags.items() if k.startswith("warm_start.")}
    out.setdefault("lineage.from", "")   # "": pretrained from random weights
    return out


def register_pipeline_models(params: Params, root: Path = Path("."), pretrain_digest: str = "") -> dict:
    """Register ssl-encoder and ssl-classifier from the latest stage outputs. The classifier becomes champion
    when there is none, or when the champion's label set or channels differ (it cannot be compared on this
    data's test split); otherwise `retrain` decides."""
    tracking.setup(params.tracking.experiment, root)
    clf_info = json.loads((root / outputs.CLASSIFIER_JSON).read_text())
    tags = {**data_tags(root), "params_digest": params_digest(params), "git_commit": tracking.git_commit(root),
            "method": params.pretrain.method, "pretrain_digest": pretrain_digest, **input_tags(clf_info),
            **lineage_tags(root)}
    enc, enc_new = register(root, root / outputs.ENCODER_PT, params.tracking.encoder_name, tags)
    clf, clf_new = register(root, root / outputs.CLASSIFIER_PT, params.tracking.classifier_name,
                             {**tags, "test_accuracy": f"{clf_info['test_accuracy']:.4f}",
                              "encoder_version": str(enc.version)})
    champion = version_by_alias(params.tracking.classifier_name, CHAMPION)
    reason = ""
    if champion is None:
        reason = "no champion before: the first registered classifier"
    elif champion.version != clf.version and incomparable(champion.tags, tags):
        reason = f"the champion v{champion.version} cannot be compared on this test split: {incomparable(champion.tags, tags)}"
        decision = {"champion.replaced_version": str(champion.version), "champion.reason": reason[:4000],
                    "champion.previous_classes": champion.tags.get("classes", ""), "champion.new_classes": tags["classes"]}
        tag_version(params.tracking.classifier_name, clf.version, decision)
        tag_version(params.tracking.classifier_name, champion.version, decision)
    if reason:
        set_alias(params.tracking.classifier_name, CHAMPION, clf.version)
        set_alias(params.tracking.encoder_name, CHAMPION, enc.version)
    elif not has_alias(params.tracking.encoder_name, CHAMPION):
        set_alias(params.tracking.encoder_name, CHAMPION, enc.version)
    return {"classifier_version": int(clf.version), "classifier_new": clf_new, "encoder_version": int(enc.version),
            "encoder_new": enc_new, "champion_set": bool(reason), "champion_reason": reason}


def publish_card(name: str, version: int | str, markdown: str) -> None:
    """The model card as the version's description and as model_card/<name>-v<version>.md in its run."""
    client = tracking.client()
    mv = client.get_model_version(name, str(version))
    client.log_text(mv.run_id, markdown, f"model_card/{name}-v{version}.md")
    if len(markdown) > DESCRIPTION_LIMIT:
        cut = markdown[:DESCRIPTION_LIMIT - 200].rsplit("\n", 1)[0]
        markdown = f"{cut}\n\n(cut here: the whole card is the artifact model_card/{name}-v{version}.md of run {mv.run_id})"
    client.update_model_version(name, str(version), description=markdown)


DESCRIPTION_LIMIT = 5000   # MLflow's SQL store keeps at most this many characters of a description


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
