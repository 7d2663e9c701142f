"""MAE (He et al. 2022): masked autoencoding with a ViT, the image analogue of masked-token modelling.

Per image, a random mask_ratio of the patches is hidden (noise from the step's generator, argsort,
keep the first len_keep -- the paper's per-sample shuffle). The encoder -- the backbone's own ViT,
same weights as the exported feature extractor -- sees only the visible patches (plus the class
token). A light transformer decoder gets the encoded visible tokens and a shared mask token at
every hidden position, each with a decoder position embedding, and predicts every patch's pixels.
The loss is the mean squared error on the masked patches only; with norm_pix_loss, each target
patch is normalised by its own mean and variance first (the paper's best setting). With mask_ratio
0 nothing is hidden and the objective becomes plain reconstruction of every patch.

Evaluation uses the backbone's normal forward: all patches, class token.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ssl_core.augment import augment_batch
from ssl_core.methods.base import SSLMethod, check_ints
from ssl_core.models.backbones import ViTTrunk


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, N, p*p*C], patches row-major (the ViT's token order), pixels (py, px, c)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, p: int, channels: int, hw: tuple[int, int]) -> torch.Tensor:
    b = patches.shape[0]
    gh, gw = hw[0] // p, hw[1] // p
    x = patches.reshape(b, gh, gw, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, gh * p, gw * p)


def random_masking(b: int, n: int, mask_ratio: float, gen: torch.Generator | None,
                   device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(ids_shuffle [B, N]: visible patches first, mask [B, N]: 1 = hidden, number visible per image)."""
    keep = max(1, int(round(n * (1 - mask_ratio))))
    ids_shuffle = torch.argsort(torch.rand(b, n, generator=gen, device=device), dim=1)
    mask = torch.ones(b, n, device=device)
    mask[:, :keep] = 0
    mask = torch.gather(mask, 1, torch.argsort(ids_shuffle, dim=1))   # back to patch order
    return ids_shuffle, mask, keep


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over hidden patches of the per-patch MSE; over all patches if none is hidden."""
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    weight = torch.where(mask.sum() > 0, mask, torch.ones_like(mask))   # no host sync
    return (per_patch * weight).sum() / weight.sum()


def patch_targets(x: torch.Tensor, p: int, norm_pix: bool) -> torch.Tensor:
    target = patchify(x, p)
    if norm_pix:
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    return target


class MAE(SSLMethod):
    name = "mae"
    backbone_family = "vit"

    @dataclass
    class Params:
        mask_ratio: float = 0.75
        norm_pix_loss: bool = True
        decoder_dim: int = 128
        decoder_depth: int = 2
        decoder_heads: int = 4

        def __post_init__(self) -> None:
            if not 0 <= self.mask_ratio < 1:
                raise ValueError(f"pretrain.method_params.mask_ratio must be in [0, 1), got {self.mask_ratio}")
            check_ints(self, 1, 4096, "decoder_dim")
            check_ints(self, 1, 64, "decoder_depth", "decoder_heads")
            if self.decoder_dim % self.decoder_heads:
                raise ValueError("pretrain.method_params.decoder_dim must be a multiple of decoder_heads")

    # The paper's recipe: random resized crop and flip, no colour augmentation.
    augment_recipe = {"crop_scale": (0.2, 1.0), "jitter_p": 0.0, "gray_p": 0.0}

    def __init__(self, backbone, params, augment, image_shape):
        super().__init__(backbone, params, augment, image_shape)
        trunk = getattr(backbone, "trunk", None)
        if not isinstance(trunk, ViTTrunk):
            raise ValueError("mae needs a ViT backbone (pretrain.backbone: vit_tiny)")
        c, h, w = image_shape
        self.patch = trunk.patch_size
        self.num_patches = (h // self.patch) * (w // self.patch)
        d = params.decoder_dim
        self.decoder_embed = nn.Linear(trunk.dim, d)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, d).normal_(std=0.02))
        self.decoder_pos = nn.Parameter(torch.zeros(1, 1 + self.num_patches, d).normal_(std=0.02))
        layer = nn.TransformerEncoderLayer(d, params.decoder_heads, 4 * d, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.decoder = nn.TransformerEncoder(layer, params.decoder_depth, enable_nested_tensor=False)
        self.decoder_norm = nn.LayerNorm(d)
        self.decoder_pred = nn.Linear(d, self.patch * self.patch * c)

    def encode(self, x: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        """Float images, indices of the visible patches [B, n] -> encoder output [B, 1 + n, dim]."""
        trunk: ViTTrunk = self.backbone.trunk
        tokens = trunk.patch_tokens((x - self.backbone.mean) / self.backbone.std)
        visible = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, tokens.shape[-1]))
        return trunk.encode_tokens(visible)

    def decode(self, latent: torch.Tensor, ids_shuffle: torch.Tensor) -> torch.Tensor:
        """Encoded [cls, visible...] + mask tokens -> predicted pixels for every patch [B, N, p*p*C]."""
        x = self.decoder_embed(latent)
        b, n = x.shape[0], self.num_patches
        hidden = self.mask_token.expand(b, n - (x.shape[1] - 1), -1)
        seq = torch.cat([x[:, 1:], hidden], dim=1)                    # shuffled order
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        seq = torch.gather(seq, 1, ids_restore[..., None].expand(-1, -1, seq.shape[-1]))
        seq = torch.cat([x[:, :1], seq], dim=1) + self.decoder_pos
        return self.decoder_pred(self.decoder_norm(self.decoder(seq)))[:, 1:]

    def predict(self, x: torch.Tensor, gen: torch.Generator | None,
                mask_ratio: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Float images -> (predicted patches [B, N, p*p*C], mask [B, N] with 1 = hidden)."""
        ratio = self.params.mask_ratio if mask_ratio is None else mask_ratio
        ids_shuffle, mask, keep = random_masking(x.shape[0], self.num_patches, ratio, gen, x.device)
        latent = self.encode(x, ids_shuffle[:, :keep])
        return self.decode(latent, ids_shuffle), mask

    def reconstruct(self, x: torch.Tensor, gen: torch.Generator | None = None,
                    mask_ratio: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstructed images [B, C, H, W] (in target space) and the mask; all patches visible by default."""
        pred, mask = self.predict(x, gen, mask_ratio)
        return unpatchify(pred, self.patch, x.shape[1], tuple(x.shape[-2:])), mask

    def loss(self, images_u8, gen):
        x = augment_batch(images_u8, self.augment, gen)
        pred, mask = self.predict(x, gen)
        target = patch_targets(x, self.patch, self.params.norm_pix_loss)
        return masked_mse(pred, target, mask), {}
