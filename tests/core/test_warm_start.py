"""Warm start: the whole method when it matches, the encoder alone when only the encoder does, nothing otherwise."""
from __future__ import annotations

import torch

from ssl_core.methods import get_method_class
from ssl_core.models.spec import EncoderSpec, build_encoder
from ssl_core.recipes.warm_start import (LOADED_ENCODER, LOADED_METHOD, LOADED_NOTHING, saved_method, state_digest,
                                         warm_start)

SPEC = EncoderSpec("resnet_narrow", 1, 16, True, 2, 4, "simclr")


def built(name: str, seed: int, spec: EncoderSpec = SPEC, **params):
    torch.manual_seed(seed)
    return get_method_class(name).build(build_encoder(spec), params, {}, (spec.in_channels, 16, 16))


def test_same_method_and_knobs_load_everything():
    old, new = built("moco", 0), built("moco", 1)
    with torch.no_grad():
        old.queue.mul_(-1)   # momentum state that is not a copy of anything
    report = warm_start(new, saved_method(old, SPEC))
    assert report.loaded == LOADED_METHOD
    assert state_digest(new) == state_digest(old)


def test_other_knobs_load_the_encoder_alone_and_momentum_copies_follow_it():
    old, new = built("byol", 0), built("byol", 1, projection_dim=32)
    report = warm_start(new, saved_method(old, SPEC))
    assert report.loaded == LOADED_ENCODER and "method_params changed" in report.reason
    assert state_digest(new.backbone) == state_digest(old.backbone)
    assert state_digest(new.target_backbone) == state_digest(old.backbone)   # the EMA target starts as the encoder
    assert state_digest(new.projector) != state_digest(old.projector)


def test_another_method_on_the_same_encoder_loads_the_encoder():
    report = warm_start(new := built("rotation", 1), saved_method(old := built("simclr", 0), SPEC))
    assert report.loaded == LOADED_ENCODER and "simclr -> rotation" in report.reason
    assert state_digest(new.backbone) == state_digest(old.backbone)


def test_another_architecture_loads_nothing_and_says_why():
    wide = EncoderSpec("resnet_narrow", 1, 16, True, 2, 8, "simclr")
    new = built("simclr", 1, wide)
    before = state_digest(new)
    report = warm_start(new, saved_method(built("simclr", 0), SPEC))
    assert report.loaded == LOADED_NOTHING and "architecture differs" in report.reason
    assert state_digest(new) == before


def test_the_saved_method_loads_with_weights_only(tmp_path):
    saved = saved_method(built("simclr", 0), SPEC)
    torch.save(saved, tmp_path / "m.pt")
    again = torch.load(tmp_path / "m.pt", weights_only=True)
    assert warm_start(built("simclr", 1), again).loaded == LOADED_METHOD
