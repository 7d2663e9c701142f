"""Property over the whole params schema: any value of any key is either rejected by `config --check`
(one line per problem, naming the key) or runs one tiny step of what that key drives without error.

Hypothesis picks a key (every field of every section, every knob of every method's `method_params`,
of both augmentation recipes and of the comparison's per-method settings) and a value from a pool
that mixes sensible, boundary and hostile values (NaN, infinities, huge and negative numbers, wrong
types, strings). An accepted value then runs through the same code the pipeline runs with it:
`prepare` on a tiny image folder, one pretraining step of the built method plus the kNN monitor,
one step of every fine-tuning protocol, the kNN evaluation, the MLflow names, the Prefect task
options and the retrain deployment with its schedule. Knobs that need hardware this machine lacks
(CUDA, several processes) are checked up to the point where the hardware is asked for.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
from pathlib import Path
from unittest import mock

import pytest
import torch
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from fixtures_repo import PROJECT_ROOT
from ssl_core.augment import AugmentConfig
from ssl_core.methods import get_method_class, method_names
from ssl_pipeline.config.schema import Params, validate
from ssl_pipeline.errors import ConfigError, StageError
from workspace import TINY_PARAMS, write_tiny_images

pytestmark = pytest.mark.slow
CPU = torch.device("cpu")
HARDWARE = {"pretrain.nproc_per_node", "pretrain.nnodes", "pretrain.rdzv_endpoint"}   # need more processes/machines


def base_params() -> dict:
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    for key, value in {**TINY_PARAMS, "pretrain.device": "cpu", "data.label_fractions": [0.5, 1.0],
                       "compare.methods": ["simclr"]}.items():
        set_key(raw, key, value)
    return raw


def set_key(raw: dict, key: str, value) -> None:
    node = raw
    *parents, last = key.split(".")
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[last] = value


def schema_keys() -> list[tuple[str, str]]:
    """(method the key needs, dotted key) for every knob the schema accepts."""
    keys = [("simclr", "seed")]
    for section, field in Params.model_fields.items():
        if section == "seed":
            continue
        keys += [("simclr", f"{section}.{name}") for name in field.annotation.model_fields]
    augment = [f.name for f in dataclasses.fields(AugmentConfig)]
    keys += [("simclr", f"{where}.augment.{knob}") for where in ("pretrain", "finetune") for knob in augment]
    for method in method_names():
        knobs = [f.name for f in dataclasses.fields(get_method_class(method).Params)]
        keys += [(method, f"pretrain.method_params.{knob}") for knob in knobs]
        keys += [(method, f"compare.method_params.{method}.{knob}") for knob in knobs]
        keys += [(method, f"compare.{what}.{method}") for what in ("method_epochs", "method_batch_size", "backbones")]
    return keys


KEYS = schema_keys()


def group(key: str) -> str:
    """Keys drawn group by group, so the many method knobs do not crowd out the rest."""
    parts = key.split(".")
    return parts[1] if parts[0] in ("pretrain", "compare") and parts[1] in ("method_params", "augment") else parts[0]


GROUPS = {g: [k for k in KEYS if group(k[1]) == g] for g in sorted({group(k) for _, k in KEYS})}
WORDS = ["auto", "on", "off", "cpu", "cuda", "fp32", "bf16", "linear", "finetune", "probe", "random", "v2", "v3",
         "image", "tiles", "all", "simclr", "moco", "vit_tiny", "resnet18", "resnet_narrow", "lars", "sgd",
         "0 3 * * *", "*/5 * * * *", "@daily", "61 3 * * *", "UTC", "Europe/Paris", "Mars/Base", "data/raw2",
         "../escape", "/abs", "a b", "x:y", "node1:29500", "", "nan", "1e309"]
NUMBERS = [0, 1, 2, 3, -1, 7, 16, 255, 4096, 2**31 - 1, 2**31, 2**63, 10**20, 0.0, 0.5, 1.0, 1.5, -0.5, 1e-12,
           1e12, math.nan, math.inf, -math.inf]
VALUES = st.one_of(
    st.sampled_from(NUMBERS), st.sampled_from(WORDS), st.booleans(), st.none(),
    st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.one_of(st.sampled_from(NUMBERS), st.floats(0, 1), st.sampled_from(WORDS[:6])), max_size=3),
    st.dictionaries(st.sampled_from(["hflip_p", "temperature", "x"]), st.sampled_from(NUMBERS), max_size=2),
)


def current_value(method: str, key: str):
    """The value the key has in the tiny params, or the knob's dataclass default."""
    node = base_params()
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            break
        node = node[part]
    else:
        return node
    knob = key.split(".")[-1]
    for dc in (get_method_class(method).Params, AugmentConfig):
        if knob in {f.name for f in dataclasses.fields(dc)}:
            return getattr(dc(), knob)
    return None


def nearby(value) -> st.SearchStrategy:
    """Values around `value`: scaled, shifted, signs flipped, at float edges; element-wise for pairs."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return st.sampled_from(WORDS + [True, False, 0, 1])
    if isinstance(value, (int, float)):
        scaled = [value * k for k in (0, 1e-3, 0.5, 2, 10, 1e3, 1e6, -1)] + [value + 1, value - 1]
        edges = [1e-300, 1 - 1e-12, 5e-324, 2**31 - 1, 2**53 + 1]
        out = scaled + edges + ([int(v) for v in scaled if math.isfinite(v)] if isinstance(value, int) else [])
        return st.sampled_from(out)
    if isinstance(value, (list, tuple)) and value:
        return st.tuples(*(nearby(v) for v in value)).map(list)
    return VALUES


def values_for(method: str, key: str) -> st.SearchStrategy:
    """Three draws in four near the key's own value (most random values are rejected at once)."""
    near = nearby(current_value(method, key))
    return st.integers(0, 3).flatmap(lambda i: VALUES if i == 0 else near)


def configure(method: str, key: str, value) -> dict:
    raw = base_params()
    if key.startswith("pretrain.method_params."):
        raw["pretrain"]["method"] = method
    if key.startswith(("pretrain.method_params.", "compare.")) and method != "simclr":
        raw["compare"]["methods"] = [method]
    if get_method_class(method).backbone_family == "vit" and key.startswith("pretrain.method_params."):
        raw["pretrain"]["backbone"] = "vit_tiny"
    if get_method_class(method).requires_color:
        raw["data"]["channels"] = 3
    set_key(raw, key, value)
    return raw


class _OneStepDone(Exception):
    pass


class OneStep:
    """A checkpointer stand-in that stops the real training loop after its first optimizer step."""

    def restore(self, method, optimizer, scheduler):
        return None

    def due(self, state, epoch_end: bool) -> bool:
        raise _OneStepDone

    def save(self, *args):
        raise AssertionError("never reached")


def prepared(params: Params, root: Path) -> dict:
    from ssl_pipeline.ingest.prepare import prepare

    raw = root / params.data.raw_dir
    if not raw.exists():
        write_tiny_images(raw, classes=3, color=params.data.channels == 3)
    prepare(params, root)
    return json_meta(root / params.data.prepared_dir)


def json_meta(prepared_dir: Path) -> dict:
    from ssl_core.data.cache import load_meta

    return load_meta(prepared_dir)


def pretrain_one_step(params: Params, root: Path, meta: dict) -> None:
    from ssl_core.recipes import PretrainData, build_method, check_method_fits_data, monitor_knn, pretrain_method
    from ssl_pipeline.recipes import pretrain_recipe

    from ssl_pipeline.errors import recipe_errors_as_stage_errors

    recipe = pretrain_recipe(params, meta)
    with recipe_errors_as_stage_errors():   # as the stage does: what the data decides (e.g. channels)
        check_method_fits_data(recipe)
    method = build_method(recipe)
    data = PretrainData.load(root / params.data.prepared_dir, meta["num_classes"])
    with pytest.raises(_OneStepDone):
        pretrain_method(recipe, method, data, CPU, checkpointer=OneStep())
    assert all(torch.isfinite(p).all() for p in method.parameters()), "one step made the weights non-finite"
    monitor_knn(recipe, params.pretrain.epochs, {}, method.eval(), data, CPU)


def finetune_one_step(params: Params, root: Path, meta: dict) -> None:
    from ssl_core.data.cache import load_fractions, load_split
    from ssl_core.evaluation import protocols
    from ssl_core.evaluation.grid import EvalData, fit_cell, knn_rows, scratch_encoder
    from ssl_pipeline.recipes import encoder_spec, finetune_recipe

    recipe = finetune_recipe(params)
    prepared_dir = root / params.data.prepared_dir
    train, val, test = (load_split(prepared_dir, s) for s in ("train", "val", "test"))
    data = EvalData(train, val, test, load_fractions(prepared_dir), meta["num_classes"])
    spec = encoder_spec(params, meta)
    budget = protocols._steps
    with mock.patch.object(protocols, "_steps", lambda n, cfg: (budget(n, cfg)[0], 1)):   # the budget: one step
        for protocol in recipe.protocols:
            fit_cell(recipe, protocol, scratch_encoder(spec, 0), train, val, meta["num_classes"], CPU, 0)
        fit_cell(recipe, "finetune", scratch_encoder(spec, 0), train, val, meta["num_classes"], CPU, 0, pretrained=False)
    knn_rows(params.pretrain.method, scratch_encoder(spec, 0), data, params.evaluate.knn_k, CPU, "ssl")


def orchestration_step(params: Params, root: Path, mlflow_store: str) -> None:
    from mlflow.tracking import MlflowClient
    from prefect import task

    from flows.retrain import build_deployment
    from ssl_pipeline.retraining.decision import decide

    client = MlflowClient(mlflow_store)
    t = params.tracking
    if client.get_experiment_by_name(t.experiment) is None:
        client.create_experiment(t.experiment)
    for name in (t.classifier_name, t.encoder_name):
        if not _registered(client, name):
            client.create_registered_model(name)
    task(lambda: None).with_options(retries=params.flow.retries, retry_delay_seconds=params.flow.retry_delay_seconds)
    build_deployment(params, root)
    decide(0.5, 0.6, params.retrain.margin)


def _registered(client, name: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
        return True
    except MlflowException:
        return False


def run_one_step(params: Params, key: str, method: str, root: Path, mlflow_store: str) -> None:
    section = key.split(".")[0]
    if section in ("tracking", "flow", "retrain"):
        orchestration_step(params, root, mlflow_store)
        return
    meta = prepared(params, root)
    if section == "compare":
        from ssl_pipeline.comparison import methods as comparison

        entries = comparison.plan(params, meta)
        if any(e.method == method and e.skip_reason is None for e in entries):
            pretrain_one_step(comparison.params_for(params, method), root, meta)
        return
    if section in ("seed", "data", "pretrain"):
        pretrain_one_step(params, root, meta)
    if section in ("seed", "data", "finetune", "evaluate"):
        finetune_one_step(params, root, meta)


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@settings(max_examples=int(os.environ.get("SSL_PIPELINE_PROPERTY_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_value_is_rejected_at_check_time_or_runs_one_step(data, tmp_path_factory, mlflow_store):
    method, key = data.draw(st.sampled_from(sorted(GROUPS)).flatmap(lambda g: st.sampled_from(GROUPS[g])), label="key")
    value = data.draw(values_for(method, key), label="value")
    raw = configure(method, key, copy.deepcopy(value))
    try:
        params = validate(raw)
    except ConfigError as err:
        event("rejected at check time")
        lines = str(err).splitlines()
        assert lines and all(line.startswith("params.yaml: ") for line in lines), str(err)
        assert key.split(".")[-1] in str(err) or key in str(err), f"{key}={value!r}: {err}"
        return
    if key in HARDWARE and (params.pretrain.nproc_per_node > 1 or params.pretrain.nnodes > 1):
        return   # accepted; training it needs torchrun on several processes (tests/pipeline/stages cover that)
    event(f"accepted: {key.split('.')[0]}")
    root = tmp_path_factory.mktemp("step")
    torch.manual_seed(0)
    try:
        run_one_step(params, key, method, root, mlflow_store)
    except StageError as err:   # data-dependent: what a tiny data set cannot give (e.g. images per class)
        assert "\n" not in str(err) and key.split(".")[-1] in str(err), f"{key}={value!r}: {err}"


def test_the_keys_cover_every_field_of_the_schema():
    keys = {key for _, key in KEYS}
    assert {"seed", "pretrain.lr", "retrain.cron", "retrain.timezone", "finetune.augment.hflip_p",
            "pretrain.method_params.temperature", "pretrain.method_params.mask_ratio",
            "compare.method_params.moco.queue_size"} <= keys
    assert len(keys) > 150
