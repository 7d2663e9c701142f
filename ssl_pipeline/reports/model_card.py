"""Model cards: what a registered version is, what it was trained on, how well it does, where it came
from and where it stops working, from measured facts only.

The card is rendered from the workspace's outputs of the run that registered the version (prepared
manifest and meta, the label-efficiency table, the quarantine and leakage reports) and the version's
tags (data md5s, digests, label set, lineage, drift, the retrain decision), and published as the
version's description and as an artifact of its run (tracking.registry.publish_card).
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from ssl_pipeline import outputs
from ssl_pipeline.config.schema import Params
from ssl_pipeline.tracking import registry


def _counts(root: Path, prepared_dir: str) -> list[str]:
    manifest = root / prepared_dir / "manifest.csv"
    if not manifest.exists():
        return ["(no prepared manifest in the workspace)"]
    frame = pd.read_csv(manifest, usecols=["split", "class"], keep_default_na=False)
    lines = ["| split | images | per class |", "|---|---|---|"]
    for split, group in frame.groupby("split", sort=False):
        per = group["class"].value_counts().sort_index()
        classes = ", ".join(f"{c}: {n}" for c, n in per.items() if c) or "unlabeled"
        lines.append(f"| {split} | {len(group)} | {classes if len(classes) < 300 else classes[:300] + ' ...'} |")
    return lines


def _efficiency(root: Path) -> tuple[list[str], str]:
    path = root / outputs.TABLE_CSV
    if not path.exists():
        return ["(no label-efficiency table in the workspace)"], ""
    table = pd.read_csv(path)
    lines = ["| init | protocol | labels | test accuracy, per seed | mean |", "|---|---|---|---|---|"]
    for (init, protocol, frac), group in table.groupby(["init", "protocol", "label_fraction"]):
        seeds = ", ".join(f"s{int(s)}: {a:.3f}" for s, a in zip(group["seed"], group["accuracy"]))
        lines.append(f"| {init} | {protocol} | {frac:.0%} | {seeds} | {group['accuracy'].mean():.3f} |")
    smallest = table[(table.init == "ssl") & (table.label_fraction == table.label_fraction.min())]
    low = (f"with {smallest.label_fraction.min():.0%} of the labels the SSL classifiers score "
           f"{smallest.accuracy.min():.3f}-{smallest.accuracy.max():.3f} on the test split") if len(smallest) else ""
    return lines, low


def _rows(root: Path, path: Path) -> int:
    return max(len(pd.read_csv(root / path)), 0) if (root / path).exists() else 0


def _lineage(tags: dict[str, str]) -> str:
    if not tags.get("lineage.from"):
        return "pretrained from random weights (cold start)"
    if tags.get("lineage.mode") == "reuse":
        return f"encoder reused from {tags['lineage.from']} without pretraining (drift gate: the new images did not drift)"
    return (f"warm start from {tags['lineage.from']} (loaded: {tags.get('lineage.loaded', '?')}; "
            f"{tags.get('lineage.reason', '')})")


def _drift(tags: dict[str, str]) -> str:
    if "drift.reason" not in tags:
        return "none: there was no champion before this version"
    return f"vs champion encoder v{tags.get('drift.vs_encoder_version', '?')}: {tags['drift.reason']}"


def card_markdown(params: Params, root: Path, name: str, version: int, tags: dict[str, str]) -> str:
    """The card of `name` v`version` from the workspace's outputs and the version's tags."""
    root = Path(root)
    classes = registry.label_set(tags) or []
    channels, size = tags.get("channels", "?"), tags.get("image_size", "?")
    kind = {"1": "grayscale (1-channel)", "3": "colour (3-channel)"}.get(channels, f"{channels}-channel")
    efficiency, low = _efficiency(root)
    clf = json.loads((root / outputs.CLASSIFIER_JSON).read_text()) if (root / outputs.CLASSIFIER_JSON).exists() else {}
    data = [f"| {k[5:-4]} | `{v}` |" for k, v in sorted(tags.items()) if k.startswith("data.") and k.endswith(".md5")]
    limits = [f"- Inputs: {kind} images at {size}x{size} px; others are resized (shorter side) and centre-cropped "
              "to that, and `ssl-pipeline predict` refuses colour images for a grayscale model.",
              f"- It answers only in its {len(classes)} classes; an image of anything else still gets one of them."]
    if low:
        limits.append(f"- Few labels: {low}.")
    quarantined, leaks = _rows(root, outputs.QUARANTINE_CSV), _rows(root, outputs.LEAKAGE_CSV)
    limits.append(f"- Data quality at training time: {quarantined} file(s) quarantined or converted, "
                  f"{leaks} train/test duplicate(s) (reports/leakage.csv).")
    p = params.pretrain
    pretrain_json = root / outputs.PRETRAIN_METRICS_JSON
    epochs = json.loads(pretrain_json.read_text()).get("epochs", p.epochs) if pretrain_json.exists() else p.epochs
    lines = [f"# Model card: {name} v{version}", "",
             f"Written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Git commit `{tags.get('git_commit', '?')}`; "
             f"encoder: {params.tracking.encoder_name} v{tags.get('encoder_version', version)}.", "",
             "## Intended use", "",
             f"Classify {kind} images into {len(classes)} classes ({', '.join(classes[:20])}"
             f"{', ...' if len(classes) > 20 else ''}), as the images of the pool below; the encoder's embeddings "
             "(`ssl-pipeline embed`) serve search, near-duplicate and labelling decisions on the same kind of images.", "",
             "## Data (DVC versions)", "", "| dataset | md5 |", "|---|---|", *data, "", *_counts(root, params.data.prepared_dir), "",
             "## Method", "",
             f"{p.method} on {p.backbone} (width {p.width}, stem stride {p.stem_stride}), {epochs} "
             f"pretraining epochs at batch {p.batch_size}; classifier: {clf.get('protocol', '?')} at "
             f"{clf.get('label_fraction', 1):.0%} labels. Params digest `{tags.get('params_digest', '?')}`, "
             f"pretraining digest `{tags.get('pretrain_digest', '?')}`.", "",
             "## Label efficiency (test split)", "", *efficiency, "",
             "## Drift vs its predecessor", "", _drift(tags), "",
             "## Lineage", "", _lineage(tags) + ".", ""]
    if tags.get("champion.reason"):
        lines += [f"Champion: {tags['champion.reason']}.", ""]
    if tags.get("retrain.decision"):
        lines += [f"Retrain decision: {tags['retrain.decision']} (champion v{tags.get('retrain.champion_version')} "
                  f"{tags.get('retrain.champion_accuracy')}, challenger v{tags.get('retrain.challenger_version')} "
                  f"{tags.get('retrain.challenger_accuracy')}, margin {tags.get('retrain.margin')}).", ""]
    lines += ["## Known limitations (measured)", "", *limits]
    return "\n".join(lines) + "\n"


def publish_cards(params: Params, root: Path, classifier_version: int, encoder_version: int) -> str:
    """Render and publish the card on the classifier version and its encoder version; returns it."""
    t = params.tracking
    tags = dict(registry.tracking.client().get_model_version(t.classifier_name, str(classifier_version)).tags)
    text = card_markdown(params, root, t.classifier_name, classifier_version, tags)
    registry.publish_card(t.classifier_name, classifier_version, text)
    registry.publish_card(t.encoder_name, encoder_version, text.replace(
        f"# Model card: {t.classifier_name} v{classifier_version}",
        f"# Model card: {t.encoder_name} v{encoder_version} (encoder of {t.classifier_name} v{classifier_version})", 1))
    return text
