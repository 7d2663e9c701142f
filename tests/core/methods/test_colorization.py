"""Colorization: Lab conversion against published values, bin targets of pure-colour images,
refusal of grayscale data."""
from __future__ import annotations

import pytest
import torch

from ssl_core.augment import augment_batch
from ssl_core.methods.colorization import Colorization, ab_bins, cell_histograms, rgb_to_lab
from ssl_core.models.backbones import build_backbone

# sRGB (D65) -> CIE Lab reference values (e.g. Bruce Lindbloom's calculator).
KNOWN_LAB = {
    (255, 0, 0): (53.2408, 80.0925, 67.2032),
    (0, 255, 0): (87.7347, -86.1827, 83.1793),
    (0, 0, 255): (32.2970, 79.1875, -107.8602),
    (255, 255, 255): (100.0, 0.0, 0.0),
    (0, 0, 0): (0.0, 0.0, 0.0),
    (128, 128, 128): (53.5850, 0.0, 0.0),
}


def solid(rgb, n=2, size=16):
    return torch.tensor(rgb, dtype=torch.uint8).view(1, 3, 1, 1).expand(n, 3, size, size).contiguous()


def make(**params):
    torch.manual_seed(0)
    return Colorization.build(build_backbone("resnet_narrow", 3, 16, width=4), {"hidden_dim": 8, **params},
                              image_shape=(3, 16, 16))


@pytest.mark.parametrize("rgb,lab", KNOWN_LAB.items())
def test_rgb_to_lab_matches_known_values(rgb, lab):
    out = rgb_to_lab(solid(rgb, n=1, size=2).double() / 255)
    for channel, value in enumerate(lab):
        assert out[0, channel].flatten().tolist() == pytest.approx([value] * 4, abs=2e-3)


def test_pure_red_image_targets_its_ab_bin():
    m = make()
    x = augment_batch(solid((255, 0, 0)), m.augment, torch.Generator().manual_seed(0))
    lab = rgb_to_lab(x)
    assert torch.allclose(lab[:, 1], torch.tensor(80.09), atol=0.05)
    assert torch.allclose(lab[:, 2], torch.tensor(67.20), atol=0.05)
    target = m.targets(lab, (2, 2))
    red_bin = 19 * 22 + 17          # a in [80, 90) -> 19th of 22 bins from -110, b in [60, 70) -> 17th
    assert target.shape == (2, 484, 2, 2)
    assert torch.equal(target.argmax(1), torch.full((2, 2, 2), red_bin))
    assert torch.allclose(target.amax(1), torch.ones(2, 2, 2))


def test_bins_of_known_ab_values():
    ab = torch.tensor([[-110.0, -110.0], [0.0, 0.0], [109.9, -0.1], [150.0, -150.0]]).T.reshape(1, 2, 1, 4)
    bins, count = ab_bins(ab, 10.0)
    assert count == 484
    assert bins.flatten().tolist() == [0, 11 * 22 + 11, 21 * 22 + 10, 21 * 22 + 0]   # out of range clamps


def test_cell_histograms_count_each_cells_pixels():
    bins = torch.tensor([[[0, 0, 1, 2],
                          [0, 3, 1, 1],
                          [2, 2, 3, 3],
                          [2, 2, 3, 0]]])
    hist = cell_histograms(bins, 4, (2, 2))
    assert hist[0, :, 0, 0].tolist() == [0.75, 0.0, 0.0, 0.25]
    assert hist[0, :, 0, 1].tolist() == [0.0, 0.75, 0.25, 0.0]
    assert hist[0, :, 1, 0].tolist() == [0.0, 0.0, 1.0, 0.0]
    assert hist[0, :, 1, 1].tolist() == [0.25, 0.0, 0.0, 0.75]


def test_encoder_sees_only_lightness():
    m = make().eval()
    seen = []
    m.backbone.trunk.conv1.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    m.loss(solid((255, 0, 0)), torch.Generator().manual_seed(0))
    normalised_l = (0.532408 - 0.5) / 0.25
    assert torch.allclose(seen[0], torch.full_like(seen[0], normalised_l), atol=1e-4)


def test_grayscale_batch_is_refused_at_first_loss_call():
    m = make()
    gray = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8).expand(4, 3, 16, 16).contiguous()
    with pytest.raises(ValueError, match="grayscale"):
        m.loss(gray, torch.Generator().manual_seed(0))
    loss, extra = m.loss(solid((10, 200, 30)), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and 0 <= extra["acc"].item() <= 1


def test_one_channel_data_and_gray_augmentation_are_refused():
    with pytest.raises(ValueError, match="colour"):
        Colorization.build(build_backbone("resnet_narrow", 1, 16, width=4), image_shape=(1, 16, 16))
    with pytest.raises(ValueError, match="gray_p"):
        Colorization.build(build_backbone("resnet_narrow", 3, 16, width=4), augment_overrides={"gray_p": 0.2},
                           image_shape=(3, 16, 16))


def test_vit_backbone_predicts_on_its_patch_grid():
    from ssl_core.models.backbones import Backbone, ViTTrunk, feature_map
    torch.manual_seed(0)
    backbone = Backbone(ViTTrunk(16, 3, 4, dim=16, depth=1, heads=2), 16, 3, "vit_tiny")
    m = Colorization.build(backbone, {"hidden_dim": 8}, image_shape=(3, 16, 16))
    x = torch.rand(2, 3, 16, 16)
    fmap = feature_map(backbone, x)
    assert fmap.shape == (2, 16, 4, 4)
    # The grid is the evaluation encoder's own patch tokens (its class token is the pooled feature).
    tokens = backbone.trunk.encode_tokens(backbone.trunk.patch_tokens((x - 0.5) / 0.25))
    torch.testing.assert_close(tokens[:, 0], backbone(x))
    assert torch.equal(fmap[:, :, 1, 2], tokens[:, 1 + 1 * 4 + 2])
    loss, _ = m.loss(solid((200, 30, 90)), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
