"""Warm start: a pretraining that continues from an earlier run's method instead of random weights.

A finished pretraining keeps `saved_method()`: the method's whole state (encoder, heads, momentum
encoders, queues) with what it was built from. A later run of the same method with the same
effective knobs and tensor shapes loads all of it; otherwise it loads the encoder alone (its
momentum copies start as that encoder, as they do when a method is built), and when even the
encoder's shapes differ (other channels, backbone or width) nothing is loaded. The report says which,
and why, for the run's log and tags. The schedule is the caller's: a warm start is a short run with
its own warm-up and cosine decay (retrain.warm_epochs), not the rest of the old one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import torch
from torch import nn

FORMAT = 1
LOADED_METHOD, LOADED_ENCODER, LOADED_NOTHING = "method", "encoder", "nothing"


@dataclass(frozen=True)
class WarmStartReport:
    loaded: str      # "method" (encoder + heads + momentum state) | "encoder" | "nothing"
    reason: str      # one sentence for the log and the MLflow tags


def _effective_params(method) -> str:
    return json.dumps(dataclasses.asdict(method.params), sort_keys=True, default=str)


def saved_method(method, encoder_spec) -> dict:
    """What a later run warm-starts from: tensors and plain values only (loadable with weights_only=True)."""
    return {"format": FORMAT, "method": method.name, "method_params": _effective_params(method),
            "encoder": json.dumps(encoder_spec.to_dict(), sort_keys=True),
            "state": {k: v.detach().cpu().clone() for k, v in method.state_dict().items()}}


def shape_mismatches(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> list[str]:
    """Keys missing, unexpected or of another shape (first few, for a message)."""
    out = [f"missing {k}" for k in expected if k not in given]
    out += [f"unexpected {k}" for k in given if k not in expected]
    out += [f"{k} {tuple(given[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
            if k in given and tuple(given[k].shape) != tuple(v.shape)]
    return out


def _sync_momentum_copies(method: nn.Module) -> None:
    """Frozen submodules shaped like the encoder (BYOL's target, MoCo's key, DINO's teacher encoder) start
    as the loaded encoder, as frozen_copy() makes them when the method is built."""
    enc = method.backbone.state_dict()
    for name, child in method.named_children():
        if name == "backbone" or any(p.requires_grad for p in child.parameters()):
            continue
        if not shape_mismatches(child.state_dict(), enc):
            child.load_state_dict(enc)


def warm_start(method, saved: dict) -> WarmStartReport:
    """Load `saved` (saved_method()) into a freshly built `method`, as much as fits."""
    if saved.get("format") != FORMAT:
        return WarmStartReport(LOADED_NOTHING, f"the saved method has format {saved.get('format')!r}, "
                                               f"this version reads {FORMAT}")
    state = saved["state"]
    why_not_all = ""
    if saved["method"] != method.name:
        why_not_all = f"the method changed ({saved['method']} -> {method.name})"
    elif saved["method_params"] != _effective_params(method):
        why_not_all = f"{method.name}'s method_params changed"
    else:
        problems = shape_mismatches(method.state_dict(), state)
        if not problems:
            method.load_state_dict(state)
            return WarmStartReport(LOADED_METHOD, f"loaded the whole {method.name} state (encoder, heads, "
                                                  "momentum state): same method, knobs and shapes")
        why_not_all = f"the method's tensors differ ({'; '.join(problems[:3])})"
    encoder = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    problems = shape_mismatches(method.backbone.state_dict(), encoder)
    if problems:
        return WarmStartReport(LOADED_NOTHING, f"{why_not_all}, and the encoder's architecture differs too "
                                               f"({'; '.join(problems[:3])}): starting from random weights")
    method.backbone.load_state_dict(encoder)
    _sync_momentum_copies(method)
    return WarmStartReport(LOADED_ENCODER, f"loaded the encoder alone: {why_not_all}")


def state_digest(module_or_state) -> str:
    """sha256 over a state_dict's keys, dtypes, shapes and bytes (sorted by key): equal weights, equal digest."""
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous().reshape(-1)
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
