"""Scheduled retraining: refresh the data, skip when nothing changed, otherwise challenger vs champion.

The flow (flows/retrain.py) strings these together. The rules:
- "Changed" means the DVC md5 of a dataset or the params digest differs from the state recorded on
  the current champion (`retrain.state.*` tags after a retrain decided, else its registration tags).
  Recording the state on the champion after a "kept" decision too means a rejected challenger is not
  re-evaluated every night.
- Champion and challenger are scored on the SAME current test split (data/prepared's test rows), each
  loaded from the registry by alias, so the comparison never mixes test sets.
- The challenger takes `champion` only if challenger_acc >= champion_acc + retrain.margin.
- One retrain per workspace at a time: an fcntl lock (this module) plus a Prefect tag concurrency
  limit (flows/retrain.py).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import yaml

from ssl_core.fsutil import LockBusy, exclusive_lock

from ssl_pipeline.versioning import workspace as dvcops
from ssl_pipeline.tracking import registry
from ssl_pipeline.config.schema import Params

CHALLENGER = "challenger"
FIRST, PROMOTED, KEPT, SAME, NOTHING = "first champion", "promoted", "kept", "same model", "nothing changed"
STATE_PREFIX = "retrain.state."
_TOLERANCE = 1e-9   # accuracies are ratios of ints: don't let 0.7-0.6 < 0.1 flip a decision


class RetrainBusy(RuntimeError):
    """Another retrain holds this workspace."""


class UncommittedData(RuntimeError):
    """A dataset in the workspace differs from its .dvc pin: its md5 would be a lie."""


# ---------------------------------------------------------------- the workspace lock

def lock_path(root: Path) -> Path:
    # Outside the workspace (like dvcops.lock_path): nothing for git or DVC to see.
    key = hashlib.sha1(str(dvcops.dvc_root(Path(root))).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"ssl-pipeline-retrain-{key}.lock"


@contextlib.contextmanager
def retrain_lock(root: Path, wait: float | None = 0.0) -> Iterator[None]:
    """Hold the workspace's retrain lock. wait: seconds to wait for a running retrain (0: reject at
    once, None: as long as it takes). Not re-entrant: a second retrain in the same process is also
    rejected (each call opens its own file description, so flock tells threads apart)."""
    where = dvcops.dvc_root(Path(root))
    me = f"pid {os.getpid()} on {socket.gethostname()}, since {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S} UTC"

    def say_waiting(holder: str) -> None:
        print(f"waiting for the retrain running in {where} ({holder}) to finish ...", file=sys.stderr, flush=True)

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(exclusive_lock(lock_path(root), timeout=wait, holder=me, on_wait=say_waiting,
                                               poll_s=0.2))
        except LockBusy as busy:
            hint = "wait for it to finish" + (" (or pass --wait SECONDS to queue behind it)" if not wait else "")
            raise RetrainBusy(f"another retrain is running in {where} ({busy.holder}); "
                              f"not starting a second one: {hint}") from None
        yield


# ---------------------------------------------------------------- data refresh

def imported_datasets(root: Path, raw_dir: str) -> list[str]:
    """The .dvc files under raw_dir made by `dvc import`/`dvc import-url` (they carry `deps`)."""
    found = []
    for dvc_file in sorted((Path(root) / raw_dir).glob("*.dvc")):
        if (yaml.safe_load(dvc_file.read_text()) or {}).get("deps"):
            found.append(str(dvc_file.relative_to(root)))
    return found


def refresh_data(root: Path, raw_dir: str, note: Callable[[str], None] = print) -> dict[str, list[str]]:
    """`dvc update` imported datasets (their source may have moved on), `dvc pull` pinned ones missing
    from the workspace; refuse a dataset changed in place but not `dvc add`-ed (its md5 would lie)."""
    root = Path(root)
    imported = imported_datasets(root, raw_dir)
    if imported:
        dvcops.dvc("update", *imported, cwd=root)
        note(f"dvc update: {', '.join(imported)}")
    datasets = {p: d for p, d in dvcops.status(root, raw_dir)["datasets"].items() if d["tracked"]}
    missing = [p for p, d in datasets.items() if not d["present"]]
    # Present but its files are not in the DVC cache (fresh clone, `dvc gc`): DVC cannot tell whether
    # it was edited until the cache has the pinned version, so fetch that first (best effort).
    uncached = [p for p, d in datasets.items() if d["present"] and d["state"] == "not in cache"]
    if missing:
        try:
            dvcops.pull(root, [f"{p}.dvc" for p in missing])
        except dvcops.DvcError as err:
            raise dvcops.MissingDataError(f"{', '.join(missing)} missing and `dvc pull` could not fetch it: {err}") from err
        note(f"dvc pull: {', '.join(missing)}")
    else:
        note("dvc pull: nothing to pull (every dataset is in the workspace)")
    if uncached:
        try:
            dvcops.dvc("fetch", *[f"{p}.dvc" for p in uncached], cwd=root)
            datasets.update(dvcops.status(root, raw_dir)["datasets"])
        except dvcops.DvcError as err:
            note(f"dvc fetch of {', '.join(uncached)} failed, using the workspace copy: {str(err).splitlines()[-1]}")
    changed = [p for p in datasets if datasets[p]["state"] == "modified"]
    if changed:
        raise UncommittedData(f"{', '.join(changed)} changed in the workspace but the .dvc pin did not: "
                              f"`dvc add {' '.join(changed)}` to version the new data, or `dvc checkout` to drop it")
    return {"updated": imported, "pulled": missing}


# ---------------------------------------------------------------- what changed

def current_state(params: Params, root: Path) -> dict[str, str]:
    """{"params_digest": ..., "data.<dataset>.md5": ...}: the keys registration tags a version with."""
    return {"params_digest": registry.params_digest(params), **registry.data_tags(root)}


def recorded_state(tags: dict[str, str]) -> dict[str, str]:
    """The state a version was last decided on; a version no retrain has seen: its training state."""
    if any(k.startswith(STATE_PREFIX) for k in tags):
        return {k[len(STATE_PREFIX):]: v for k, v in tags.items() if k.startswith(STATE_PREFIX)}
    return {k: v for k, v in tags.items() if k == "params_digest" or (k.startswith("data.") and k.endswith(".md5"))}


def training_data(tags: dict[str, str]) -> dict[str, str]:
    """The data md5s a version was trained on (registration tags)."""
    return {k: v for k, v in tags.items() if k.startswith("data.") and k.endswith(".md5")}


# ---------------------------------------------------------------- champion vs challenger

def score(model_uri: str, root: Path, prepared_dir: str, batch: int = 512, image_size: int | None = None) -> float:
    """Test accuracy of a registered model on the workspace's current test split.

    image_size: the model's input size when it differs from the split's: each batch is resized to it
    (bilinear, antialiased), so a model trained at another resolution is scored on the same images."""
    import torch
    import torch.nn.functional as F

    from ssl_core.data.cache import load_split
    from ssl_pipeline.tracking.model_loading import load_project_model

    test = load_split(Path(root) / prepared_dir, "test")
    model, _ = load_project_model(model_uri)

    def inputs(i: int) -> torch.Tensor:
        x = test.images[i:i + batch].float() / 255
        if image_size and image_size != x.shape[-1]:
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
        return x

    with torch.no_grad():
        pred = torch.cat([model(inputs(i)).argmax(1) for i in range(0, len(test), batch)])
    return float((pred == test.labels).float().mean())


def decide(champion_acc: float | None, challenger_acc: float, margin: float) -> str:
    if champion_acc is None:   # the champion cannot score today's test split at all
        return PROMOTED
    return PROMOTED if challenger_acc - champion_acc >= margin - _TOLERANCE else KEPT


@dataclass
class Outcome:
    decision: str
    margin: float
    state: dict[str, str]
    champion_version: int | None = None       # before the decision
    challenger_version: int | None = None
    champion_accuracy: float | None = None
    challenger_accuracy: float | None = None
    champion_data: dict[str, str] = field(default_factory=dict)
    challenger_data: dict[str, str] = field(default_factory=dict)
    note: str = ""
    pipeline_run_id: str = ""
    retrain_run_id: str = ""
    plan: dict = field(default_factory=dict)     # retraining.plan.Plan.as_dict(): cold / warm / reuse and why
    drift: dict = field(default_factory=dict)    # retraining.drift.DriftReport.as_dict()
    drift_tags: dict = field(default_factory=dict)

    @property
    def new_champion(self) -> int | None:
        return self.challenger_version if self.decision in (FIRST, PROMOTED) else self.champion_version

    def as_dict(self) -> dict:
        return {**asdict(self), "new_champion": self.new_champion}


def compare(params: Params, root: Path, registered: dict, champion_before: dict | None,
            state: dict[str, str]) -> Outcome:
    """Alias the new classifier (and its encoder) `challenger`, score both on the current test split,
    move `champion` (classifier and encoder together) when the challenger wins by the margin.

    champion_before: {"version", "tags"} of the champion before this run; None when there was none."""
    t = params.tracking
    clf_version, enc_version = registered["classifier_version"], registered["encoder_version"]
    registry.set_alias(t.classifier_name, CHALLENGER, clf_version)
    registry.set_alias(t.encoder_name, CHALLENGER, enc_version)
    challenger = registry.version_by_alias(t.classifier_name, CHALLENGER)
    out = Outcome(decision=FIRST, margin=params.retrain.margin, state=state, challenger_version=int(clf_version),
                  challenger_data=training_data(challenger.tags))
    out.challenger_accuracy = score(f"models:/{t.classifier_name}@{CHALLENGER}", root, params.data.prepared_dir)
    if champion_before is None:
        # registry.register_pipeline_models made the first version champion already.
        out.note = "no champion before this run: the first registered classifier became champion"
        out.champion_version = int(registry.version_by_alias(t.classifier_name, registry.CHAMPION).version)
        out.champion_accuracy, out.champion_data = out.challenger_accuracy, out.challenger_data
        return out
    out.champion_version = int(champion_before["version"])
    out.champion_data = training_data(champion_before["tags"])
    if out.champion_version == out.challenger_version:
        out.decision, out.champion_accuracy = SAME, out.challenger_accuracy
        out.note = "the pipeline produced the champion itself again (no stage changed its model)"
        return out
    why_not = registry.incomparable(champion_before["tags"], dict(challenger.tags))
    if why_not:   # registration made the challenger champion already; the decision says why
        out.note = f"the champion v{out.champion_version} cannot be compared on this test split: {why_not}"
    else:
        try:
            size = champion_before["tags"].get("image_size")
            out.champion_accuracy = score(f"models:/{t.classifier_name}/{out.champion_version}", root,
                                          params.data.prepared_dir, image_size=int(size) if size else None)
        except Exception as err:  # noqa: BLE001 - a champion that still cannot run on this split cannot compete
            out.note = f"the champion v{out.champion_version} cannot score the current test split ({_in_words(err)})"
    out.decision = decide(out.champion_accuracy, out.challenger_accuracy, out.margin)
    if out.decision == PROMOTED:
        registry.set_alias(t.classifier_name, registry.CHAMPION, clf_version)
        registry.set_alias(t.encoder_name, registry.CHAMPION, enc_version)
    return out


def _in_words(err: Exception) -> str:
    """torch.export's guard messages ("Guard failed: x.size()[1] == 1") as what they mean."""
    import re

    text = str(err).splitlines()[0][:200]
    guard = re.search(r"x\.size\(\)\[(\d)\] == (\d+)", text)
    if guard:
        what = {"1": "channels", "2": "image height", "3": "image width"}.get(guard[1], f"dimension {guard[1]}")
        return f"it expects {what} {guard[2]} and the test split's images differ"
    return text


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def version_tags(out: Outcome) -> dict[str, str]:
    """What goes on both model versions: decision, both scores, both data versions, the state."""
    tags = {"retrain.decision": out.decision, "retrain.margin": str(out.margin),
            "retrain.champion_version": str(out.champion_version), "retrain.challenger_version": str(out.challenger_version),
            "retrain.champion_accuracy": _fmt(out.champion_accuracy),
            "retrain.challenger_accuracy": _fmt(out.challenger_accuracy),
            "retrain.run_id": out.retrain_run_id, "retrain.decided_at": datetime.now(timezone.utc).isoformat()}
    tags.update({f"retrain.champion.{k}": v for k, v in out.champion_data.items()})
    tags.update({f"retrain.challenger.{k}": v for k, v in out.challenger_data.items()})
    tags.update({f"{STATE_PREFIX}{k}": v for k, v in out.state.items()})
    if out.plan:
        tags.update({"retrain.plan": out.plan["mode"], "retrain.plan_reason": out.plan["reason"][:4000]})
    return tags


def record_on_versions(params: Params, out: Outcome) -> None:
    if out.decision == NOTHING:
        return
    tags = version_tags(out)
    for version in {out.champion_version, out.challenger_version} - {None}:
        registry.tag_version(params.tracking.classifier_name, version, tags)
    if out.drift_tags and out.challenger_version is not None and out.challenger_version != out.champion_version:
        registry.tag_version(params.tracking.classifier_name, out.challenger_version, out.drift_tags)


def markdown(out: Outcome) -> str:
    lines = [f"# Retrain: {out.decision}", ""]
    if out.decision == NOTHING:
        lines += [f"Champion v{out.champion_version} was decided on exactly these data versions and params; "
                  "nothing was trained.", ""]
    else:
        lines += ["| | version | test accuracy (current split) |", "|---|---|---|",
                  f"| champion (before) | v{out.champion_version} | {_fmt(out.champion_accuracy)} |",
                  f"| challenger | v{out.challenger_version} | {_fmt(out.challenger_accuracy)} |", "",
                  f"Rule: promote if challenger >= champion + {out.margin:g}. Champion now: v{out.new_champion}.", ""]
    if out.note:
        lines += [out.note, ""]
    if out.plan:
        lines += [f"Encoder: **{out.plan['mode']}** ({out.plan['reason']}).", ""]
    if out.drift:
        stats = out.drift.get("stats") or {}
        figures = (f" MMD^2 {stats['mmd2']:.4f}, p = {stats['p_value']:.4f}, {out.drift['n_new']} new image(s)."
                   if stats else "")
        lines += [f"Drift vs champion encoder v{out.drift.get('vs_version')}: {out.drift['reason']}.{figures}", ""]
    lines += ["| data | md5 now | champion trained on | challenger trained on |", "|---|---|---|---|"]
    for key in sorted(k for k in out.state if k.startswith("data.")):
        lines.append(f"| {key[5:-4]} | {out.state[key]} | {out.champion_data.get(key, '-')} | "
                     f"{out.challenger_data.get(key, '-')} |")
    lines.append(f"\nparams digest: {out.state.get('params_digest', '-')}")
    return "\n".join(lines)


def log_run(params: Params, root: Path, out: Outcome, text: str, flow_run_id: str = "") -> str:
    """The retrain's own MLflow run (stage tag "retrain"): decision, scores, versions, data, report."""
    import mlflow

    from ssl_pipeline.tracking import runs as tracking

    tracking.setup(params.tracking.experiment, root)
    tags = {**tracking.run_tags("retrain", root), "retrain.decision": out.decision, "prefect_flow_run_id": flow_run_id,
            "retrain.pipeline_run_id": out.pipeline_run_id, **out.state}
    with mlflow.start_run(run_name="retrain", tags=tags) as run:
        mlflow.log_params({"retrain.decision": out.decision, "retrain.margin": out.margin,
                           "champion_version": out.champion_version, "challenger_version": out.challenger_version,
                           "new_champion_version": out.new_champion})
        mlflow.log_metrics({f"{who}_accuracy": acc for who, acc in
                            (("champion", out.champion_accuracy), ("challenger", out.challenger_accuracy)) if acc is not None})
        if out.plan:
            mlflow.set_tags({"retrain.plan": out.plan["mode"], "retrain.plan_reason": out.plan["reason"][:4000]})
        if out.drift_tags:
            mlflow.set_tags(out.drift_tags)
            stats = out.drift.get("stats") or {}
            mlflow.log_metrics({f"drift_{k}": v for k, v in stats.items() if k in ("mmd2", "p_value")})
        mlflow.log_text(text, "retrain.md")
    return run.info.run_id
