"""params.yaml schema: every knob of the pipeline, validated before any work starts.

A bad value raises ConfigError with one message naming the dotted key and what is allowed.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ssl_core.models.backbones import BACKBONE_NAMES
from ssl_pipeline.config.overrides import apply_overrides
from ssl_pipeline.errors import ConfigError

PARAMS_FILE = "params.yaml"


_OPTIONAL_KEYS = {"method_params", "augment"}


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _every_key_present(cls, data: Any) -> Any:
        # Defaults document the knobs; params.yaml must still spell every one out.
        if isinstance(data, dict):
            missing = [k for k in cls.model_fields if k not in data and k not in _OPTIONAL_KEYS]
            if missing:
                raise ValueError(f"missing required key(s): {', '.join(missing)}")
        return data


class DataParams(_Section):
    raw_dir: str = "data/raw"
    prepared_dir: str = "data/prepared"
    image_size: int = Field(28, ge=8, le=512)
    resize: Literal["crop", "pad", "squash"] = "crop"   # how a non-square image becomes image_size x image_size
    channels: Literal["auto"] | int = "auto"            # auto, or 1..16 (checked below)
    max_megapixels: float = Field(200.0, ge=1, le=10_000)   # larger files are quarantined (memory bound)
    range_percentiles: tuple[float, float] = (0.1, 99.9)  # deep (16-bit, float) sources: per-channel range
    val_fraction: float = Field(0.1, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    label_fractions: list[float] = Field(default_factory=lambda: [0.01, 0.1, 1.0], min_length=1)
    small_fraction_seeds: int = Field(3, ge=1, le=20)
    max_unlabeled: int = Field(0, ge=0)

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
    shard_mb: int = Field(64, ge=1, le=4096)     # size of a new cache shard


class PretrainParams(_Section):
    method: str = "simclr"
    backbone: Literal[BACKBONE_NAMES] = "resnet_narrow"
    small_stem: bool = True
    stem_stride: Literal[1, 2] = 2
    width: int = Field(16, ge=4, le=256)
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(32, ge=2)
    optimizer: Literal["sgd", "adamw", "lars"] = "adamw"
    lr: float = Field(0.002, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_epochs: int = Field(2, ge=0)
    method_params: dict[str, Any] = Field(default_factory=dict)
    augment: dict[str, Any] = Field(default_factory=lambda: {"hflip_p": 0.0})   # digits are not mirror-symmetric
    knn_k: int = Field(20, ge=1)
    knn_every: int = Field(1, ge=0)  # epochs between kNN monitor runs; 0 = after the last epoch only
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16"] = "auto"   # auto: bf16 autocast on CUDA, fp32 on CPU
    channels_last: Literal["auto", "on", "off"] = "auto"  # auto: on for CUDA; "on" is refused on a CPU
    compile: bool = False            # torch.compile the backbone (CUDA only; minutes of compiling first)
    compile_augment: Literal["auto", "on", "off"] = "auto"  # torch.compile the view-making ops; auto: on for CUDA
    cache_on_device: Literal["auto", "on", "off"] = "auto"  # auto: CUDA, when under 1/4 of free GPU memory
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(50, ge=0)
    # Multi-process training through torchrun (ssl_core/launch.py): 1 x 1 trains in the stage's process.
    nproc_per_node: int = Field(1, ge=1, le=64)
    nnodes: int = Field(1, ge=1)
    rdzv_endpoint: str = ""          # HOST:PORT of the c10d rendezvous; "" = standalone (one node)
    sync_batchnorm: bool = False     # BatchNorm statistics over the global batch (CUDA only)

    @model_validator(mode="after")
    def _distributed_layout(self) -> "PretrainParams":
        world = self.nproc_per_node * self.nnodes
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError("pretrain.rdzv_endpoint: nnodes > 1 needs HOST:PORT of a rendezvous every node reaches")
        if self.batch_size % world:
            raise ValueError(f"pretrain.batch_size: {self.batch_size} is the global batch and must divide evenly "
                             f"over nproc_per_node x nnodes = {world} processes")
        return self


class FinetuneParams(_Section):
    protocols: list[Literal["linear", "finetune"]] = Field(default_factory=lambda: ["linear", "finetune"], min_length=1)
    batch_size: int = Field(64, ge=1)
    linear_epochs: int = Field(100, ge=1)
    linear_lr: float = Field(0.01, gt=0)
    finetune_epochs: int = Field(20, ge=1)
    finetune_lr: float = Field(0.001, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    min_steps: int = Field(300, ge=0)
    head_init: Literal["probe", "random"] = "random"   # fine-tuning's head: a linear probe's (LP-FT) or random
    augment: dict[str, Any] = Field(default_factory=lambda: {"crop_scale": [0.7, 1.0], "hflip_p": 0.0, "jitter_p": 0.0,
                                                             "gray_p": 0.0})


class EvaluateParams(_Section):
    knn_k: int = Field(20, ge=1)


class TrackingParams(_Section):
    experiment: str = Field("ssl-pipeline", min_length=1)
    classifier_name: str = Field("ssl-classifier", min_length=1)
    encoder_name: str = Field("ssl-encoder", min_length=1)


class FlowParams(_Section):
    retries: int = Field(2, ge=0, le=10)
    retry_delay_seconds: list[int] = Field(default_factory=lambda: [10, 60], min_length=1)


class RetrainParams(_Section):
    margin: float = Field(0.005, ge=-1, le=1)   # challenger must beat the champion by this much (<0: may be worse)
    cron: str = Field("0 3 * * *", min_length=9)  # `ssl-pipeline serve` schedule (nightly)
    timezone: str = "UTC"
    deployment_name: str = Field("nightly-retrain", min_length=1)
    concurrency_tag: str = Field("ssl-retrain", min_length=1)


ALL_METHODS = "all"


class CompareParams(_Section):
    """`ssl-pipeline compare` (flows/compare.py): several methods on the same data and budget."""
    methods: Literal["all"] | list[str] = ALL_METHODS   # "all": every registered method
    epochs: int = Field(0, ge=0)                                # pretraining epochs per method; 0 = pretrain.epochs
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
    seed: int = Field(0, ge=0)
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
        _check_method(self)
        _check_compare(self)
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


def _check_method(params: Params) -> None:
    # Imported here: the registry lives in the torch-only core.
    from ssl_core.augment import AugmentConfig
    from ssl_core.methods import get_method_class, method_names

    p = params.pretrain
    try:
        cls = get_method_class(p.method)
    except KeyError:
        raise ValueError(f"pretrain.method: unknown method {p.method!r}; allowed: {', '.join(method_names())}")
    _check_dataclass_overrides("pretrain.method_params", cls.Params, p.method_params)
    try:   # the method's own range checks (e.g. mask_ratio < 1) run now, not after prepare
        cls.Params(**p.method_params)
    except (TypeError, ValueError) as err:
        raise ValueError(f"pretrain.method_params: {err}")
    _check_dataclass_overrides("pretrain.augment", AugmentConfig, p.augment)
    _check_dataclass_overrides("finetune.augment", AugmentConfig, params.finetune.augment)
    _check_family("pretrain.backbone", p.method, cls, p.backbone)
    if getattr(cls, "requires_color", False) and params.data.channels == 1:
        raise ValueError(f"pretrain.method: {p.method!r} needs colour images but data.channels is 1")


def _check_family(key: str, method: str, cls: type, backbone: str) -> None:
    family = getattr(cls, "backbone_family", None)
    if family == "vit" and not backbone.startswith("vit"):
        raise ValueError(f"{key}: method {method!r} needs a ViT backbone (vit_tiny), got {backbone!r}")
    if family == "resnet" and backbone.startswith("vit"):
        raise ValueError(f"{key}: method {method!r} needs a ResNet backbone, got {backbone!r}")


def compare_backbone(params: "Params", method: str) -> str:
    """The backbone `method` pretrains in the comparison: compare.backbones[method] when set, else
    vit_tiny for ViT-only methods (mae) and pretrain.backbone for every other method."""
    from ssl_core.methods import get_method_class

    if method in params.compare.backbones:
        return params.compare.backbones[method]
    return "vit_tiny" if get_method_class(method).backbone_family == "vit" else params.pretrain.backbone


def _check_compare(params: "Params") -> None:
    from typing import get_args

    from ssl_core.methods import get_method_class, method_names

    c = params.compare
    for key, names in (("compare.methods", c.method_list()), ("compare.backbones", list(c.backbones)),
                       ("compare.method_params", list(c.method_params)), ("compare.method_epochs", list(c.method_epochs)),
                       ("compare.method_batch_size", list(c.method_batch_size))):
        for name in names:
            if name not in method_names():
                raise ValueError(f"{key}: unknown method {name!r}; allowed: {', '.join(method_names())} "
                                 "(the random and scratch baselines are always included)")
    for key, counts in (("method_epochs", c.method_epochs), ("method_batch_size", c.method_batch_size)):
        for name, n in counts.items():
            if n < 1:
                raise ValueError(f"compare.{key}.{name}: must be >= 1, got {n}")
    listed = c.method_list()
    twice = sorted({m for m in listed if listed.count(m) > 1})
    if twice:
        raise ValueError(f"compare.methods: {', '.join(twice)} listed more than once")
    allowed_backbones = get_args(PretrainParams.model_fields["backbone"].annotation)
    for name in listed:
        backbone = compare_backbone(params, name)
        if backbone not in allowed_backbones:
            raise ValueError(f"compare.backbones.{name}: unknown backbone {backbone!r}; "
                             f"allowed: {', '.join(allowed_backbones)}")
        _check_family(f"compare.backbones.{name}", name, get_method_class(name), backbone)
    for name, knobs in c.method_params.items():
        cls = get_method_class(name)
        _check_dataclass_overrides(f"compare.method_params.{name}", cls.Params, knobs)
        try:
            cls.Params(**knobs)
        except (TypeError, ValueError) as err:
            raise ValueError(f"compare.method_params.{name}: {err}")


def _check_dataclass_overrides(key: str, dc: type, overrides: dict[str, Any]) -> None:
    fields = {f.name: f for f in dataclasses.fields(dc)}
    for name, value in overrides.items():
        if name not in fields:
            raise ValueError(f"{key}.{name}: unknown key; allowed: {', '.join(sorted(fields))}")
        default = getattr(dc(), name)
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, (int, float)):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        elif isinstance(default, (tuple, list)):
            ok = isinstance(value, (list, tuple)) and len(value) == len(default)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise ValueError(f"{key}.{name}: expected a value like {default!r}, got {value!r}")


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
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    msg = first["msg"]
    if first["type"] == "missing":
        msg = "missing required key"
    elif first["type"] == "extra_forbidden":
        msg = f"unknown key (typo?); allowed: {', '.join(_section_keys(first['loc'][:-1]))}"
    elif "literal" in first["type"]:
        msg = f"{msg} (got {first.get('input')!r})"
    msg = msg.removeprefix("Value error, ")
    text = f"{key}: {msg}" if key and not msg.startswith(key) else msg
    if len(err.errors()) > 1:
        text += f" (and {len(err.errors()) - 1} more problem(s))"
    return f"params.yaml: {text}"


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
