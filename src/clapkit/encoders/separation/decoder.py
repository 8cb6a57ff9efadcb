"""Query-conditioned decoders over an encoder's multi-level features.

A decoder takes the encoder's feature pyramid (shallow to deep ``[B, C, H, W]`` maps, as
:class:`~clapkit.encoders.base.EncoderOutput` ``features``) and a condition vector, and
returns frame features ``[B, frames, feature_dim]`` that :class:`MaskNet` turns into a mask.

:class:`PatchExpandDecoder` is CLAPSep's: FiLM on the deepest map, then stages that each
expand patches 2x (the inverse of Swin patch merging), run Swin blocks and add a FiLM'd
skip from the encoder map of the same size, and finally an inverse patch embedding back to
the HTSAT spectrogram image (256x256 for 1024 frames x 64 bins), unfolded to frames.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import nn

from clapkit.encoders.htsat import SwinBlock, swin_init
from clapkit.encoders.separation.film import FiLM, FiLMSkip


class SeparationDecoder(nn.Module, ABC):
    """Contract of every decoder: ``(features, condition) -> [B, frames, feature_dim]``.

    Args:
        spec_size: side of the square spectrogram image the encoder folded its input into.
        feature_dim: bins per frame of the output (the encoder's mel bins).
        patch_stride: stride of the encoder's patch embedding.
    """

    def __init__(self, spec_size: int = 256, feature_dim: int = 64, patch_stride: int = 4):
        super().__init__()
        if spec_size % feature_dim:
            raise ValueError(f"spec_size {spec_size} must be a multiple of feature_dim {feature_dim}")
        self.spec_size = spec_size
        self.feature_dim = feature_dim
        self.patch_stride = patch_stride
        self.freq_ratio = spec_size // feature_dim

    @property
    def num_frames(self) -> int:
        """Frames covered by the decoder output (1024 for HTSAT)."""
        return self.spec_size * self.freq_ratio

    def image_to_frames(self, image: torch.Tensor) -> torch.Tensor:
        """Undo HTSAT's fold: ``[B, 1, S, S]`` (rows = time chunk x bin) -> ``[B, S * r, S / r]``."""
        b, _, rows, cols = image.shape
        x = image.reshape(b, self.freq_ratio, rows // self.freq_ratio, cols)
        return x.permute(0, 1, 3, 2).reshape(b, self.freq_ratio * cols, rows // self.freq_ratio)

    @abstractmethod
    def forward(self, features: list[torch.Tensor], condition: torch.Tensor) -> torch.Tensor: ...


class PatchExpand(nn.Module):
    """Inverse of Swin patch merging: ``[B, H, W, C_in] -> [B, 2H, 2W, C_out]`` via a linear expand.

    The expanded ``4 * (C/2)`` channels are read as the four 2x2 neighbours in patch-merging
    order (row-even/col-even, row-odd/col-even, row-even/col-odd, row-odd/col-odd), so the
    decoder mirrors the encoder's downsampling.

    Args:
        in_dim: input channels.
        out_dim: output channels (``in_dim // 2`` in CLAPSep).
    """

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.out_dim = out_dim
        self.expand = nn.Linear(in_dim, 4 * out_dim, bias=False)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        x = self.expand(x).view(b, h, w, 2, 2, self.out_dim)  # (col parity, row parity)
        x = x.permute(0, 1, 4, 2, 3, 5).reshape(b, 2 * h, 2 * w, self.out_dim)
        return self.norm(x)


class DecoderStage(nn.Module):
    """Optional 2x patch expansion followed by Swin blocks (alternating window shifts).

    Args:
        in_dim: channels entering the stage.
        dim: channels of the stage.
        resolution: token grid side after expansion.
        depth: number of Swin blocks.
        num_heads: attention heads.
        window_size: attention window side.
        expand: expand patches 2x first.
        mlp_ratio: MLP width multiple.
        drop_path: stochastic depth per block.
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        resolution: int,
        depth: int,
        num_heads: int,
        window_size: int,
        expand: bool,
        mlp_ratio: float = 4.0,
        drop_path: list[float] | None = None,
    ):
        super().__init__()
        self.expand = PatchExpand(in_dim, dim) if expand else None
        drop_path = drop_path or [0.0] * depth
        self.blocks = nn.ModuleList(
            SwinBlock(dim, (resolution, resolution), num_heads, window_size, shift=i % 2 == 1,
                      mlp_ratio=mlp_ratio, drop_path=drop_path[i])
            for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, C_in]`` -> ``[B, H', W', C]`` (``H' = 2H`` when expanding)."""
        if self.expand is not None:
            x = self.expand(x)
        b, h, w, c = x.shape
        tokens = x.reshape(b, h * w, c)
        for block in self.blocks:
            tokens = block(tokens)
        return tokens.view(b, h, w, c)


class InversePatchEmbed(nn.Module):
    """LayerNorm + transposed conv from the token grid back to a one-channel image.

    Args:
        dim: token channels.
        patch_size: kernel side of the encoder's patch embedding.
        patch_stride: stride of the encoder's patch embedding.
    """

    def __init__(self, dim: int, patch_size: int = 4, patch_stride: int = 4):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        padding = (patch_size - patch_stride) // 2
        self.proj = nn.ConvTranspose2d(dim, 1, kernel_size=patch_size, stride=patch_stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, W, C]`` -> ``[B, 1, H * stride, W * stride]``."""
        return self.proj(self.norm(x).permute(0, 3, 1, 2))


def _tokens(feature: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` map -> ``[B, H, W, C]`` channels-last grid."""
    return feature.permute(0, 2, 3, 1)


class PatchExpandDecoder(SeparationDecoder):
    """CLAPSep's FiLM-conditioned Swin decoder with patch expansion and FiLM'd skips.

    Stage ``k`` (deep to shallow) has ``embed_dim * 2**(S-1-k)`` channels; the deepest keeps the
    bottleneck resolution, the others expand 2x. Encoder maps are read as in CLAPSep: the
    last is the bottleneck, the ones before it (deep to shallow) are the skips.

    Args:
        encoder_dims: channels of the encoder's feature maps, shallow to deep (HTSAT-base:
            ``[128, 256, 512, 1024, 1024]`` for patch embed + 4 stages).
        cond_dim: width of the condition (positive + negative query embeddings).
        embed_dim: channels of the shallowest decoder stage.
        depths: Swin blocks per stage, shallow to deep.
        num_heads: attention heads per stage, shallow to deep.
        window_size: attention window side.
        mlp_ratio: MLP width multiple.
        drop_path_rate: maximum stochastic depth (linearly spread over blocks).
        spec_size: side of the encoder's spectrogram image.
        feature_dim: bins per frame of the output (the encoder's mel bins).
        patch_size: kernel of the encoder's patch embedding.
        patch_stride: stride of the encoder's patch embedding.
        film_skips: FiLM-modulate the skip connections (the bottleneck is always modulated).
    """

    def __init__(
        self,
        encoder_dims: list[int] = (128, 256, 512, 1024, 1024),
        cond_dim: int = 1024,
        embed_dim: int = 128,
        depths: list[int] = (1, 1, 1, 1),
        num_heads: list[int] = (4, 8, 16, 32),
        window_size: int = 8,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.1,
        spec_size: int = 256,
        feature_dim: int = 64,
        patch_size: int = 4,
        patch_stride: int = 4,
        film_skips: bool = True,
    ):
        super().__init__(spec_size=spec_size, feature_dim=feature_dim, patch_stride=patch_stride)
        depths, num_heads, encoder_dims = list(depths), list(num_heads), list(encoder_dims)
        num_stages = len(depths)
        if len(encoder_dims) < num_stages + 1:
            raise ValueError(f"need {num_stages + 1} encoder feature maps for {num_stages} stages, got {encoder_dims}")
        grid = spec_size // patch_stride
        dims = [embed_dim * 2**i for i in range(num_stages)]
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.bottleneck = FiLMSkip(encoder_dims[-1], dims[-1], cond_dim)
        self.stages = nn.ModuleList()
        self.skips = nn.ModuleList()
        for i in reversed(range(num_stages)):
            deepest = i == num_stages - 1
            self.stages.append(
                DecoderStage(
                    in_dim=dims[i] if deepest else dims[i + 1],
                    dim=dims[i],
                    resolution=grid // 2**i,
                    depth=depths[i],
                    num_heads=num_heads[i],
                    window_size=window_size,
                    expand=not deepest,
                    mlp_ratio=mlp_ratio,
                    drop_path=dpr[sum(depths[:i]) : sum(depths[: i + 1])],
                )
            )
            self.skips.append(FiLMSkip(encoder_dims[i], dims[i], cond_dim, film=film_skips))
        self.inverse_patch_embed = InversePatchEmbed(embed_dim, patch_size, patch_stride)
        self.apply(_init_weights)

    def forward(self, features: list[torch.Tensor], condition: torch.Tensor) -> torch.Tensor:
        skips = features[:-1][::-1]
        h = self.bottleneck(_tokens(features[-1]), condition)
        for stage, skip_net, skip in zip(self.stages, self.skips, skips):
            h = stage(h)
            h = skip_net(_tokens(skip), condition, h)
        return self.image_to_frames(self.inverse_patch_embed(h))


def _init_weights(module: nn.Module) -> None:
    swin_init(module)
    if isinstance(module, FiLM):
        module.reset_parameters()  # apply() visits children first, so this runs last
