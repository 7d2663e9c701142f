"""A method's recipe asks for RGB-only colour ops (saturation, hue, grayscale): on other channel counts they are
skipped with a note per method, or the method refuses (`rgb_only_augment = "refuse"`), naming pretrain.method."""
from __future__ import annotations

import pytest
import torch

from ssl_core.methods import get_method_class
from ssl_core.models import build_backbone

SimCLR = get_method_class("simclr")


def test_recipe_rgb_ops_are_skipped_with_one_note_naming_them_and_the_channels():
    assert SimCLR.augment_notes(3, {}) == []
    notes = SimCLR.augment_notes(13, {})
    assert notes == ["simclr: the recipe's saturation, hue, grayscale (RGB-only) skipped on 13-channel data; "
                     "the other augmentations run"]
    assert SimCLR.augment_notes(13, {"jitter_p": 0.0, "gray_p": 0.0}) == []   # switched off: nothing to say


def test_a_method_with_skipped_ops_trains_on_13_bands():
    method = SimCLR.build(build_backbone("resnet_narrow", 13, 16, True, 4, 2), {}, {}, (13, 16, 16))
    images = torch.randint(0, 256, (4, 13, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    views = method.example_views(images, torch.Generator().manual_seed(0))
    assert all(v.shape == (4, 13, 16, 16) for v in views)
    loss, _ = method.loss(images, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)


def test_a_method_that_refuses_says_so_before_building():
    class Refusing(SimCLR):
        name = ""   # not registered
        rgb_only_augment = "refuse"

    with pytest.raises(ValueError, match=r"^pretrain.method: '' relies on RGB-only colour augmentation "
                                         r"\(saturation, hue, grayscale\) and the data has 1 channel"):
        Refusing.build(build_backbone("resnet_narrow", 1, 16, True, 4, 2), {}, {}, (1, 16, 16))
