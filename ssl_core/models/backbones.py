"""Encoders: torchvision ResNets (optional small-image stem), a narrow ResNet for CPU runs, a small ViT.

Every backbone takes float images in [0, 1] shaped [B, C, H, W] and returns features [B, out_dim].
Input normalisation lives inside, so an exported encoder is self-contained. Any image size works
(multi-crop feeds smaller local views): the ResNets pool globally, the ViT resizes its position
embeddings to the patch grid of the input.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# torchvision is imported where a model is built, not here: the params schema imports this module for
# BACKBONE_NAMES, and torchvision's import would otherwise delay every command that reads params (README:
# "Your data at scale" has the measured cost)

RESNET_NAMES = ("resnet18", "resnet34", "resnet50", "resnet_narrow")
BACKBONE_NAMES = RESNET_NAMES + ("vit_tiny",)


class Backbone(nn.Module):
    """Wraps a trunk: normalise -> trunk -> [B, out_dim] features."""

    def __init__(self, trunk: nn.Module, out_dim: int, in_channels: int, name: str):
        super().__init__()
        self.trunk = trunk
        self.out_dim = out_dim
        self.in_channels = in_channels
        self.name = name
        # Fixed normalisation (images are in [0, 1]); BatchNorm/LayerNorm absorb the rest.
        self.register_buffer("mean", torch.full((1, in_channels, 1, 1), 0.5), persistent=False)
        self.register_buffer("std", torch.full((1, in_channels, 1, 1), 0.25), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk((x - self.mean) / self.std)


def _resnet(name: str, in_channels: int, small_stem: bool, width: int, stem_stride: int = 1) -> tuple[nn.Module, int]:
    from torchvision.models import resnet

    if name == "resnet_narrow":
        # ResNet-18 layout at a fraction of the width: what a 2-core CPU can pretrain in minutes.
        net = resnet.ResNet(resnet.BasicBlock, [2, 2, 2, 2], width_per_group=64)
        net = _rewidth(net, width)
    else:
        net = getattr(resnet, name)(weights=None)
    out_dim = net.fc.in_features
    stem_out = net.conv1.out_channels
    if small_stem:
        # stem_stride 2 halves the first feature map: ~4x cheaper, what a 2-core CPU can afford
        net.conv1 = nn.Conv2d(in_channels, stem_out, kernel_size=3, stride=stem_stride, padding=1, bias=False)
        net.maxpool = nn.Identity()
    elif in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, stem_out, kernel_size=7, stride=2, padding=3, bias=False)
    net.fc = nn.Identity()
    return net, out_dim


def _rewidth(net: nn.Module, width: int) -> nn.Module:
    """Rebuild a BasicBlock ResNet whose stages have width, 2w, 4w, 8w channels."""
    from torchvision.models import resnet

    narrow = resnet.ResNet.__new__(resnet.ResNet)
    nn.Module.__init__(narrow)
    narrow._norm_layer = nn.BatchNorm2d
    narrow.inplanes, narrow.dilation, narrow.groups, narrow.base_width = width, 1, 1, 64
    narrow.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
    narrow.bn1 = nn.BatchNorm2d(width)
    narrow.relu = nn.ReLU(inplace=True)
    narrow.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    narrow.layer1 = narrow._make_layer(resnet.BasicBlock, width, 2)
    narrow.layer2 = narrow._make_layer(resnet.BasicBlock, width * 2, 2, stride=2)
    narrow.layer3 = narrow._make_layer(resnet.BasicBlock, width * 4, 2, stride=2)
    narrow.layer4 = narrow._make_layer(resnet.BasicBlock, width * 8, 2, stride=2)
    narrow.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    narrow.fc = nn.Linear(width * 8, 1000)
    for m in narrow.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return narrow


class ViTTrunk(nn.Module):
    """torchvision VisionTransformer sized for 28-32 px images; returns the class token."""

    def __init__(self, image_size: int, in_channels: int, patch_size: int, dim: int = 192, depth: int = 6, heads: int = 3):
        from torchvision.models.vision_transformer import VisionTransformer

        super().__init__()
        self.vit = VisionTransformer(image_size=image_size, patch_size=patch_size, num_layers=depth,
                                     num_heads=heads, hidden_dim=dim, mlp_dim=dim * 4, num_classes=1)
        if in_channels != 3:
            self.vit.conv_proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=patch_size)
        self.vit.heads = nn.Identity()
        self.patch_size = patch_size
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] == (self.vit.image_size, self.vit.image_size):
            return self.vit(x)
        return self.encode_tokens(self.patch_tokens(x))[:, 0]   # another size (multi-crop): class token

    def position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Patch position embeddings for a grid_h x grid_w patch grid, [1, grid_h * grid_w, dim]: the learned
        ones, resized bicubically when the grid differs from the training size's (as DINO's ViT)."""
        pos = self.vit.encoder.pos_embedding[:, 1:]
        side = self.vit.image_size // self.patch_size
        if (grid_h, grid_w) == (side, side):
            return pos
        grid = pos.reshape(1, side, side, self.dim).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bicubic", align_corners=False)
        return grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, self.dim)

    # Patch-level access (MAE encodes only the visible patches; dense pretext heads read patch tokens).
    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images -> patch embeddings plus their position embeddings, [B, N, dim] row-major.
        A side that is not a multiple of the patch size loses its last partial patch (the convolution's floor)."""
        if x.shape[-2:] == (self.vit.image_size, self.vit.image_size):
            return self.vit._process_input(x) + self.vit.encoder.pos_embedding[:, 1:]
        grid = self.vit.conv_proj(x)                                 # [B, dim, h, w]
        tokens = grid.flatten(2).transpose(1, 2)
        return tokens + self.position_embedding(grid.shape[-2], grid.shape[-1])

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Prepend the class token and run the transformer on any subset of patch tokens: [B, 1 + n, dim].

        With all N tokens this is exactly the standard forward (whose output is row 0).
        """
        enc = self.vit.encoder
        cls = (self.vit.class_token + enc.pos_embedding[:, :1]).expand(tokens.shape[0], -1, -1)
        return enc.ln(enc.layers(enc.dropout(torch.cat([cls, tokens], dim=1))))


def feature_map(backbone: Backbone, x: torch.Tensor) -> torch.Tensor:
    """Spatial features before pooling, [B, out_dim, h, w], for dense pretext heads (colorization).

    ResNet: the layer4 map; ViT: the patch tokens laid back on their grid.
    """
    x = (x - backbone.mean) / backbone.std
    trunk = backbone.trunk
    if isinstance(trunk, ViTTrunk):
        tokens = trunk.encode_tokens(trunk.patch_tokens(x))[:, 1:]
        h, w = x.shape[-2] // trunk.patch_size, x.shape[-1] // trunk.patch_size
        return tokens.transpose(1, 2).reshape(x.shape[0], trunk.dim, h, w)
    net = trunk
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def vit_patch_size(image_size: int) -> int:
    for p in (4, 7, 8, 2):
        if image_size % p == 0:
            return p
    raise ValueError(f"data.image_size {image_size} has no ViT patch size among 2, 4, 7, 8")


def build_backbone(name: str, in_channels: int, image_size: int, small_stem: bool = True, width: int = 32,
                   stem_stride: int = 1) -> Backbone:
    if name in RESNET_NAMES:
        trunk, out_dim = _resnet(name, in_channels, small_stem, width, stem_stride)
    elif name == "vit_tiny":
        trunk = ViTTrunk(image_size, in_channels, vit_patch_size(image_size))
        out_dim = trunk.dim
    else:
        raise ValueError(f"unknown backbone {name!r}; allowed: {', '.join(BACKBONE_NAMES)}")
    return Backbone(trunk, out_dim, in_channels, name)
