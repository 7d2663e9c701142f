"""Classify image files with a trained classifier: from the MLflow registry or local files.

Models:
- an MLflow URI (`models:/ssl-classifier@champion`, `models:/ssl-classifier/3`, `runs:/<id>/classifier`)
  or a local MLflow model folder (holding an MLmodel file): loaded with mlflow.pytorch.load_model
  (a torch.export program: nothing is unpickled). The input size and channels come from the
  model signature ([-1, C, S, S]); class names from the model's metadata ("classes"), else from
  models/classifier.json when it describes the same run, else the class indices.
- a local `models/classifier.pt` (state_dict) beside its `models/classifier.json` (architecture,
  image_size, in_channels, classes), loaded with weights_only=True.

Images are decoded exactly as in training (ssl_core.data.images: the data.resize policy and the
per-channel ranges of deep sources recorded with the model, converted to the model's channels). Files that cannot be used are reported, never fatal.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from ssl_core.data.images import decode_images
from ssl_core.data.listing import list_unlabeled
from ssl_pipeline.outputs import CLASSIFIER_JSON, CLASSIFIER_PT

DEFAULT_MODEL_NAME = "ssl-classifier"
CHUNK = 256   # images decoded and classified at a time (bounded memory for big folders)
COLUMNS = ("path", "class", "confidence", "error")


class Unfeedable(ValueError):
    """The input cannot be fed to this model (channels, or a label set it does not know)."""


@dataclass
class Predictor:
    model: Callable[[torch.Tensor], torch.Tensor]   # float [B, C, S, S] in [0, 1] -> logits [B, K]
    image_size: int
    channels: int
    classes: list[str]
    source: str
    name: str = ""   # "ssl-classifier v3" for a registered version, else the source
    resize: str = "crop"                                    # data.resize the model was trained with
    ranges: tuple[tuple[float, float], ...] | None = None   # per-channel ranges of deep sources (prepare's)

    def headline(self) -> str:
        """The first line predict prints: which model, what it takes, what it answers."""
        kind = {1: "grayscale", 3: "colour"}.get(self.channels, f"{self.channels}-channel")
        shown = ", ".join(self.classes[:12]) + (", ..." if len(self.classes) > 12 else "")
        who = self.name or self.source
        where = f" ({self.source})" if self.name and self.name != self.source else ""
        return (f"model: {who}{where}, {kind} {self.image_size}x{self.image_size} images, "
                f"{len(self.classes)} classes: {shown}")

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(images)


def default_model_uri(name: str = DEFAULT_MODEL_NAME) -> str:
    return f"models:/{name}@champion"


def _load_local_state_dict(path: Path) -> Predictor:
    from ssl_core.models import Classifier
    from ssl_core.models.spec import EncoderSpec, build_encoder

    if path.is_dir():
        path = path / "classifier.pt"
    spec_path = path.with_suffix(".json")
    if not path.exists() or not spec_path.exists():
        raise FileNotFoundError(f"a local classifier needs {path} and its spec {spec_path}")
    spec = json.loads(spec_path.read_text())
    model = Classifier(build_encoder(EncoderSpec.from_dict(spec)), int(spec["num_classes"]))
    model.load_state_dict(torch.load(path, weights_only=True, map_location="cpu"))
    model.eval()
    return Predictor(model, int(spec["image_size"]), int(spec["in_channels"]), [str(c) for c in spec["classes"]],
                     str(path), **_decoding(spec))


def _decoding(meta: dict) -> dict:
    """{resize policy, channel ranges} recorded beside a model; older models: centre crop, no ranges."""
    ranges = meta.get("channel_ranges")
    return {"resize": str(meta.get("resize") or "crop"),
            "ranges": tuple(tuple(float(v) for v in r) for r in ranges) if ranges else None}


def _classes_for(info, num_classes: int, root: Path) -> list[str]:
    meta = info.metadata or {}
    if meta.get("classes"):
        return [str(c) for c in meta["classes"]]
    from ssl_pipeline.tracking.models import logged_model

    local = root / CLASSIFIER_JSON
    if local.exists() and (logged_model(root, root / CLASSIFIER_PT) or {}).get("run_id") == info.run_id:
        spec = json.loads(local.read_text())
        if len(spec.get("classes", [])) == num_classes:
            return [str(c) for c in spec["classes"]]
    return [str(i) for i in range(num_classes)]


def _load_mlflow(uri: str, root: Path) -> Predictor:
    import mlflow
    from mlflow.exceptions import MlflowException

    from ssl_pipeline.tracking import runs as tracking
    from ssl_pipeline.tracking.model_loading import load_project_model

    mlflow.set_tracking_uri(tracking.tracking_uri())
    try:
        model, info = load_project_model(uri)
    except (MlflowException, OSError) as err:
        raise FileNotFoundError(f"cannot load the model {uri} from {tracking.tracking_uri()}: "
                                f"{str(err).splitlines()[0][:200]}") from None
    spec = info.signature.inputs.inputs[0] if info.signature is not None else None
    shape = tuple(getattr(spec, "shape", ()) or ())
    if len(shape) != 4 or shape[2] != shape[3]:
        raise ValueError(f"the model {uri} has no image input signature [-1, C, S, S] (found {shape or 'none'})")
    outputs = info.signature.outputs.inputs[0].shape if info.signature.outputs else (-1, 0)
    classes = _classes_for(info, int(outputs[-1]), root)
    return Predictor(model, int(shape[2]), int(shape[1]), classes, uri, **_decoding(info.metadata or {}))


def load_predictor(model: str | None = None, root: Path = Path(".")) -> Predictor:
    """Load `model` (see module docstring); None means the registry's champion classifier."""
    model = model or default_model_uri()
    path = Path(model)
    if "://" not in model and ":/" not in model and path.exists():
        if (path / "MLmodel").exists():
            return _load_mlflow(str(path.resolve()), root)
        return _load_local_state_dict(path)
    if model.endswith(".pt"):
        raise FileNotFoundError(f"model file {model} not found")
    predictor = _load_mlflow(model, root)
    predictor.name = registered_name(model)
    return predictor


def registered_name(uri: str) -> str:
    """'ssl-classifier v3' for models:/ssl-classifier@champion or models:/ssl-classifier/3; '' otherwise."""
    import re

    from mlflow.exceptions import MlflowException

    from ssl_pipeline.tracking import runs as tracking

    found = re.match(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[0-9]+)|@(?P<alias>[^/]+))$", uri)
    if not found:
        return ""
    if found["version"]:
        return f"{found['name']} v{found['version']}"
    try:
        return f"{found['name']} v{tracking.client().get_model_version_by_alias(found['name'], found['alias']).version}"
    except MlflowException:
        return ""


def check_feedable(predictor: Predictor, target: Path, labeled: bool = False, convert_to_gray: bool = False) -> None:
    """Refuse, in one sentence, inputs this model cannot answer for: colour images for a grayscale model,
    or (labeled: one subfolder per class) class folders that are not among its classes."""
    from ssl_core.data.images import has_colour
    from ssl_core.data.listing import list_labeled

    target = Path(target)
    who = predictor.name or predictor.source
    if labeled:
        if not target.is_dir():
            raise Unfeedable(f"--labeled needs a folder with one subfolder per class, and {target} is not a folder")
        _, classes, _ = list_labeled(target)
        unknown = [c for c in classes if c not in predictor.classes]
        if unknown:
            raise Unfeedable(f"{target} has class folder(s) {', '.join(unknown[:8])} that {who} does not know "
                             f"(its classes: {', '.join(predictor.classes[:12])}); use a model trained on this label set")
    paths = list_inputs(target)[1][:200]
    if predictor.channels == 1 and not convert_to_gray and has_colour(paths):
        raise Unfeedable(f"{who} takes grayscale (1-channel) images and {target} holds colour images, which it would "
                         f"still sort into its {len(predictor.classes)} classes; use a model trained on colour images "
                         "(--model) or pass --convert-to-gray if grayscale versions are what you mean")


def list_inputs(target: Path) -> tuple[Path, list[Path], list[tuple[str, str]]]:
    """(base folder, image files, [(path, reason)] left out) for a file or a folder (recursive)."""
    target = Path(target)
    if target.is_file():
        return target.parent, [target], []
    if not target.is_dir():
        raise FileNotFoundError(f"no such image or folder: {target}")
    files, rejected = list_unlabeled(target)
    return target, files, [(str(target / r.path), r.reason) for r in rejected]


def predict_files(predictor: Predictor, target: Path,
                  progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """One row per file: {path, class, confidence, error}; unusable files have an error instead."""
    base, files, skipped = list_inputs(target)
    rows = [{"path": p, "class": "", "confidence": "", "error": why} for p, why in skipped]
    for start in range(0, len(files), CHUNK):
        chunk = files[start:start + CHUNK]
        decoded = decode_images([(p, -1) for p in chunk], base, predictor.image_size, predictor.channels,
                                resize=predictor.resize, ranges=predictor.ranges)
        rows += [{"path": str(base / r.path), "class": "", "confidence": "", "error": r.reason}
                 for r in decoded.rejected]
        if len(decoded.paths):
            images = torch.from_numpy(decoded.images).float() / 255
            probs = torch.softmax(predictor.logits(images).float(), dim=1)
            conf, idx = probs.max(dim=1)
            for rel, k, c in zip(decoded.paths, idx.tolist(), conf.tolist()):
                name = predictor.classes[k] if k < len(predictor.classes) else str(k)
                rows.append({"path": str(base / rel), "class": name, "confidence": round(c, 4), "error": ""})
        if progress is not None:
            progress(min(start + CHUNK, len(files)), len(files))
    rows.sort(key=lambda r: r["path"])
    return rows


def write_csv(rows: Iterable[dict], out: Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
