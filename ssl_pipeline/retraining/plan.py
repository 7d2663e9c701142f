"""How the challenger gets its encoder, decided before the pipeline runs:

- cold: pretrain from random weights on the full schedule (no champion, another architecture, or
  retrain.warm_start off);
- warm: pretrain from the champion's method state (ssl_core.recipes.warm_start) for retrain.warm_epochs
  with its own warm-up + cosine schedule;
- reuse (retrain.drift_policy: gate): the data changed but the new images did not drift and nothing the
  pretraining depends on changed: keep the champion's encoder, re-run only fine-tuning and evaluation.

The plan is a list of --set overrides for one pipeline run (retrain.start_from is a fixed version, so
dvc.lock records exactly what the encoder started from).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from ssl_core.models.spec import EncoderSpec
from ssl_pipeline.config.schema import Params
from ssl_pipeline.retraining.drift import DriftReport

COLD, WARM, REUSE = "cold", "warm", "reuse"
PRETRAIN_DIGEST_TAG = "pretrain_digest"


@dataclass
class Plan:
    mode: str
    reason: str
    start_from: str = ""
    overrides: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def pretrain_digest(params: Params) -> str:
    """What the pretrained encoder depends on (seed, data, pretrain): equal digests, equal recipe."""
    what = {"seed": params.seed, "data": params.data.model_dump(mode="json"),
            "pretrain": params.pretrain.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def architecture_change(old: EncoderSpec, new: EncoderSpec) -> str:
    """'' when `old`'s weights fit `new`'s network (a ResNet takes any image size), else what differs."""
    keys = ["backbone", "in_channels", "small_stem", "stem_stride", "width"]
    if new.backbone.startswith("vit"):
        keys.append("image_size")   # position embeddings are sized for it
    diffs = [f"{k} {getattr(old, k)} -> {getattr(new, k)}" for k in keys if getattr(old, k) != getattr(new, k)]
    return ", ".join(diffs)


def choose(params: Params, champion_uri: str, champion_spec: EncoderSpec | None, champion_pretrain_digest: str,
           current_spec: EncoderSpec, drift: DriftReport | None) -> Plan:
    """champion_uri: models:/NAME/VERSION of the champion encoder ('' when there is none)."""
    r = params.retrain
    if not champion_uri or champion_spec is None:
        return Plan(COLD, "no champion encoder to start from: pretraining from random weights")
    changed = architecture_change(champion_spec, current_spec)
    if changed:
        return Plan(COLD, f"the encoder architecture changed ({changed}): the champion's weights do not fit; "
                          "pretraining from random weights")
    if r.drift_policy == "gate":
        same_recipe = champion_pretrain_digest == pretrain_digest(params)
        if drift is not None and drift.measured and not drift.drifted and same_recipe:
            return Plan(REUSE, f"drift gate: {drift.reason}; keeping the champion's encoder, re-running fine-tuning "
                               "and evaluation only", champion_uri,
                        [f"retrain.start_from={champion_uri}", "retrain.start_mode=reuse"])
        why = ("the pretraining params changed since the champion" if not same_recipe else
               drift.reason if drift is not None else "drift not measured")
        gate_note = f"drift gate: pretraining ({why}); "
    else:
        gate_note = ""
    if r.warm_start:
        return Plan(WARM, f"{gate_note}warm start from {champion_uri} for {r.warm_epochs} epoch(s) "
                          f"({r.warm_warmup_epochs} of warm-up)", champion_uri,
                    [f"retrain.start_from={champion_uri}", "retrain.start_mode=train",
                     f"pretrain.epochs={r.warm_epochs}", f"pretrain.warmup_epochs={r.warm_warmup_epochs}"])
    return Plan(COLD, f"{gate_note}retrain.warm_start is off: pretraining from random weights")


def current_spec(params: Params, root) -> EncoderSpec:
    """The encoder params.yaml will build on the workspace's data (channels "auto" decided as prepare does,
    from the images themselves), before prepare has run."""
    from pathlib import Path

    from ssl_core.data.images import detect_channels
    from ssl_core.data.listing import list_unlabeled
    from ssl_pipeline.recipes import encoder_spec

    channels = params.data.channels
    if channels == "auto":
        raw = Path(root) / params.data.raw_dir
        paths = [p for d in ("unlabeled", "labeled") if (raw / d).is_dir() for p in list_unlabeled(raw / d)[0][:200]]
        channels = detect_channels(paths) if paths else 1
    return encoder_spec(params, {"channels": int(channels), "image_size": params.data.image_size})


def plan_retraining(params: Params, root, champion_tags: dict[str, str] | None,
                    champion_encoder: str) -> tuple[Plan, DriftReport | None]:
    """Measure drift against the champion (when there is one) and choose cold / warm / reuse.
    champion_encoder: models:/NAME/VERSION of the champion encoder ('' when there is none)."""
    from ssl_pipeline.retraining import drift as drift_gate
    from ssl_pipeline.tracking.encoders import ModelNotFound, load_saved_method

    spec_now = current_spec(params, root)
    if champion_tags is None or not champion_encoder:
        return choose(params, "", None, "", spec_now, None), None
    try:
        saved, source = load_saved_method(champion_encoder)
    except ModelNotFound as err:
        return Plan(COLD, f"the champion encoder cannot be loaded ({err}): pretraining from random weights"), None
    champion_spec = EncoderSpec.from_dict(json.loads(saved["encoder"]))
    report = drift_gate.measure(params, root, champion_tags, saved, source.version)
    return choose(params, champion_encoder, champion_spec, champion_tags.get(PRETRAIN_DIGEST_TAG, ""), spec_now,
                  report), report
