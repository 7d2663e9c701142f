"""Jigsaw: tiles, a known permutation reassembles, and the permutation set is max-min Hamming."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ssl_core.methods.jigsaw import (Jigsaw, assemble, cut_tiles, permutation_set, shuffle_tiles,
                                     unshuffle_tiles)
from ssl_core.models.backbones import build_backbone


def cell_image(size=10):
    """One-channel image whose 3x3 cells hold their row-major cell index (the 10th row/col is cropped)."""
    img = torch.full((1, 1, size, size), -1.0)
    cell = size // 3
    for i in range(9):
        r, c = divmod(i, 3)
        img[0, 0, r * cell:(r + 1) * cell, c * cell:(c + 1) * cell] = i
    return img


def test_tiles_are_the_grid_cells_in_row_major_order():
    tiles = cut_tiles(cell_image(), gap=0, gen=None)
    assert tiles.shape == (1, 9, 1, 3, 3)
    for i in range(9):
        assert torch.all(tiles[0, i] == i)


def test_known_permutation_shuffles_and_reassembles():
    img = cell_image(9) + torch.rand(1, 1, 9, 9)         # distinct pixels, cells still identifiable
    perm = torch.tensor([[8, 0, 4, 2, 7, 1, 3, 6, 5]])
    tiles = cut_tiles(img, gap=0, gen=None)
    shuffled = shuffle_tiles(tiles, perm)
    for j, src in enumerate(perm[0].tolist()):           # position j shows the tile of cell perm[j]
        assert torch.all(shuffled[0, j].floor() == src)
    assert torch.equal(assemble(tiles), img)
    assert torch.equal(assemble(unshuffle_tiles(shuffled, perm)), img)


def test_gap_takes_tiles_inside_their_cells():
    img = cell_image(12)                                 # cells of 4 px, tiles of 2 px
    tiles = cut_tiles(img, gap=2, gen=torch.Generator().manual_seed(0))
    assert tiles.shape == (1, 9, 1, 2, 2)
    for i in range(9):
        assert torch.all(tiles[0, i] == i)


def test_permutation_set_is_greedy_max_min_hamming_and_seeded():
    perms = permutation_set(30, seed=1)
    assert perms.shape == (30, 9)
    assert all(sorted(p) == list(range(9)) for p in perms.tolist())
    assert len({tuple(p) for p in perms.tolist()}) == 30
    assert torch.equal(perms, permutation_set(30, seed=1)) and not torch.equal(perms, permutation_set(30, seed=2))
    # Greedy max-min: each new member is at least as far from the earlier ones as any permutation is.
    flat = itertools.chain.from_iterable(itertools.permutations(range(9)))
    every = torch.from_numpy(np.fromiter(flat, dtype=np.int8, count=362880 * 9).reshape(-1, 9))
    min_dist = torch.full((len(every),), 10)
    for n in range(1, 30):
        min_dist = torch.minimum(min_dist, (every != perms[n - 1].to(torch.int8)).sum(1))
        got = (perms[n] != perms[:n]).sum(1).min()
        assert got == min_dist.max()


def test_method_stores_the_set_as_a_buffer_and_predicts_its_index():
    torch.manual_seed(0)
    backbone = build_backbone("resnet_narrow", 3, 16, width=4)
    m = Jigsaw.build(backbone, {"num_permutations": 10, "hidden_dim": 16, "tile_gap": 1}, image_shape=(3, 16, 16))
    assert torch.equal(m.state_dict()["permutations"], permutation_set(10, 0))
    x = torch.rand(2, 3, 16, 16)
    shuffled, index = m.puzzle(x, torch.Generator().manual_seed(0))
    assert shuffled.shape == (2, 9, 3, 4, 4) and index.max() < 10
    loss, extra = m.loss((x * 255).to(torch.uint8), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and m.head[-1].out_features == 10


def test_too_small_images_are_refused():
    with pytest.raises(ValueError, match="jigsaw"):
        Jigsaw.build(build_backbone("resnet_narrow", 3, 8, width=4), {"tile_gap": 2}, image_shape=(3, 8, 8))


def test_tiles_are_resized_for_a_vit_or_on_request():
    from ssl_core.models.backbones import Backbone, ViTTrunk
    seen = []
    vit = Backbone(ViTTrunk(16, 3, 4, dim=16, depth=1, heads=2), 16, 3, "vit_tiny")
    resnet = build_backbone("resnet_narrow", 3, 16, width=4)
    for backbone, params, size in [(vit, {}, 16), (resnet, {"tile_size": 8}, 8), (resnet, {}, 3)]:
        m = Jigsaw.build(backbone, {"num_permutations": 4, "hidden_dim": 8, "input": "tiles", **params},
                         image_shape=(3, 16, 16))
        hook = m.backbone.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0].shape[-1]))
        loss, _ = m.loss(torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8), torch.Generator().manual_seed(0))
        hook.remove()
        assert torch.isfinite(loss) and seen[-1] == size
    with pytest.raises(ValueError, match="ViT"):
        Jigsaw.build(vit, {"tile_size": 8}, image_shape=(3, 16, 16))


def test_image_input_encodes_the_reassembled_shuffled_tiles_once():
    """input: image -- the backbone sees assemble(shuffled tiles) at the image size, one pass per image."""
    from ssl_core.augment import augment_batch
    from ssl_core.methods.jigsaw import assemble, resize

    torch.manual_seed(0)
    backbone = build_backbone("resnet_narrow", 1, 16, width=4)
    m = Jigsaw.build(backbone, {"num_permutations": 6, "hidden_dim": 8, "tile_gap": 1, "input": "image"},
                     image_shape=(1, 16, 16))
    assert m.head[0].in_features == backbone.out_dim   # one feature vector per image, not nine
    images = torch.randint(0, 256, (3, 1, 16, 16), dtype=torch.uint8)
    seen = []
    hook = m.backbone.register_forward_pre_hook(lambda mod, inp: seen.append(inp[0]))
    loss, _ = m.loss(images, torch.Generator().manual_seed(5))
    hook.remove()
    gen = torch.Generator().manual_seed(5)   # the same draws, in the same order, by hand
    shuffled, index = m.puzzle(augment_batch(images, m.augment, gen), gen)
    expected = resize(assemble(shuffled), 16)
    assert len(seen) == 1 and torch.equal(seen[0], expected)
    assert shuffled.shape[-1] == 4 and expected.shape == (3, 1, 16, 16)   # 12 px of tiles -> 16 px
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="input"):
        Jigsaw.build(backbone, {"input": "patches"}, image_shape=(1, 16, 16))
