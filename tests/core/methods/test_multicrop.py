"""Multi-crop: every view group has its size and its own per-sample randomness, same seed -> same views;
networks see each size group in one batch; the ViT takes any size by resizing its position embeddings."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ssl_core.augment import AugmentConfig, apply_params, draw_uniform, params_from_uniform
from ssl_core.models.backbones import ViTTrunk
from ssl_core.multicrop import MultiCrop, ViewGroup, encode_views

BASE = AugmentConfig(crop_scale=(0.4, 1.0), hflip_p=0.5, jitter_p=0.8, gray_p=0.2)
GROUPS = [ViewGroup(2, 16), ViewGroup(3, 6, {"crop_scale": (0.05, 0.4)})]


def images(n=5, seed=0):
    return torch.randint(0, 256, (n, 3, 16, 16), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_each_view_is_its_groups_recipe_at_its_size_with_its_own_draw():
    x, crop = images(), MultiCrop(BASE, GROUPS)
    views = crop.views(x, torch.Generator().manual_seed(7))
    assert crop.num_views == len(views) == 5 and crop.sizes() == [16, 16, 6, 6, 6]
    assert [tuple(v.shape) for v in views] == [(5, 3, 16, 16)] * 2 + [(5, 3, 6, 6)] * 3
    # replay: view i is the i-th draw from the generator, through its group's config, at its group's size
    gen = torch.Generator().manual_seed(7)
    for i, (view, size) in enumerate(zip(views, crop.sizes())):
        cfg = BASE if i < 2 else BASE.with_overrides({"crop_scale": (0.05, 0.4)})
        u = draw_uniform(cfg, x.shape, gen)
        params = params_from_uniform(cfg, x.shape, u, size)
        assert torch.equal(view, apply_params(x, params, size))
        area = params.boxes[:, 2] * params.boxes[:, 3]     # fraction of the image each crop covers
        low, high = cfg.crop_scale
        assert (area >= low - 1e-6).all() and (area <= high + 1e-6).all()
        assert len({tuple(r) for r in u.tolist()}) == x.shape[0]   # every sample its own parameters
    for a, b in ((0, 1), (2, 3), (3, 4)):                      # views of one group differ
        assert not torch.equal(views[a], views[b])


def test_same_seed_same_views_other_seed_other_views():
    x, crop = images(), MultiCrop(BASE, GROUPS)
    a = crop.views(x, torch.Generator().manual_seed(3))
    b = crop.views(x, torch.Generator().manual_seed(3))
    c = crop.views(x, torch.Generator().manual_seed(4))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert all(not torch.equal(u, v) for u, v in zip(a, c))


def test_empty_groups_are_dropped_and_bad_groups_refused():
    assert MultiCrop(BASE, [ViewGroup(2, 16), ViewGroup(0, 6)]).sizes() == [16, 16]
    with pytest.raises(ValueError, match="count >= 0 and size >= 1"):
        ViewGroup(1, 0)


def test_encode_views_batches_each_run_of_one_size():
    calls = []

    def net(x):
        calls.append(tuple(x.shape))
        return x.mean(dim=(1, 2, 3)).unsqueeze(1)

    views = [torch.rand(4, 3, s, s) for s in (16, 16, 6, 6, 6)]
    out = encode_views(net, views)
    assert calls == [(8, 3, 16, 16), (12, 3, 6, 6)]
    torch.testing.assert_close(out, torch.cat([v.mean(dim=(1, 2, 3)).unsqueeze(1) for v in views]))


def vit(size: int, seed: int = 0) -> ViTTrunk:
    torch.manual_seed(seed)
    return ViTTrunk(size, 3, 4, dim=16, depth=2, heads=2).eval()


def test_vit_token_path_at_the_training_size_is_the_standard_forward():
    trunk, x = vit(16), torch.rand(3, 3, 16, 16)
    torch.testing.assert_close(trunk.encode_tokens(trunk.patch_tokens(x))[:, 0], trunk(x), rtol=0, atol=1e-6)
    assert torch.equal(trunk.position_embedding(4, 4), trunk.vit.encoder.pos_embedding[:, 1:])


def test_vit_on_another_size_equals_a_vit_of_that_size_with_resized_position_embeddings():
    """A 16 px ViT on 8 px images == the same weights in an 8 px ViT whose patch position embeddings are
    the 4x4 grid resized bicubically to 2x2 (the class token's is kept)."""
    big, small, x = vit(16), vit(8, seed=1), torch.rand(3, 3, 8, 8)
    state = big.state_dict()
    pos = state["vit.encoder.pos_embedding"]
    grid = pos[:, 1:].reshape(1, 4, 4, 16).permute(0, 3, 1, 2)
    resized = F.interpolate(grid, size=(2, 2), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 4, 16)
    state["vit.encoder.pos_embedding"] = torch.cat([pos[:, :1], resized], dim=1)
    small.load_state_dict(state)
    torch.testing.assert_close(big(x), small(x), rtol=0, atol=1e-6)
    assert big(torch.rand(2, 3, 12, 12)).shape == (2, 16) and big(torch.rand(2, 3, 13, 10)).shape == (2, 16)


def test_a_constant_position_embedding_stays_constant_and_gradients_reach_it():
    trunk = vit(16).train()
    with torch.no_grad():
        trunk.vit.encoder.pos_embedding.fill_(0.25)
    assert torch.allclose(trunk.position_embedding(3, 2), torch.full((1, 6, 16), 0.25))
    trunk(torch.rand(2, 3, 12, 8))[:, 0].sum().backward()   # (a full sum through the final LayerNorm is constant)
    assert trunk.vit.encoder.pos_embedding.grad[:, 1:].abs().sum() > 0
