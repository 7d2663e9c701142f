"""Jigsaw puzzles (Noroozi & Favaro 2016): shuffle a 3x3 grid of tiles, predict which permutation.

Tiles: the augmented image is centre-cropped to a multiple of 3 (27 px from 28), cut into 3x3 cells,
and from each cell a tile of (cell - tile_gap) px is taken at a random offset (per image and tile,
from the step's generator), so tiles never share edges the network could simply match. Tiles are
encoded one by one by the backbone (the ResNets take them at their own size; the ViT, whose input size
is fixed, gets them resized up to the image size), the 9 feature vectors are concatenated in shuffled
order and an MLP predicts the permutation's index. With `input: image` the shuffled tiles are instead
put back on the 3x3 grid as one image (gaps closed), resized to the image size and encoded once: the
encoder then learns the puzzle at the scale it is later used at (on 28 px digits the per-tile features
of 7 px tiles transfer poorly to whole images), and faster (docs/method-knobs.md).

Shuffling: `shuffled[j] = tiles[perm[j]]` -- position j shows the tile that belongs at perm[j];
`unshuffle` puts it back.

Permutation set (`permutation_set`): all 9! = 362880 permutations of the tiles, listed
lexicographically, are put in a random order drawn with numpy's default_rng(seed). The first
becomes the first member. Then, greedily, the candidate whose minimum Hamming distance (number of
positions that differ) to the members chosen so far is largest is added, ties going to the earliest
candidate in the random order -- a max-min variant of the paper's maximal-Hamming-distance
algorithm. The set is a persistent buffer, so a checkpoint carries it and a resumed or exported run
uses exactly the same classes.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ssl_core.augment import augment_batch
from ssl_core.methods.base import MAX_DIM, SSLMethod, check_ints
from ssl_core.models.heads import mlp

GRID = 3
TILES = GRID * GRID
MAX_PERMUTATIONS = 1000   # the paper's set size; every permutation chosen costs a pass over all 9! of them


@functools.lru_cache(maxsize=4)
def _permutation_set(count: int, seed: int) -> np.ndarray:
    flat = itertools.chain.from_iterable(itertools.permutations(range(TILES)))
    candidates = np.fromiter(flat, dtype=np.int8, count=math.factorial(TILES) * TILES).reshape(-1, TILES)
    candidates = candidates[np.random.default_rng(seed).permutation(len(candidates))]
    columns = np.ascontiguousarray(candidates.T)            # per-position columns: fast comparisons
    min_dist = np.full(len(candidates), TILES + 1, dtype=np.int8)
    chosen = [0]
    dist = np.empty(len(candidates), dtype=np.int8)
    for _ in range(count - 1):
        newest = candidates[chosen[-1]]
        dist[:] = 0
        for pos in range(TILES):
            dist += columns[pos] != newest[pos]
        np.minimum(min_dist, dist, out=min_dist)           # chosen ones drop to 0: never re-picked
        chosen.append(int(np.argmax(min_dist)))             # argmax: first maximum = seeded tie-break
    return candidates[chosen].astype(np.int64)


def permutation_set(count: int, seed: int = 0) -> torch.Tensor:
    """[count, 9] permutations of maximal minimum Hamming distance (see module docstring)."""
    if not 2 <= count <= 362880:
        raise ValueError(f"jigsaw num_permutations must be in [2, 9!], got {count}")
    return torch.from_numpy(_permutation_set(count, seed).copy())


def cut_tiles(x: torch.Tensor, gap: int, gen: torch.Generator | None) -> torch.Tensor:
    """[B, C, S, S] -> [B, 9, C, t, t] row-major tiles, t = S // 3 - gap, random offsets within cells."""
    b, size = x.shape[0], x.shape[-1]
    cell = size // GRID
    start = (size - cell * GRID) // 2                        # centre crop to a multiple of 3
    t = cell - gap
    offsets = torch.randint(gap + 1, (b, TILES, 2), generator=gen, device=x.device)
    grid = torch.arange(TILES, device=x.device)
    top = start + (grid // GRID) * cell + offsets[..., 0]    # [B, 9]
    left = start + (grid % GRID) * cell + offsets[..., 1]
    span = torch.arange(t, device=x.device)
    rows = (top[..., None] + span)[:, :, :, None]           # [B, 9, t, 1]
    cols = (left[..., None] + span)[:, :, None, :]          # [B, 9, 1, t]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    return x[batch, :, rows, cols].permute(0, 1, 4, 2, 3)   # advanced dims first -> [B, 9, C, t, t]


def shuffle_tiles(tiles: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """shuffled[b, j] = tiles[b, perms[b, j]]."""
    return tiles[torch.arange(tiles.shape[0], device=tiles.device)[:, None], perms]


def unshuffle_tiles(shuffled: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    return shuffled[torch.arange(shuffled.shape[0], device=shuffled.device)[:, None], torch.argsort(perms, dim=1)]


def assemble(tiles: torch.Tensor) -> torch.Tensor:
    """[B, 9, C, t, t] row-major tiles -> [B, C, 3t, 3t] image."""
    b, _, c, t, _ = tiles.shape
    return tiles.view(b, GRID, GRID, c, t, t).permute(0, 3, 1, 4, 2, 5).reshape(b, c, GRID * t, GRID * t)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of square images to size x size (a no-op at their own size)."""
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class Jigsaw(SSLMethod):
    name = "jigsaw"

    @dataclass
    class Params:
        num_permutations: int = 100    # paper: 1000 at 225 px; fewer classes suit tiny tiles
        permutation_seed: int = 0
        tile_gap: int = 2              # px of random play per 9 px cell (paper: 64 px tiles in 85 px cells)
        tile_size: int = 0             # tiles are resized to this before the backbone; 0 = as cut
        hidden_dim: int = 512
        input: str = "image"           # "image": the shuffled tiles reassembled into one image, encoded at
                                       # the image's scale; "tiles": each tile encoded alone (the paper's,
                                       # for 225 px images); see docs/method-knobs.md

        def __post_init__(self) -> None:
            if self.input not in ("tiles", "image"):
                raise ValueError(f"pretrain.method_params.input: expected 'tiles' or 'image', got {self.input!r}")
            check_ints(self, 2, MAX_PERMUTATIONS, "num_permutations")
            check_ints(self, 0, 2**32 - 1, "permutation_seed")
            check_ints(self, 0, 64, "tile_gap")
            check_ints(self, 0, 512, "tile_size")
            check_ints(self, 1, MAX_DIM, "hidden_dim")

    augment_recipe = {"crop_scale": (0.6, 1.0), "jitter_p": 0.0, "gray_p": 0.0}

    def __init__(self, backbone, params, augment, image_shape):
        super().__init__(backbone, params, augment, image_shape)
        size = min(image_shape[1:])
        if image_shape[1] != image_shape[2] or size // GRID - params.tile_gap < 1 or params.tile_gap < 0:
            raise ValueError(f"jigsaw: needs square images of at least 3 px per cell after a tile_gap of "
                             f"{params.tile_gap}; got {image_shape[1]}x{image_shape[2]}")
        fixed_input = getattr(getattr(backbone, "trunk", None), "patch_size", None) is not None  # a ViT
        if fixed_input and params.tile_size not in (0, size):
            raise ValueError(f"jigsaw: a ViT takes only {size} px inputs; set tile_size to 0 or {size}")
        self.tile_size = size if fixed_input else params.tile_size
        self.image_size = size
        self.register_buffer("permutations", permutation_set(params.num_permutations, params.permutation_seed))
        features = backbone.out_dim * (TILES if params.input == "tiles" else 1)
        self.head = mlp(features, params.hidden_dim, params.num_permutations)

    def puzzle(self, x: torch.Tensor, gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Float images -> (shuffled tiles [B, 9, C, t, t], permutation index [B])."""
        tiles = cut_tiles(x, self.params.tile_gap, gen)
        index = torch.randint(self.permutations.shape[0], (x.shape[0],), generator=gen, device=x.device)
        return shuffle_tiles(tiles, self.permutations[index]), index

    def loss(self, images_u8, gen):
        x = augment_batch(images_u8, self.augment, gen)
        shuffled, index = self.puzzle(x, gen)
        b, _, c, t, _ = shuffled.shape
        if self.params.input == "image":
            logits = self.head(self.backbone(resize(assemble(shuffled), self.image_size)))
        else:
            flat = resize(shuffled.reshape(b * TILES, c, t, t), self.tile_size or t)
            logits = self.head(self.backbone(flat).reshape(b, -1))
        acc = (logits.detach().argmax(1) == index).float().mean()
        return F.cross_entropy(logits, index), {"acc": acc}
