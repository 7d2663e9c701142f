"""`--set KEY=VALUE` overrides: parsed as YAML values, applied to the raw params mapping (never to
params.yaml itself: a run with overrides gets its own params file, see versioning/run_workspace.py)."""
from __future__ import annotations

from typing import Any

import yaml

from ssl_pipeline.errors import ConfigError


def parse_override(text: str) -> tuple[str, Any]:
    """'pretrain.epochs=5' -> ('pretrain.epochs', 5); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. pretrain.epochs=5")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), yaml.safe_load(raw)
    except yaml.YAMLError:   # e.g. a cron "*/30 * * * *" is not YAML: take it as a string
        return key.strip(), raw


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        key, value = parse_override(text)
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return raw
