"""params.yaml schema: every knob of the pipeline, validated before any work starts.

A bad value raises ConfigError with one line per problem, each naming the dotted key and what is
allowed. Every number has a range, no float may be NaN or infinite, the method's knobs and the
augmentation recipes are checked by the core's own dataclasses, and the retrain schedule is parsed
by Prefect's own cron and timezone validation: what passes here runs.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ssl_core.models.backbones import BACKBONE_NAMES
from ssl_pipeline.config.knobs import (ALL_METHODS, MAX_BATCH, MAX_STEPS, compare_backbone,  # noqa: F401
                                       compare_problems, method_problems)
from ssl_pipeline.config.overrides import apply_overrides
from ssl_pipeline.errors import ConfigError

PARAMS_FILE = "params.yaml"


_OPTIONAL_KEYS = {"method_params", "augment"}


MAX_SEED = 2**31 - 1          # fits every generator seeded from it (torch, numpy, derived per-step seeds)
MAX_LR = 100.0
MAX_WEIGHT_DECAY = 10.0
MAX_KNN_K = 1000
MAX_RETRY_DELAY_S = 86400
# Names that end up in MLflow/Prefect names and models:/NAME@ALIAS URIs, and folders inside the workspace.
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
NAME_RULE = "1-100 letters, digits, '_', '.' or '-', starting with a letter or digit"
WORKSPACE_PATH = r"^(?!/)(?!.*(^|/)\.\.?(/|$))[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"
PATH_RULE = "a relative folder inside the workspace (letters, digits, '_', '.', '-' and '/'; no '..')"
PORT = r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
HOST_PORT = rf"^$|^[A-Za-z0-9_.-]+:{PORT}$"
DASK_ADDRESS = rf"^$|^((tcp|tls|ucx|ws|wss)://)?[A-Za-z0-9_.-]+:{PORT}$"   # what distributed.Client connects to


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _every_key_present(cls, data: Any) -> Any:
        # Defaults document the knobs; params.yaml must still spell every one out.
        if isinstance(data, dict):
            missing = [k for k in cls.model_fields if k not in data and k not in _OPTIONAL_KEYS]
            if missing:
                raise ValueError(f"missing required key(s): {', '.join(missing)}")
        return data


RAW_DATASETS = ("unlabeled", "labeled")   # the dataset folders under data.raw_dir
NO_INIT = "none"                           # pretrain.init: a random encoder


def init_is_none(source: str) -> bool:
    return source.strip().lower() in ("", NO_INIT)


def _matches(pattern: str, rule: str):
    """A field validator: the value matches `pattern`, else one sentence saying `rule`."""
    def check(cls, value: str) -> str:
        if not re.match(pattern, value):
            raise ValueError(f"must be {rule}, got {value!r}")
        return value
    return classmethod(check)


class DataParams(_Section):
    raw_dir: str = "data/raw"
    prepared_dir: str = "data/prepared"
    _paths_ok = field_validator("raw_dir", "prepared_dir")(_matches(WORKSPACE_PATH, PATH_RULE))
    image_size: int = Field(28, ge=8, le=512)
    resize: Literal["crop", "pad", "squash"] = "crop"   # how a non-square image becomes image_size x image_size
    channels: Literal["auto"] | int = "auto"            # auto, or 1..16 (checked below)
    max_megapixels: float = Field(200.0, ge=1, le=10_000)   # larger files are quarantined (memory bound)
    range_percentiles: tuple[float, float] = (0.1, 99.9)  # deep (16-bit, float) sources: per-channel range
    val_fraction: float = Field(0.1, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    label_fractions: list[float] = Field(default_factory=lambda: [0.01, 0.1, 1.0], min_length=1, max_length=20)
    small_fraction_seeds: int = Field(3, ge=1, le=20)
    max_unlabeled: int = Field(0, ge=0, le=10**10)
    pool_includes_labeled: bool = True

    @field_validator("channels")
    @classmethod
    def _channel_count(cls, value: Any) -> Any:
        if value != "auto" and not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 16):
            raise ValueError(f"channels is auto or a count from 1 to 16, got {value!r}")
        return value

    @field_validator("range_percentiles")
    @classmethod
    def _percentile_pair(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] < value[1] <= 100:
            raise ValueError(f"range_percentiles is [low, high] with 0 <= low < high <= 100, got {list(value)}")
        return value

    @field_validator("label_fractions")
    @classmethod
    def _fractions_in_range(cls, value: list[float]) -> list[float]:
        for f in value:
            if not 0 < f <= 1:
                raise ValueError(f"every label fraction must be in (0, 1], got {f}")
        return sorted(set(value))


class PrepareParams(_Section):
    """How `prepare` runs (not what it makes: outputs are identical for every value here)."""
    workers: int = Field(0, ge=0, le=1024)       # decode processes; 0 = every core of this machine
    dask_address: str = ""                       # tcp://scheduler:8786 = decode on that Dask cluster instead
    _dask_ok = field_validator("dask_address")(_matches(DASK_ADDRESS, "\"\" or a scheduler address such as "
                                                               "tcp://scheduler:8786 (tcp, tls, ucx, ws or wss)"))
    shard_mb: int = Field(64, ge=1, le=4096)     # size of a new cache shard


class PretrainParams(_Section):
    method: str = "simclr"
    backbone: Literal[BACKBONE_NAMES] = "resnet_narrow"
    small_stem: bool = True
    stem_stride: Literal[1, 2] = 2
    width: int = Field(16, ge=4, le=256)
    epochs: int = Field(50, ge=1, le=MAX_STEPS)
    batch_size: int = Field(32, ge=2, le=MAX_BATCH)
    optimizer: Literal["sgd", "adamw", "lars"] = "adamw"
    lr: float = Field(0.002, gt=0, le=MAX_LR)
    weight_decay: float = Field(1e-4, ge=0, le=MAX_WEIGHT_DECAY)
    warmup_epochs: int = Field(2, ge=0, le=MAX_STEPS)
    init: str = Field(NO_INIT, min_length=1)   # none | state_dict file | MLflow model URI | torchvision:<weights name>
    method_params: dict[str, Any] = Field(default_factory=dict)
    augment: dict[str, Any] = Field(default_factory=lambda: {"hflip_p": 0.0})   # digits are not mirror-symmetric
    knn_k: int = Field(20, ge=1, le=MAX_KNN_K)
    knn_every: int = Field(1, ge=0, le=MAX_STEPS)  # epochs between kNN monitor runs; 0 = after the last epoch only
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"   # auto: bf16 autocast on CUDA, fp32 on CPU
    channels_last: Literal["auto", "on", "off"] = "auto"  # auto: on for CUDA; "on" is refused on a CPU
    compile: bool = False            # torch.compile the backbone (CUDA only; minutes of compiling first)
    compile_augment: Literal["auto", "on", "off"] = "auto"  # torch.compile the view-making ops; auto: on for CUDA
    cache_on_device: Literal["auto", "on", "off"] = "auto"  # auto: CUDA, when under 1/4 of free GPU memory
    log_every: int = Field(10, ge=1, le=MAX_STEPS)
    checkpoint_every: int = Field(50, ge=0, le=MAX_STEPS)
    # Multi-process training through torchrun (ssl_core/launch.py): 1 x 1 trains in the stage's process.
    nproc_per_node: int = Field(1, ge=1, le=64)
    nnodes: int = Field(1, ge=1, le=1024)
    rdzv_endpoint: str = ""          # HOST:PORT of the c10d rendezvous; "" = standalone (one node)
    _endpoint_ok = field_validator("rdzv_endpoint")(_matches(HOST_PORT, "HOST:PORT (port 1-65535) or \"\""))
    sync_batchnorm: bool = False     # BatchNorm statistics over the global batch (CUDA only)

    @field_validator("init")
    @classmethod
    def _init_source(cls, value: str) -> str:
        if value.strip().rstrip("/") in ("torchvision:", "models:", "runs:"):
            raise ValueError(f"pretrain.init: {value!r} names no weights; e.g. torchvision:ResNet18_Weights.IMAGENET1K_V1 "
                             "or models:/ssl-encoder@champion")
        return value.strip()

    @model_validator(mode="after")
    def _distributed_layout(self) -> "PretrainParams":
        world = self.nproc_per_node * self.nnodes
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("pretrain.rdzv_endpoint: nnodes > 1 needs HOST:PORT of a rendezvous every node reaches")
        if self.batch_size % world:
            raise ValueError(f"pretrain.batch_size: {self.batch_size} is the global batch and must divide evenly "
                             f"over nproc_per_node x nnodes = {world} processes")
        if self.device == "cpu":   # the core refuses them on a CPU (ssl_core.recipes.train_config): say so now
            if self.compile:
                raise ValueError("pretrain.compile: true is for CUDA only, but pretrain.device is cpu")
            if self.channels_last == "on":
                raise ValueError("pretrain.channels_last: 'on' is for CUDA only, but pretrain.device is cpu")
        return self


class FinetuneParams(_Section):
    protocols: list[Literal["linear", "finetune"]] = Field(default_factory=lambda: ["linear", "finetune"], min_length=1)
    batch_size: int = Field(64, ge=2, le=MAX_BATCH)   # BatchNorm needs 2 samples; smaller batches are skipped
    linear_epochs: int = Field(100, ge=1, le=MAX_STEPS)
    linear_lr: float = Field(0.01, gt=0, le=MAX_LR)
    finetune_epochs: int = Field(20, ge=1, le=MAX_STEPS)
    finetune_lr: float = Field(0.001, gt=0, le=MAX_LR)
    weight_decay: float = Field(1e-4, ge=0, le=MAX_WEIGHT_DECAY)
    min_steps: int = Field(300, ge=0, le=MAX_STEPS)
    head_init: Literal["probe", "random"] = "random"   # fine-tuning's head: a linear probe's (LP-FT) or random
    augment: dict[str, Any] = Field(default_factory=lambda: {"crop_scale": [0.7, 1.0], "hflip_p": 0.0, "jitter_p": 0.0,
                                                             "gray_p": 0.0})


class EvaluateParams(_Section):
    knn_k: int = Field(20, ge=1, le=MAX_KNN_K)


class TrackingParams(_Section):
    experiment: str = "ssl-pipeline"
    classifier_name: str = "ssl-classifier"
    encoder_name: str = "ssl-encoder"
    _names_ok = field_validator("experiment", "classifier_name", "encoder_name")(_matches(NAME, NAME_RULE))


class FlowParams(_Section):
    retries: int = Field(2, ge=0, le=10)
    retry_delay_seconds: list[int] = Field(default_factory=lambda: [10, 60], min_length=1, max_length=10)

    @field_validator("retry_delay_seconds")
    @classmethod
    def _delays_in_range(cls, value: list[int]) -> list[int]:
        for delay in value:
            if not 0 <= delay <= MAX_RETRY_DELAY_S:
                raise ValueError(f"every delay must be between 0 and {MAX_RETRY_DELAY_S} seconds, got {delay}")
        return value


START_FROM_PATTERN = r"^(|models:/[^/@]+/[0-9]+|runs:/[^/]+/[^/]+)$"


class RetrainParams(_Section):
    margin: float = Field(0.005, ge=-1, le=1)   # challenger must beat the champion by this much (<0: may be worse)
    cron: str = Field("0 3 * * *", min_length=1)  # `ssl-pipeline serve` schedule (nightly)
    timezone: str = "UTC"
    deployment_name: str = "nightly-retrain"
    concurrency_tag: str = "ssl-retrain"
    # Warm start and the drift gate (flows/retrain.py, ssl_pipeline/retraining/plan.py)
    warm_start: bool = False
    warm_epochs: int = Field(10, ge=1, le=MAX_STEPS)
    warm_warmup_epochs: int = Field(1, ge=0, le=MAX_STEPS)
    drift_policy: Literal["always", "gate"] = "always"
    drift_threshold: float = Field(0.02, ge=0, le=2)
    drift_alpha: float = Field(0.01, gt=0, le=1)
    drift_sample: int = Field(1000, ge=10, le=1_000_000)
    drift_permutations: int = Field(500, ge=19, le=100_000)
    # What the pretrain stage starts from; `retrain` sets these for one run (a user may too)
    start_from: str = ""
    start_mode: Literal["train", "reuse"] = "train"
    _names_ok = field_validator("deployment_name", "concurrency_tag")(_matches(NAME, NAME_RULE))

    @field_validator("cron")
    @classmethod
    def _cron_parses(cls, value: str) -> str:
        from prefect.client.schemas.schedules import CronSchedule   # what the served deployment runs on

        try:
            CronSchedule(cron=value)
            return value
        except ValueError:   # pydantic's ValidationError is a ValueError
            raise ValueError(f"not a cron schedule Prefect accepts: {value!r} (five fields, minute hour day "
                             "month weekday, e.g. \"0 3 * * *\" for 03:00 every day)") from None

    @field_validator("timezone")
    @classmethod
    def _timezone_exists(cls, value: str) -> str:
        from zoneinfo import available_timezones

        if value not in available_timezones() or "localtime" in value:
            raise ValueError(f"unknown timezone {value!r}; use an IANA name such as UTC or Europe/Paris")
        return value

    @field_validator("start_from")
    @classmethod
    def _a_fixed_version(cls, value: str) -> str:
        import re

        if not re.match(START_FROM_PATTERN, value):
            raise ValueError(f"expected \"\" or models:/NAME/VERSION (a version number, not an alias, so a rerun "
                             f"starts from the same weights) or runs:/RUN_ID/encoder, got {value!r}")
        return value

    @model_validator(mode="after")
    def _reuse_needs_a_start(self) -> "RetrainParams":
        if self.start_mode == "reuse" and not self.start_from:
            raise ValueError("retrain.start_mode: reuse keeps the encoder of retrain.start_from, which is empty; "
                             "set retrain.start_from to models:/NAME/VERSION or start_mode to train")
        if self.warm_warmup_epochs >= self.warm_epochs and self.warm_warmup_epochs:
            raise ValueError(f"retrain.warm_warmup_epochs: {self.warm_warmup_epochs} must be below "
                             f"retrain.warm_epochs ({self.warm_epochs}), or the schedule never decays")
        return self


class CompareParams(_Section):
    """`ssl-pipeline compare` (flows/compare.py): several methods on the same data and budget."""
    methods: Literal["all"] | list[str] = ALL_METHODS   # "all": every registered method
    epochs: int = Field(0, ge=0, le=MAX_STEPS)                  # pretraining epochs per method; 0 = pretrain.epochs
    method_epochs: dict[str, int] = Field(default_factory=lambda: {"mae": 100, "byol": 150})  # when epochs is 0
    method_batch_size: dict[str, int] = Field(default_factory=lambda: {"mae": 256, "moco": 64, "byol": 64})
    backbones: dict[str, str] = Field(default_factory=dict)     # per-method backbone; see compare_backbone()
    method_params: dict[str, dict[str, Any]] = Field(default_factory=dict)   # per-method knobs (else its defaults)

    @field_validator("methods")
    @classmethod
    def _some_methods(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError("list at least one method, or `all` for every registered method")
        return value

    def method_list(self) -> list[str]:
        """The methods to compare, in order ("all": every registered method, by name)."""
        from ssl_core.methods import method_names

        return method_names() if self.methods == ALL_METHODS else list(self.methods)


class Params(_Section):
    seed: int = Field(0, ge=0, le=MAX_SEED)
    data: DataParams = Field(default_factory=DataParams)
    prepare: PrepareParams = Field(default_factory=PrepareParams)
    pretrain: PretrainParams = Field(default_factory=PretrainParams)
    finetune: FinetuneParams = Field(default_factory=FinetuneParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    tracking: TrackingParams = Field(default_factory=TrackingParams)
    flow: FlowParams = Field(default_factory=FlowParams)
    retrain: RetrainParams = Field(default_factory=RetrainParams)
    compare: CompareParams = Field(default_factory=CompareParams)

    @model_validator(mode="after")
    def _method_knobs_are_known(self) -> "Params":
        problems: list[str] = []
        for check in (method_problems, compare_problems):
            try:
                problems += check(self)
            except ValueError as err:
                problems.append(str(err))
        if not init_is_none(self.pretrain.init) and self.retrain.start_from:
            problems.append(f"pretrain.init ({self.pretrain.init}) and retrain.start_from ({self.retrain.start_from}) "
                            "both say where pretraining starts: set one of them")
        if problems:
            raise ValueError("\n".join(problems))   # one line per problem, each naming its key
        return self

    def flat(self) -> dict[str, Any]:
        """Dotted key -> value, for MLflow params."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict) and value:
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = json.dumps(value) if isinstance(value, (list, dict)) else value

        walk("", self.model_dump(mode="json"))
        return out


def _section_keys(loc: tuple) -> list[str]:
    """The keys of the params section at `loc` (e.g. ("pretrain",) -> epochs, lr, ...)."""
    model: type[BaseModel] = Params
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


def _format_error(err: ValidationError) -> str:
    """One line per problem: `params.yaml: <dotted key>: <what is wrong and what is allowed>`."""
    lines = []
    for problem in err.errors():
        key = ".".join(str(p) for p in problem["loc"])
        msg = problem["msg"]
        if problem["type"] == "missing":
            msg = "missing required key"
        elif problem["type"] == "extra_forbidden":
            msg = f"unknown key (typo?); allowed: {', '.join(_section_keys(problem['loc'][:-1]))}"
        elif "literal" in problem["type"]:
            msg = f"{msg} (got {problem.get('input')!r})"
        elif problem["type"] == "finite_number":
            msg = f"must be a finite number, got {problem.get('input')!r}"
        for line in msg.removeprefix("Value error, ").splitlines():   # a model check may list several
            lines.append(f"params.yaml: {key}: {line}" if key and not line.startswith(key) else f"params.yaml: {line}")
    return "\n".join(lines)


def validate(raw: dict[str, Any]) -> Params:
    try:
        return Params.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err)) from None


def load_params(path: str | Path = PARAMS_FILE, overrides: list[str] | None = None) -> Params:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: not found; run from the project root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return validate(apply_overrides(raw, overrides or []))
