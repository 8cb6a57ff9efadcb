"""A plain convolutional U-Net decoder: a drop-in alternative to the Swin decoder.

Same contract as :class:`~clapkit.encoders.separation.decoder.PatchExpandDecoder` (feature
pyramid + condition in, ``[B, frames, feature_dim]`` out) but stages are transposed-conv
upsampling followed by residual conv blocks, which is cheaper and has no window constraint.
"""

from __future__ import annotations

import torch
from torch import nn

from clapkit.encoders.separation.decoder import InversePatchEmbed, SeparationDecoder
from clapkit.encoders.separation.film import FiLMSkip


class ConvBlock(nn.Module):
    """Residual ``(conv3x3 -> GroupNorm -> GELU) x 2`` on ``[B, C, H, W]``.

    Args:
        dim: channels.
        groups: GroupNorm groups (reduced to a divisor of ``dim``).
    """

    def __init__(self, dim: int, groups: int = 8):
        super().__init__()
        groups = max(g for g in range(1, groups + 1) if dim % g == 0)
        self.net = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1),
            nn.GroupNorm(groups, dim),
            nn.GELU(),
            nn.Conv2d(dim, dim, 3, padding=1),
            nn.GroupNorm(groups, dim),
        )
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.net(x))


class UNetDecoder(SeparationDecoder):
    """FiLM-conditioned convolutional U-Net over the encoder's feature pyramid.

    Args:
        encoder_dims: channels of the encoder's feature maps, shallow to deep.
        cond_dim: width of the condition vector.
        embed_dim: channels of the shallowest decoder stage (doubling per stage).
        num_stages: upsampling stages (the encoder needs ``num_stages + 1`` maps).
        blocks_per_stage: residual conv blocks per stage.
        spec_size: side of the encoder's spectrogram image.
        feature_dim: bins per frame of the output (the encoder's mel bins).
        patch_size: kernel of the encoder's patch embedding.
        patch_stride: stride of the encoder's patch embedding.
    """

    def __init__(
        self,
        encoder_dims: list[int] = (128, 256, 512, 1024, 1024),
        cond_dim: int = 1024,
        embed_dim: int = 64,
        num_stages: int = 4,
        blocks_per_stage: int = 1,
        spec_size: int = 256,
        feature_dim: int = 64,
        patch_size: int = 4,
        patch_stride: int = 4,
    ):
        super().__init__(spec_size=spec_size, feature_dim=feature_dim, patch_stride=patch_stride)
        encoder_dims = list(encoder_dims)
        if len(encoder_dims) < num_stages + 1:
            raise ValueError(f"need {num_stages + 1} encoder feature maps for {num_stages} stages, got {encoder_dims}")
        dims = [embed_dim * 2**i for i in range(num_stages)]
        self.bottleneck = FiLMSkip(encoder_dims[-1], dims[-1], cond_dim)
        self.upsample = nn.ModuleList()
        self.blocks = nn.ModuleList()
        self.skips = nn.ModuleList()
        for i in reversed(range(num_stages)):
            deepest = i == num_stages - 1
            self.upsample.append(nn.Identity() if deepest else nn.ConvTranspose2d(dims[i + 1], dims[i], 2, stride=2))
            self.blocks.append(nn.Sequential(*[ConvBlock(dims[i]) for _ in range(blocks_per_stage)]))
            self.skips.append(FiLMSkip(encoder_dims[i], dims[i], cond_dim))
        self.inverse_patch_embed = InversePatchEmbed(dims[0], patch_size, patch_stride)

    def forward(self, features: list[torch.Tensor], condition: torch.Tensor) -> torch.Tensor:
        skips = features[:-1][::-1]
        h = self.bottleneck(features[-1].permute(0, 2, 3, 1), condition).permute(0, 3, 1, 2)
        for up, blocks, skip_net, skip in zip(self.upsample, self.blocks, self.skips, skips):
            h = blocks(up(h))
            h = skip_net(skip.permute(0, 2, 3, 1), condition, h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.image_to_frames(self.inverse_patch_embed(h.permute(0, 2, 3, 1)))
