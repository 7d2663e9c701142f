"""RotNet: rotations and labels on a hand-made image."""
from __future__ import annotations

import torch

from ssl_core.methods.rotation import Rotation, rotate, rotation_batch
from ssl_core.models.backbones import build_backbone

# A 3x3 one-channel image with distinct pixels, and its counter-clockwise rotations written by hand.
IMAGE = torch.tensor([[1., 2., 3.],
                      [4., 5., 6.],
                      [7., 8., 9.]])
BY_HAND = {
    0: IMAGE,
    1: torch.tensor([[3., 6., 9.], [2., 5., 8.], [1., 4., 7.]]),      # 90 deg CCW: top row = old right column
    2: torch.tensor([[9., 8., 7.], [6., 5., 4.], [3., 2., 1.]]),
    3: torch.tensor([[7., 4., 1.], [8., 5., 2.], [9., 6., 3.]]),
}


def test_rotate_matches_hand_made_rotations():
    x = IMAGE.view(1, 1, 3, 3).repeat(4, 1, 1, 1)
    out = rotate(x, torch.tensor([0, 1, 2, 3]))
    for k in range(4):
        assert torch.equal(out[k, 0], BY_HAND[k])


def test_all_four_rotations_per_image_with_their_labels():
    x = torch.stack([IMAGE, IMAGE + 10]).unsqueeze(1)               # two images
    rotated, labels = rotation_batch(x, all_rotations=True, gen=None)
    assert labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    for i, k in enumerate(labels.tolist()):
        assert torch.equal(rotated[i, 0], BY_HAND[k] + (10 if i >= 4 else 0))


def test_one_random_rotation_per_image_is_labelled_correctly():
    x = IMAGE.view(1, 1, 3, 3).repeat(32, 1, 1, 1)
    rotated, labels = rotation_batch(x, all_rotations=False, gen=torch.Generator().manual_seed(0))
    assert rotated.shape == x.shape and set(labels.tolist()) == {0, 1, 2, 3}
    for img, k in zip(rotated, labels.tolist()):
        assert torch.equal(img[0], BY_HAND[k])


def test_loss_is_cross_entropy_over_four_classes():
    torch.manual_seed(0)
    m = Rotation.build(build_backbone("resnet_narrow", 3, 16, width=4), {"hidden_dim": 16}, image_shape=(3, 16, 16))
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    loss, extra = m.loss(x, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss) and 0 <= extra["acc"].item() <= 1
    assert m.head[-1].out_features == 4
