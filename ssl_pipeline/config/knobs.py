"""The knobs pydantic cannot check alone: a method's own knobs and the augmentation recipes (dataclasses
in the training core, whose __post_init__ holds their ranges), the method/backbone/data combination,
and the comparison's per-method settings. Each check returns (or raises) one line per problem, naming
the dotted key; schema.Params runs them after its fields validate.
"""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

from ssl_core.models.backbones import BACKBONE_NAMES

if TYPE_CHECKING:
    from ssl_core.models.spec import EncoderSpec

Params = Any   # schema.Params, not imported: the schema imports this module

MAX_STEPS = 10**7             # epochs, steps and intervals: far beyond any run, short of overflow
MAX_BATCH = 65536
ALL_METHODS = "all"


def method_problems(params: Params) -> list[str]:
    # Imported here: the registry lives in the torch-only core.
    from ssl_core.augment import AugmentConfig
    from ssl_core.methods import get_method_class, method_names

    p = params.pretrain
    try:
        cls = get_method_class(p.method)
    except KeyError:
        raise ValueError(f"pretrain.method: unknown method {p.method!r}; allowed: {', '.join(method_names())}")
    # The method's and the augmentations' own range checks (dataclass __post_init__) run now, not after prepare.
    problems = (dataclass_problems("pretrain.method_params", cls.Params, p.method_params)
                + dataclass_problems("pretrain.augment", AugmentConfig, p.augment, base=cls.augment_recipe)
                + dataclass_problems("finetune.augment", AugmentConfig, params.finetune.augment))
    _check_family("pretrain.backbone", p.method, cls, p.backbone)
    if getattr(cls, "requires_color", False) and params.data.channels == 1:
        raise ValueError(f"pretrain.method: {p.method!r} needs colour images but data.channels is 1")
    if problems:
        return problems
    knob, message = build_problem(params, p.method, p.backbone, p.method_params)
    if knob:
        return [f"pretrain.method_params.{knob}: {message}"]
    return [f"pretrain.method: {message}"] if message else []


def encoder_spec(params: Params, meta: dict, backbone: str | None = None, method: str | None = None) -> EncoderSpec:
    """The encoder params.yaml asks for, on the prepared data's channels and image size."""
    from ssl_core.models.spec import EncoderSpec

    p = params.pretrain
    return EncoderSpec(backbone=backbone or p.backbone, in_channels=meta["channels"], image_size=meta["image_size"],
                       small_stem=p.small_stem, stem_stride=p.stem_stride, width=p.width, method=method or p.method)


def build_problem(params: Params, method: str, backbone: str, knobs: dict) -> tuple[str, str]:
    """Build the method on its encoder on the meta device (no memory, no compute), so the checks that
    depend on the image size and the architecture (crop and tile sizes, ViT patches) run now.
    Returns (knob, message) for a knob's problem, ("", message) for another, ("", "") when it builds."""
    import torch

    from ssl_core.methods import get_method_class
    from ssl_core.models.spec import build_encoder

    d = params.data
    channels = d.channels if isinstance(d.channels, int) else 3   # auto: colour unless every image is grey
    spec = encoder_spec(params, {"channels": channels, "image_size": d.image_size}, backbone, method)
    augment = params.pretrain.augment if method == params.pretrain.method else {}
    try:
        with torch.device("meta"):
            get_method_class(method).build(build_encoder(spec), knobs, augment, (channels, d.image_size, d.image_size))
    except ValueError as err:
        message = str(err).splitlines()[0]
        if message.startswith("pretrain.method_params."):
            knob, _, rest = message.removeprefix("pretrain.method_params.").partition(" ")
            return knob.rstrip(":"), rest
        return "", f"{method} on {backbone} at data.image_size {d.image_size}: {message}"
    return "", ""


def _check_family(key: str, method: str, cls: type, backbone: str) -> None:
    family = getattr(cls, "backbone_family", None)
    if family == "vit" and not backbone.startswith("vit"):
        raise ValueError(f"{key}: method {method!r} needs a ViT backbone (vit_tiny), got {backbone!r}")
    if family == "resnet" and backbone.startswith("vit"):
        raise ValueError(f"{key}: method {method!r} needs a ResNet backbone, got {backbone!r}")


def compare_backbone(params: Params, method: str) -> str:
    """The backbone `method` pretrains in the comparison: compare.backbones[method] when set, else
    vit_tiny for ViT-only methods (mae) and pretrain.backbone for every other method."""
    from ssl_core.methods import get_method_class

    if method in params.compare.backbones:
        return params.compare.backbones[method]
    return "vit_tiny" if get_method_class(method).backbone_family == "vit" else params.pretrain.backbone


def compare_problems(params: Params) -> list[str]:
    from ssl_core.methods import get_method_class, method_names

    c = params.compare
    for key, names in (("compare.methods", c.method_list()), ("compare.backbones", list(c.backbones)),
                       ("compare.method_params", list(c.method_params)), ("compare.method_epochs", list(c.method_epochs)),
                       ("compare.method_batch_size", list(c.method_batch_size))):
        for name in names:
            if name not in method_names():
                raise ValueError(f"{key}: unknown method {name!r}; allowed: {', '.join(method_names())} "
                                 "(the random and scratch baselines are always included)")
    for key, counts, low, high in (("method_epochs", c.method_epochs, 1, MAX_STEPS),
                                   ("method_batch_size", c.method_batch_size, 2, MAX_BATCH)):
        for name, n in counts.items():
            if not low <= n <= high:
                raise ValueError(f"compare.{key}.{name}: must be between {low} and {high}, got {n}")
    listed = c.method_list()
    twice = sorted({m for m in listed if listed.count(m) > 1})
    if twice:
        raise ValueError(f"compare.methods: {', '.join(twice)} listed more than once")
    allowed_backbones = BACKBONE_NAMES
    for name in listed:
        backbone = compare_backbone(params, name)
        if backbone not in allowed_backbones:
            raise ValueError(f"compare.backbones.{name}: unknown backbone {backbone!r}; "
                             f"allowed: {', '.join(allowed_backbones)}")
        _check_family(f"compare.backbones.{name}", name, get_method_class(name), backbone)
    problems, unbuildable = [], {}
    p_knobs = params.pretrain.method_params
    for name in listed:
        key = f"compare.method_params.{name}"
        found = dataclass_problems(key, get_method_class(name).Params, c.method_params[name]) \
            if name in c.method_params else []
        knobs = c.method_params.get(name, params.pretrain.method_params if name == params.pretrain.method else {})
        backbone = compare_backbone(params, name)
        chosen = c.methods != ALL_METHODS or name in c.method_params or name in c.backbones
        built = name == params.pretrain.method and backbone == params.pretrain.backbone and knobs == p_knobs
        colour_only = getattr(get_method_class(name), "requires_color", False) and params.data.channels != 3
        if found or built or not chosen or colour_only:
            # `all` with a method's defaults: the comparison reports a method that cannot run as failed;
            # a colour-only method on data that may be gray: the comparison skips it, saying why
            problems += found
            continue
        knob, message = build_problem(params, name, backbone, knobs)
        if knob:
            problems.append(f"{key}.{knob}: {message}")
        elif message:   # one line for every method stopped by the same thing (e.g. the image size)
            unbuildable.setdefault(message.split(": ", 1)[1], []).append(f"{name} on {backbone}")
    problems += [f"compare.methods: {', '.join(names)} at data.image_size {params.data.image_size}: {why}"
                 for why, names in unbuildable.items()]
    return problems


# The core's dataclasses name their knobs with these prefixes in their range-check messages.
_CORE_PREFIXES = ("pretrain.method_params.", "augment.")


def dataclass_problems(key: str, dc: type, overrides: Any, base: dict | None = None) -> list[str]:
    """Known knobs of the default's type, finite numbers, then the dataclass's own range checks on
    `base` (e.g. the method's augmentation recipe) plus the overrides: one line per problem, naming
    `key`.<knob>."""
    if not isinstance(overrides, dict):
        return [f"{key}: expected a mapping of knob: value, got {overrides!r}"]
    fields = {f.name for f in dataclasses.fields(dc)}
    problems = []
    for name, value in overrides.items():
        if name not in fields:
            problems.append(f"{key}.{name}: unknown key; allowed: {', '.join(sorted(fields))}")
            continue
        default = getattr(dc(), name)
        values = value if isinstance(value, (list, tuple)) else [value]
        if not _same_kind(value, default):
            problems.append(f"{key}.{name}: expected a value like {default!r}, got {value!r}")
        elif any(isinstance(v, float) and not math.isfinite(v) for v in values):
            problems.append(f"{key}.{name}: must be a finite number, got {value!r}")
    if problems:
        return problems
    knobs = {k: tuple(v) if isinstance(v, list) else v for k, v in {**(base or {}), **overrides}.items()}
    try:
        dc(**knobs)
    except (TypeError, ValueError, OverflowError) as err:
        message = str(err).splitlines()[0]
        for prefix in _CORE_PREFIXES:
            if message.startswith(prefix):   # "augment.hflip_p must be ..." -> "<key>.hflip_p: must be ..."
                knob, _, rest = message.removeprefix(prefix).partition(" ")
                return [f"{key}.{knob.rstrip(':')}: {rest}"]
        return [f"{key}: {message}"]
    return []


def _same_kind(value: Any, default: Any) -> bool:
    """`value` can stand where the dataclass has `default` (an int knob takes no float, a float knob any number)."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return _is_number(value)
    if isinstance(default, (tuple, list)):
        return (isinstance(value, (list, tuple)) and len(value) == len(default)
                and all(_same_kind(v, d) for v, d in zip(value, default)))
    return isinstance(value, type(default))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
