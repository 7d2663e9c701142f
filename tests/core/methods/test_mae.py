"""MAE: patches, per-sample masking, loss on masked patches only, encoder blind to hidden pixels,
the all-visible path."""
from __future__ import annotations

import pytest
import torch

from ssl_core.augment import augment_batch
from ssl_core.methods.mae import MAE, masked_mse, patch_targets, patchify, random_masking, unpatchify
from ssl_core.models.backbones import Backbone, ViTTrunk

SIZE, PATCH, N = 16, 4, 16


def make(**params):
    torch.manual_seed(0)
    backbone = Backbone(ViTTrunk(SIZE, 3, PATCH, dim=32, depth=2, heads=2), 32, 3, "vit_tiny")
    return MAE.build(backbone, {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2, **params},
                     image_shape=(3, SIZE, SIZE))


def test_patchify_is_row_major_and_inverts():
    x = torch.rand(2, 3, SIZE, SIZE)
    patches = patchify(x, PATCH)
    assert patches.shape == (2, N, PATCH * PATCH * 3)
    r, c = divmod(6, SIZE // PATCH)                      # patch 6 = row 1, column 2
    block = x[:, :, r * PATCH:(r + 1) * PATCH, c * PATCH:(c + 1) * PATCH].permute(0, 2, 3, 1).reshape(2, -1)
    assert torch.equal(patches[:, 6], block)
    assert torch.equal(unpatchify(patches, PATCH, 3, (SIZE, SIZE)), x)


def test_random_masking_hides_the_ratio_per_sample():
    ids, mask, keep = random_masking(8, N, 0.75, torch.Generator().manual_seed(0), "cpu")
    assert keep == 4 and torch.equal(mask.sum(1), torch.full((8,), 12.0))
    for row in range(8):                                 # visible = the first `keep` of the shuffle
        assert set(torch.nonzero(mask[row] == 0).flatten().tolist()) == set(ids[row, :keep].tolist())
    assert len({tuple(m.tolist()) for m in mask}) > 1    # masks differ between samples


def test_masked_mse_uses_masked_patches_only():
    gen = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, N, 5, generator=gen), torch.randn(2, N, 5, generator=gen)
    _, mask, _ = random_masking(2, N, 0.5, gen, "cpu")
    reference = sum(((pred[b, n] - target[b, n]) ** 2).mean() for b in range(2) for n in range(N) if mask[b, n])
    reference = reference / mask.sum()
    loss = masked_mse(pred, target, mask)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    visible = (mask == 0)[..., None]
    assert torch.equal(masked_mse(torch.where(visible, pred + 5, pred), target, mask), loss)
    assert torch.equal(masked_mse(pred, torch.where(visible, torch.rand_like(target), target), mask), loss)
    assert masked_mse(torch.where(~visible, pred + 1, pred), target, mask) != loss


def test_encoder_never_sees_hidden_pixels():
    m = make().eval()
    x = torch.rand(3, 3, SIZE, SIZE)
    pred, mask = m.predict(x, torch.Generator().manual_seed(1))
    hidden = unpatchify(mask[..., None].expand(-1, -1, PATCH * PATCH * 3), PATCH, 3, (SIZE, SIZE)).bool()
    x2 = torch.where(hidden, torch.rand_like(x), x)
    pred2, mask2 = m.predict(x2, torch.Generator().manual_seed(1))
    assert torch.equal(mask, mask2)
    torch.testing.assert_close(pred2, pred)


def test_method_loss_is_masked_mse_of_normalised_patches():
    m = make().train()
    x_u8 = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8)
    loss, _ = m.loss(x_u8, torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(2)
    x = augment_batch(x_u8, m.augment, gen)
    pred, mask = m.predict(x, gen)
    target = patch_targets(x, PATCH, norm_pix=True)
    assert torch.allclose(target.mean(-1), torch.zeros(4, N), atol=1e-5)
    assert loss.item() == pytest.approx(masked_mse(pred, target, mask).item(), rel=1e-6)


def test_all_visible_path_is_the_evaluation_encoder():
    m = make().eval()
    x = torch.rand(2, 3, SIZE, SIZE)
    ids, mask, keep = random_masking(2, N, 0.0, torch.Generator().manual_seed(0), "cpu")
    assert keep == N and not mask.any()
    latent = m.encode(x, ids)                            # every patch, in shuffled order
    torch.testing.assert_close(latent[:, 0], m.backbone(x), rtol=1e-4, atol=1e-5)
    recon, mask = m.reconstruct(x)
    assert recon.shape == x.shape and not mask.any()
    pred, _ = m.predict(x, None, mask_ratio=0.0)
    target = patch_targets(x, PATCH, norm_pix=True)
    assert masked_mse(pred, target, mask).item() == pytest.approx(((pred - target) ** 2).mean().item(), rel=1e-6)


def test_mask_ratio_and_backbone_are_validated():
    with pytest.raises(ValueError, match="mask_ratio"):
        make(mask_ratio=1.0)
    from ssl_core.models.backbones import build_backbone
    with pytest.raises(ValueError, match="ViT"):
        MAE.build(build_backbone("resnet_narrow", 3, SIZE, width=4), image_shape=(3, SIZE, SIZE))
