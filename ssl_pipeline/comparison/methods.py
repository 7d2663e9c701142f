"""The method comparison behind flows/compare.py: every method in compare.methods pretrained on the
same prepared data with the same budget, each evaluated as the evaluate stage does (kNN, linear probe
and fine-tuning at every label fraction and seed, accuracy on the test split), next to two baselines
of each architecture used: `random` (kNN + linear probe on a randomly initialised encoder) and
`scratch` (supervised training from random init with finetune's budget). With pretrain.init set,
every method starts from those weights ("weights + SSL") and a third baseline `init` evaluates them
as they are ("weights, no SSL": kNN, linear probe and fine-tuning); `random` stays the floor.

A method compared here is built, trained and evaluated by the same recipes and evaluation grid as
the pipeline's stages (ssl_pipeline/recipes.py -> ssl_core/recipes.py, ssl_core/evaluation/grid.py).
One MLflow run "compare" is the parent; every method and baseline is a nested child run.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import mlflow
import torch

from ssl_core.data.cache import SPLITS, Split, load_fractions, load_meta, load_split
from ssl_core.evaluation.grid import EvalData, fit_rows, knn_rows, scratch_encoder
from ssl_core.evaluation.protocols import effective_rank, extract_features
from ssl_core.methods import get_method_class
from ssl_core.models.init import init_backbone
from ssl_core.models.spec import build_encoder
from ssl_core.recipes import PretrainData, build_method, check_init, epoch_metrics, pretrain_method
from ssl_core.training.checkpoint import Checkpointer
from ssl_core.training.runtime import setup_torch
from ssl_pipeline.comparison.results import (load_finished, log_rows, result_fingerprint, reuse_finished,
                                             save_finished)
from ssl_pipeline.config.schema import Params, compare_backbone, validate
from ssl_pipeline.errors import recipe_errors_as_stage_errors
from ssl_pipeline.outputs import COMPARE_CHECKPOINT_DIR
from ssl_pipeline.progress import log
from ssl_pipeline.recipes import checkpoint_fingerprint, encoder_spec, finetune_recipe, pretrain_recipe
from ssl_pipeline.tracking import runs as tracking
from ssl_pipeline.ingest.weights import InitSource, is_none
from ssl_pipeline.tracking.datasets import dataset_infos
from ssl_pipeline.tracking.init_weights import log_init, resolve_init

BASELINES = ("random", "scratch")
INIT_BASELINE = "init"
OK = "ok"
Note = Callable[[str], None]


@dataclass
class Entry:
    """One method of the plan: its backbone, and why it is skipped (None: it runs)."""
    method: str
    backbone: str
    skip_reason: str | None = None


@dataclass
class Data:
    meta: dict
    unlabeled: Split
    train: Split
    val: Split
    test: Split
    fractions: dict
    infos: dict   # dataset name -> {path, DVC md5, manifest}: the MLflow dataset inputs

    def for_eval(self) -> EvalData:
        return EvalData(self.train, self.val, self.test, self.fractions, self.meta["num_classes"])


def budget(params: Params, method: str | None = None) -> int:
    """Pretraining epochs of `method`: compare.epochs when set (one budget for all, e.g. a quick run),
    else compare.method_epochs[method], else pretrain.epochs."""
    c = params.compare
    return c.epochs or c.method_epochs.get(method) or params.pretrain.epochs


def budget_text(params: Params) -> str:
    """'30 epochs at batch 64 (mae: 100 epochs, batch 256)': the pretraining budget the report title
    and the parent run's tag show, with each method's own epochs and batch size."""
    c = params.compare
    own = []
    for m in c.method_list():
        parts = [f"{c.method_epochs[m]} epochs"] if not c.epochs and m in c.method_epochs else []
        parts += [f"batch {c.method_batch_size[m]}"] if m in c.method_batch_size else []
        own += [f"{m}: {', '.join(parts)}"] if parts else []
    text = f"{budget(params)} epochs at batch {params.pretrain.batch_size}"
    return text + (f" ({'; '.join(own)})" if own else "")


def method_knobs(params: Params, method: str) -> dict:
    """compare.method_params[method]; else pretrain.method_params for the pipeline's own method; else {}."""
    if method in params.compare.method_params:
        return dict(params.compare.method_params[method])
    return dict(params.pretrain.method_params) if method == params.pretrain.method else {}


def params_for(params: Params, method: str) -> Params:
    """The params the pipeline would run with pretrain.method = `method` under the comparison's budget."""
    raw = params.model_dump(mode="json")
    raw["pretrain"].update(method=method, backbone=compare_backbone(params, method), epochs=budget(params, method),
                           method_params=method_knobs(params, method),
                           batch_size=params.compare.method_batch_size.get(method, params.pretrain.batch_size))
    return validate(raw)


def baselines(params: Params) -> tuple[str, ...]:
    """The baselines of this comparison: `init` first when pretrain.init is set, then random and scratch."""
    return ((INIT_BASELINE,) if not is_none(params.pretrain.init) else ()) + BASELINES


def plan(params: Params, meta: dict) -> list[Entry]:
    """Every listed method with its backbone; colour-only methods are skipped on grayscale data, and
    with pretrain.init, methods on another backbone than the weights'."""
    entries = []
    for name in params.compare.method_list():
        reason = None
        backbone = compare_backbone(params, name)
        if get_method_class(name).requires_color and meta["channels"] != 3:
            reason = f"skipped: needs colour images (the prepared data has {meta['channels']} channel)"
        elif not is_none(params.pretrain.init) and backbone != params.pretrain.backbone:
            reason = (f"skipped: pretrain.init holds {params.pretrain.backbone} weights and {name} trains "
                      f"{backbone} (compare.backbones)")
        entries.append(Entry(name, backbone, reason))
    return entries


def baseline_backbones(params: Params, entries: list[Entry]) -> list[str]:
    """One random and one scratch baseline per architecture that a compared method uses."""
    used = [e.backbone for e in entries if e.skip_reason is None]
    return sorted(set(used)) or [params.pretrain.backbone]


def status_row(method: str, backbone: str, status: str) -> dict:
    """The one report row of a method that produced no accuracies (skipped or failed)."""
    return {"method": method, "backbone": backbone, "protocol": "", "label_fraction": None, "seed": None,
            "accuracy": None, "pretrain_seconds": None, "status": status}


def load_data(params: Params, root: Path) -> Data:
    d = params.data
    prepared = root / d.prepared_dir
    return Data(load_meta(prepared), *(load_split(prepared, s) for s in SPLITS),
                load_fractions(prepared), dataset_infos(root, d.raw_dir, d.prepared_dir))


@contextlib.contextmanager
def parent_run(params: Params, root: Path, overrides: list[str] | None, flow_run_id: str) -> Iterator[str]:
    """The parent MLflow run "compare" (created through the client, so child runs can start in any
    thread); its id is exported as SSL_PIPELINE_PARENT_RUN_ID for the children and the prepare stage."""
    exp_id = tracking.setup(params.tracking.experiment, root)
    saved = {k: os.environ.get(k) for k in (tracking.PARENT_ENV, tracking.FLOW_RUN_ENV, tracking.OVERRIDES_ENV)}
    os.environ[tracking.FLOW_RUN_ENV] = flow_run_id
    if overrides:
        os.environ[tracking.OVERRIDES_ENV] = json.dumps(overrides)
    client = tracking.client()
    tags = {**tracking.run_tags("compare", root), "compare.methods": ",".join(params.compare.method_list()),
            "compare.epochs": budget_text(params)}
    run = client.create_run(exp_id, run_name="compare", tags=tags)
    status = "FAILED"
    try:
        tracking.log_params(params, run.info.run_id)
        os.environ[tracking.PARENT_ENV] = run.info.run_id
        yield run.info.run_id
        status = "FINISHED"
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
        client.set_terminated(run.info.run_id, status)


def child_env() -> dict[str, str]:
    """The tracking context a stage subprocess (DVC) needs to nest its run under the parent."""
    keys = (tracking.PARENT_ENV, tracking.FLOW_RUN_ENV, tracking.OVERRIDES_ENV)
    return {"MLFLOW_TRACKING_URI": tracking.absolute_tracking_uri(),   # the stage may run in a run workspace
            **{k: os.environ[k] for k in keys if os.environ.get(k)}}


def run_method(params: Params, root: Path, method: str, note: Note = log.info) -> list[dict]:
    """Pretrain `method` (resuming from its checkpoint after a failed attempt), evaluate it, return its rows.
    A method an interrupted comparison already finished, with the same params and data, is not redone."""
    mp = params_for(params, method)
    data = load_data(mp, root)
    init = resolve_init(mp.pretrain.init, root)
    fingerprint = result_fingerprint(mp, root, data.meta, method, init=init)
    with tracking.stage_run(f"compare-{method}", mp, data.infos, root) as run:
        mlflow.set_tags({"compare.method": method, "compare.backbone": mp.pretrain.backbone})
        finished = load_finished(root, method, fingerprint)
        if finished is not None:
            return reuse_finished(method, finished, note)
        device = setup_torch(mp.pretrain.device)
        checkpointer = Checkpointer(root / COMPARE_CHECKPOINT_DIR / method,
                                    checkpoint_fingerprint(mp, root, data.meta, init and init.sha256),
                                    every_steps=mp.pretrain.checkpoint_every)
        with recipe_errors_as_stage_errors():
            encoder, seconds, rank = pretrain_for_comparison(mp, data, device, checkpointer, run.info.run_id, note,
                                                             init)
        mlflow.log_metrics({"pretrain_seconds": seconds, "feature_rank": rank})
        recipe = finetune_recipe(mp)
        rows = knn_rows(method, encoder.to(device), data.for_eval(), mp.evaluate.knn_k, device, init="ssl")
        rows += fit_rows(recipe, method, list(recipe.protocols), lambda seed: encoder, data.for_eval(), device,
                         _prefixed(note))
        rows = finish_rows(rows, mp.pretrain.backbone, seconds, rank)
        save_finished(root, method, fingerprint, rows, run.info.run_id)
    checkpointer.clear()   # only once everything is evaluated and logged: a failed attempt resumes
    return rows


def _prefixed(note: Note) -> Note:
    return lambda line: note(f"compare {line}")


def pretrain_for_comparison(mp: Params, data: Data, device: torch.device, checkpointer: Checkpointer, run_id: str,
                            note: Note, init: InitSource | None = None) -> tuple[torch.nn.Module, float, float]:
    """The pretrain stage's recipe (from `init`'s weights when given), kNN monitor and per-epoch MLflow
    metrics. Returns (encoder, seconds, the val features' effective rank after the last epoch)."""
    recipe = pretrain_recipe(mp, data.meta, init.path if init else "")
    if init is not None:
        log_init(init, check_init(recipe, init.source).notes)
    resume = checkpointer.resume_info()
    tracking.link_resumed_run(resume and resume.get("run_id"), resume["global_step"] if resume else 0)
    for done in (resume["history"] if resume else []):   # the failed attempt's epochs: the whole curve here
        mlflow.log_metrics(epoch_metrics(done), step=done["epoch"])
    checkpointer.metadata = {"run_id": run_id}
    ssl = build_method(recipe)
    mlflow.log_params({f"method_params.{k}": str(v)[:6000] for k, v in ssl.describe().items() if k != "method"})
    pretrain_data = PretrainData(data.unlabeled, data.train, data.val, data.meta["num_classes"])
    ssl, history = pretrain_method(recipe, ssl, pretrain_data, device, checkpointer,
                                   on_epoch=lambda e, m: mlflow.log_metrics(epoch_metrics(m), step=e),
                                   say_epoch=lambda line: note(f"compare {recipe.method}: {line}"),
                                   say_step=lambda line: log.info("compare %s: %s", recipe.method, line))
    return ssl.backbone.eval(), float(sum(h["seconds"] for h in history)), history[-1]["feature_rank"]


def finish_rows(rows: list[dict], backbone: str, seconds: float, feature_rank: float | None) -> list[dict]:
    """Add backbone, pretraining time, feature rank and status; log each accuracy to the active (child) run."""
    out = [{"method": r["method"], "backbone": backbone, "protocol": r["protocol"], "label_fraction": r["label_fraction"],
            "seed": r["seed"], "accuracy": r["accuracy"], "pretrain_seconds": seconds, "feature_rank": feature_rank,
            "status": OK} for r in rows]
    log_rows(out)
    return out


def baseline_rows(params: Params, kind: str, backbone: str, data: Data, device: torch.device,
                  note: Note, init: InitSource | None = None) -> tuple[list[dict], float | None]:
    """One architecture's baseline rows and (for `random` and `init`) its features' effective rank."""
    spec = dataclasses.replace(encoder_spec(params, data.meta), backbone=backbone, method=kind)
    recipe = finetune_recipe(params)
    if kind == INIT_BASELINE:   # the weights as they are: every protocol, like a method's encoder
        encoder = build_encoder(spec)
        init_backbone(encoder, init.path)
        encoder = encoder.to(device)
        rows = knn_rows(kind, encoder, data.for_eval(), params.evaluate.knn_k, device, init="init")
        rows += fit_rows(recipe, kind, list(recipe.protocols), lambda seed: encoder, data.for_eval(), device,
                         _prefixed(note))
        return rows, effective_rank(extract_features(encoder, data.val.images, device))
    if kind == "random":
        torch.manual_seed(params.seed)   # the evaluate stage's random encoder
        encoder = build_encoder(spec).to(device)
        rows = knn_rows(kind, encoder, data.for_eval(), params.evaluate.knn_k, device, init="scratch")
        rows += fit_rows(recipe, kind, ["linear"], lambda seed: encoder, data.for_eval(), device, _prefixed(note))
        return rows, effective_rank(extract_features(encoder, data.val.images, device))
    rows = fit_rows(recipe, kind, ["finetune"], lambda seed: scratch_encoder(spec, seed), data.for_eval(), device,
                    _prefixed(note), pretrained=False)
    return rows, None


def run_baseline(params: Params, root: Path, kind: str, backbones: list[str], note: Note = log.info) -> list[dict]:
    """`random`: kNN + linear probe on a randomly initialised encoder; `scratch`: the encoder trained
    from random init on the labels with finetune's budget; `init`: pretrain.init's weights without SSL
    (every protocol, on pretrain.backbone only). One per backbone, one child run."""
    if kind not in baselines(params):
        raise ValueError(f"unknown baseline {kind!r}; allowed: {', '.join(baselines(params))}")
    data = load_data(params, root)
    init = resolve_init(params.pretrain.init, root)
    if kind == INIT_BASELINE:
        backbones = [params.pretrain.backbone]
    fingerprint = result_fingerprint(params, root, data.meta, kind, backbones, init)
    rows: list[dict] = []
    with tracking.stage_run(f"compare-{kind}", params, data.infos, root) as run:
        mlflow.set_tags({"compare.method": kind, "compare.backbone": ",".join(backbones)})
        finished = load_finished(root, kind, fingerprint)
        if finished is not None:
            return reuse_finished(kind, finished, note)
        device = setup_torch(params.pretrain.device)
        if kind == INIT_BASELINE:
            log_init(init, check_init(pretrain_recipe(params, data.meta, init.path), init.source).notes)
        for backbone in backbones:
            found, rank = baseline_rows(params, kind, backbone, data, device, note, init)
            rows += finish_rows(found, backbone, 0.0, rank)
        save_finished(root, kind, fingerprint, rows, run.info.run_id)
    return rows


def failure_status(state) -> str:
    """'failed: <Error>: <first line>' from a failed Prefect task state."""
    err = state.result(raise_on_failure=False)
    if isinstance(err, BaseException):
        text = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0]}"
    else:
        text = state.message or state.name
    return f"failed: {text[:300]}"
