r"""HTS-AT (Chen et al., ICASSP 2022): a Swin Transformer over a folded log-mel, as in LAION-CLAP.

Pipeline (LAION-CLAP's numerics, so its checkpoints give its outputs): waveform -> log-mel ``[frames, 64]``
(:class:`~clapkit.encoders.fusion.ClipBatcher` fits any length to the 10 s window, and builds
the 4-view stack when fusion is on) -> ``bn0`` over mel bins -> time axis to 1024 frames
(bicubic, ``align_corners=True``; or zero-padding for CLAPSep) -> fold 4 chunks of 256 frames
into a 256x256 image whose row ``r = chunk * 64 + mel_bin`` and column ``c`` = frame within the
chunk -> 4x4 patch embedding -> 4 Swin stages (window attention through
``scaled_dot_product_attention``; patch merging between stages) -> LayerNorm -> mean over the
final tokens = ``embedding``.

Multi-level features contract (``EncoderOutput.features``, CLAPSep's skips), all ``[B, C, H, W]``
on the token grid (``H`` = image rows / patch, ``W`` = image columns / patch, raster order as
the tokens):

- ``features[0]``: patch-embedding output (after its LayerNorm; after fusion when enabled),
  ``[B, D, 64, 64]``;
- ``features[i]`` for ``i = 1..4``: output of stage ``i`` **after** its patch merging (what the
  next stage consumes, i.e. the reference ``BasicLayer`` output): ``[B, 2D, 32, 32]``,
  ``[B, 4D, 16, 16]``, ``[B, 8D, 8, 8]`` and, for the last stage (no merging),
  ``[B, 8D, 8, 8]``; ``features[4]`` is before the final LayerNorm.

``extras``: ``stage_outputs_premerge`` (each stage's output before merging, ``[B, C, H, W]``),
``clipwise_logits`` ``[B, classes]`` and ``framewise_logits`` ``[B, 32, classes]`` from the
reference's ``tscam_conv`` head, ``longer`` (fusion flags) and ``mel`` (the normalised,
resized, unfolded input ``[B, C, 1024, 64]``). ``tokens`` holds the final normalised tokens
``[B, 64, 8D]``.

Module and parameter names follow the reference (``patch_embed.proj``, ``layers.{i}.blocks.{j}
.attn.qkv``/``.proj``, ``layers.{i}.downsample.reduction``, ``norm``, ``tscam_conv``) so the
LAION-CLAP key map is a prefix rename. Attention keeps fused ``qkv`` and ``proj`` linears
(LoRA targets in CLAPSep). Note that ``patch_embed.proj`` (a Conv2d) shares the name ``proj``
with the reference; to adapt only the attention, target ``r".*\.attn\.(qkv|proj)"`` in peft.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from clapkit.encoders import fused_linear
from clapkit.encoders.base import EncoderOutput, Extras, FeatureAudioEncoder
from clapkit.encoders.frontends import LogMel
from clapkit.encoders.frontends import spec_augment as apply_spec_augment
from clapkit.encoders.fusion import AttentionalFeatureFusion, ClipBatcher, PadMode

Variant = Literal["tiny", "base", "large", "test"]


class DropPath(nn.Module):
    """Stochastic depth (timm's ``drop_path``), importing timm only when it runs: in training
    with a non-zero rate. Importing timm pulls in torchvision, seconds of start-up that
    inference (where this is the identity) never needs.

    Args:
        drop_prob: probability of dropping the residual branch of a sample.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        from timm.layers import drop_path

        return drop_path(x, self.drop_prob, True)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


@dataclass(frozen=True)
class HTSATGeometry:
    """Width and depth of one HTSAT preset."""

    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int = 8


PRESETS: dict[str, HTSATGeometry] = {
    "tiny": HTSATGeometry(96, (2, 2, 6, 2), (4, 8, 16, 32)),
    "base": HTSATGeometry(128, (2, 2, 12, 2), (4, 8, 16, 32)),
    "large": HTSATGeometry(256, (2, 2, 12, 2), (4, 8, 16, 32)),
    "test": HTSATGeometry(16, (2, 2, 2, 2), (1, 2, 2, 4)),
}


class WindowAttention(nn.Module):
    """Multi-head self-attention inside windows, with a learned relative position bias.

    Args:
        dim: token width.
        window_size: window side in tokens.
        num_heads: attention heads.
        attn_drop: attention dropout (training only).
        proj_drop: dropout after the output projection.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int, attn_drop: float = 0.0,
                 proj_drop: float = 0.0):
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.attn_drop = attn_drop
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij"))
        coords = coords.flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window_size - 1)
        index = rel[..., 0] * (2 * window_size - 1) + rel[..., 1]
        self.register_buffer("relative_position_index", index, persistent=False)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self._bias_cache: tuple | None = None
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self) -> torch.Tensor:
        """Relative position bias ``[heads, N, N]`` for the ``N = window**2`` tokens of a window."""
        n = self.window_size**2
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        return bias.permute(2, 0, 1)

    def attention_bias(self, mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """Additive bias ``[1, heads, N, N]`` (``[1, nW * heads, N, N]`` with a shift mask).

        Without gradients it is computed once and reused until the table changes (a gather
        and an add per block per batch otherwise)."""
        table = self.relative_position_bias_table
        key = None
        if not torch.is_grad_enabled():
            key = (id(table), table._version, dtype, table.device,
                   None if mask is None else (id(mask), mask._version))
            if self._bias_cache is not None and self._bias_cache[0] == key:
                return self._bias_cache[1]
        bias = self.position_bias().unsqueeze(0).to(dtype)
        if mask is not None:
            n = bias.shape[-1]
            bias = (bias + mask.unsqueeze(1).to(dtype)).reshape(1, mask.shape[0] * self.num_heads, n, n)
        if key is not None:
            self._bias_cache = (key, bias)
        return bias

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``[B * nW, N, C]``; ``mask``: additive ``[nW, N, N]`` (shifted windows) or None."""
        windows, n, c = x.shape
        heads, dim = self.num_heads, c // self.num_heads
        bias = self.attention_bias(mask, x.dtype)
        dropout = self.attn_drop if self.training else 0.0
        if mask is None:
            q, k, v = fused_linear.linear(x, self.qkv).reshape(windows, n, 3, heads, dim).permute(2, 0, 3, 1, 4)
            out = self._attend(q, k, v, bias, dropout)
            return self.proj_drop(fused_linear.linear(out.transpose(1, 2).reshape(windows, n, c), self.proj))
        # Shifted windows: fold the windows of one clip into the head axis so the
        # [nW * heads, N, N] bias + mask broadcasts over the batch instead of being copied B times.
        nw = mask.shape[0]
        b = windows // nw
        qkv = fused_linear.linear(x, self.qkv).reshape(b, nw, n, 3, heads, dim)
        if not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            # Inference: one attention call per clip over strided views of qkv, with the
            # [nW, heads, N, N] bias as is: no copy of qkv to fold windows into heads. Not while
            # tracing (torch.export / ONNX / torch.compile): a loop over the batch would be
            # unrolled and fix the traced graph's batch size (an ONNX export took batch 2 only).
            per_clip = bias.view(nw, heads, n, n)
            out = torch.empty(b, nw, n, heads, dim, dtype=qkv.dtype, device=qkv.device)
            for i in range(b):
                q, k, v = qkv[i].permute(2, 0, 3, 1, 4)
                out[i] = F.scaled_dot_product_attention(q, k, v, attn_mask=per_clip, dropout_p=dropout).transpose(1, 2)
            return self.proj_drop(fused_linear.linear(out.view(windows, n, c), self.proj))
        # unbind, not qkv[0..2]: the backward of three selects zero-fills three copies of qkv.
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).reshape(3, b, nw * heads, n, dim).unbind(0)
        out = self._attend(q, k, v, bias, dropout)
        out = out.view(b, nw, heads, n, dim).permute(0, 1, 3, 2, 4).reshape(windows, n, c)
        return self.proj_drop(self.proj(out))

    @staticmethod
    def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, dropout: float) -> torch.Tensor:
        """Attention with an additive bias. SDPA's fused CPU kernels take no gradient for the
        mask, so with a learnable bias it runs its math path, whose safe softmax adds an
        ``isneginf``/``all``/``where`` pass per call; the same math written out skips it (the
        bias is finite: relative positions plus a -100 shift mask)."""
        if not (torch.is_grad_enabled() and bias.requires_grad and q.device.type == "cpu"):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)
        scores = torch.matmul(q * (q.shape[-1] ** -0.5), k.transpose(-2, -1)) + bias
        weights = F.dropout(scores.softmax(dim=-1), p=dropout) if dropout else scores.softmax(dim=-1)
        return torch.matmul(weights, v)


class Mlp(nn.Module):
    """Two-layer GELU MLP of a transformer block."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``fc2(act(fc1(x)))``, plus ``residual`` when given (fused into ``fc2`` in eval)."""
        hidden = self.drop(fused_linear.linear(x, self.fc1, self.act))
        if residual is not None and not self.training:
            return fused_linear.linear(hidden, self.fc2, residual=residual)
        out = self.drop(self.fc2(hidden))
        return out if residual is None else residual + out


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """``[B, H, W, C]`` -> ``[B * nW, window * window, C]``."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``[B * nW, window * window, C]`` -> ``[B, H, W, C]``."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


class SwinBlock(nn.Module):
    """One (shifted-)window transformer block on an ``H x W`` token grid.

    Args:
        dim: token width.
        resolution: ``(H, W)`` of the token grid.
        num_heads: attention heads.
        window_size: window side; shrinks to the grid (and the shift to 0) when the grid is smaller.
        shift: shift windows by half a window (odd blocks of a stage).
        mlp_ratio: hidden width of the MLP relative to ``dim``.
        drop: dropout on projections.
        attn_drop: attention dropout.
        drop_path: stochastic depth rate.
    """

    def __init__(self, dim: int, resolution: tuple[int, int], num_heads: int, window_size: int, shift: bool,
                 mlp_ratio: float = 4.0, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.resolution = resolution
        self.window_size = window_size
        self.shift_size = window_size // 2 if shift else 0
        if min(resolution) <= window_size:
            self.shift_size, self.window_size = 0, min(resolution)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, self.window_size, num_heads, attn_drop=attn_drop, proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.register_buffer("attn_mask", self._shift_mask() if self.shift_size else None, persistent=False)
        order = self._window_order()
        self.register_buffer("window_order", order, persistent=False)
        self.register_buffer("window_inverse", torch.argsort(order), persistent=False)

    def _window_order(self) -> torch.Tensor:
        """For each position of the (shifted) windows laid end to end, the token it holds:
        one gather then does what roll + window partition (and their inverses) do in several copies."""
        h, w = self.resolution
        grid = torch.arange(h * w, device="cpu").view(1, h, w, 1)
        if self.shift_size:
            grid = torch.roll(grid, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        return window_partition(grid, self.window_size).reshape(-1)

    def _shift_mask(self) -> torch.Tensor:
        h, w = self.resolution
        ws, ss = self.window_size, self.shift_size
        region = torch.zeros(1, h, w, 1, device="cpu")
        count = 0
        for hs in (slice(0, -ws), slice(-ws, -ss), slice(-ss, None)):
            for wsl in (slice(0, -ws), slice(-ws, -ss), slice(-ss, None)):
                region[:, hs, wsl, :] = count
                count += 1
        ids = window_partition(region, ws).squeeze(-1)  # [nW, N]
        diff = ids.unsqueeze(1) - ids.unsqueeze(2)
        return diff.masked_fill(diff != 0, -100.0).masked_fill(diff == 0, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, _, c = x.shape
        shortcut = x
        if not torch.is_grad_enabled():
            # Inference: gathers (a plain row copy each way) instead of roll + partition + reverse
            # + roll; the same numbers, fewer passes over memory. Training keeps the views, whose
            # backward is cheaper than a gather's.
            windows = self.norm1(x).index_select(1, self.window_order).view(-1, self.window_size**2, c)
            x = self.attn(windows, mask=self.attn_mask).view(b, h * w, c).index_select(1, self.window_inverse)
            x = shortcut + self.drop_path(x)
            if not self.training:  # drop path is the identity: the MLP adds the residual itself
                return self.mlp(self.norm2(x), residual=x)
            return x + self.drop_path(self.mlp(self.norm2(x)))
        x = self.norm1(x).view(b, h, w, c)
        if self.shift_size:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        x = self.attn(window_partition(x, self.window_size), mask=self.attn_mask)
        x = window_reverse(x, self.window_size, h, w)
        if self.shift_size:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        x = shortcut + self.drop_path(x.reshape(b, h * w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """2x2 neighbourhood concat -> LayerNorm -> linear ``4C -> 2C`` (halves the grid)."""

    def __init__(self, resolution: tuple[int, int], dim: int):
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.resolution
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return fused_linear.linear(self.norm(x.view(b, -1, 4 * c)), self.reduction)


class Stage(nn.Module):
    """A stage: ``depth`` Swin blocks alternating plain/shifted windows, then optional merging."""

    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, num_heads: int, window_size: int,
                 drop_path: list[float], downsample: bool, mlp_ratio: float = 4.0, drop: float = 0.0,
                 attn_drop: float = 0.0):
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, resolution, num_heads, window_size, shift=i % 2 == 1, mlp_ratio=mlp_ratio,
                      drop=drop, attn_drop=attn_drop, drop_path=drop_path[i])
            for i in range(depth)
        )
        self.downsample = PatchMerging(resolution, dim) if downsample else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(output before merging, output after merging)``."""
        for block in self.blocks:
            x = block(x)
        return x, (self.downsample(x) if self.downsample is not None else x)


class PatchEmbed(nn.Module):
    """4x4 patch embedding of the folded spectrogram, with optional attentional fusion.

    With fusion the global view (channel 0) goes through ``proj``; the three local crops of
    each longer clip go through ``mel_conv2d`` (kernel and stride ``(patch, 3 * patch)``), are
    laid side by side along the width, zero-padded/cut to the global map's width, and merged
    into the global map by :class:`~clapkit.encoders.fusion.AttentionalFeatureFusion`.
    """

    def __init__(self, embed_dim: int, patch_size: int = 4, fusion: bool = False):
        super().__init__()
        self.proj = nn.Conv2d(1, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.norm = nn.LayerNorm(embed_dim)
        if fusion:
            kernel = (patch_size, patch_size * 3)
            self.mel_conv2d = nn.Conv2d(1, embed_dim, kernel_size=kernel, stride=kernel)
            self.fusion_model = AttentionalFeatureFusion(embed_dim)
        self.fusion = fusion

    def forward(self, x: torch.Tensor, longer: torch.Tensor | None = None) -> torch.Tensor:
        """``x``: ``[B, C, S, S]`` image(s); returns the normalised map ``[B, D, S/p, S/p]``."""
        out = self.proj(x[:, :1])
        if self.fusion and longer is not None and bool(longer.any()):
            index = torch.nonzero(longer).squeeze(1)
            local = x[index, 1:]
            b, views, h, w = local.shape
            local = self.mel_conv2d(local.reshape(b * views, 1, h, w))
            local = local.view(b, views, *local.shape[1:]).permute(0, 2, 3, 1, 4).flatten(3)
            width = out.shape[-1]
            local = F.pad(local, (0, width - local.shape[-1])) if local.shape[-1] < width else local[..., :width]
            out = out.index_put((index,), self.fusion_model(out[index], local))
        b, d, h, w = out.shape
        return self.norm(out.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, d, h, w)


def swin_init(module: nn.Module) -> None:
    """Swin/HTSAT initialisation (for ``Module.apply``): truncated-normal linears, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class HTSAT(FeatureAudioEncoder):
    """Hierarchical Token-Semantic Audio Transformer, LAION-CLAP's main audio tower.

    Args:
        variant: ``tiny`` (dim 96, depths 2-2-6-2, out 768), ``base`` (128, 2-2-12-2, out 1024),
            ``large`` (256, 2-2-12-2, out 2048) or ``test`` (16, 2-2-2-2, out 128; fast tests).
        fusion: LAION-CLAP's ``aff_2d`` feature fusion for clips longer than the window.
        frontend: waveform -> log-mel module. Default: :class:`~clapkit.encoders.frontends.LogMel`
            with LAION-CLAP's parameters; with fusion, the reference's second mel path (HTK
            scale, no filter norm). Checkpoint converters pass a
            :class:`~clapkit.encoders.frontends.ConvLogMel` holding the official kernels.
        clip_samples: window length in samples (480000 = 10 s at 48 kHz; 1001 frames).
        pad_mode: how clips shorter than the window are filled (reference: ``repeatpad``).
        frame_align: ``interpolate`` resizes the frames to ``4 * spec_size`` bicubically
            (reference); ``pad`` pads them with the log floor instead (CLAPSep feeds HTSAT a
            spectrogram zero-padded to 1024 frames).
        spec_size: side of the folded square image (256).
        patch_size: patch side (4).
        classes_num: width of the ``tscam_conv`` AudioSet head (clipwise/framewise logits).
        drop_path_rate: stochastic depth rate, linearly increasing over the blocks.
        drop_rate: dropout after projections.
        attn_drop_rate: attention dropout.
        spec_augment: time/frequency stripe dropping while training (2 x 64 frames, 2 x 8 bins).
        embed_dim: override the preset's width (checkpoints with non-preset geometry).
        depths: override the preset's blocks per stage.
        num_heads: override the preset's heads per stage.
        window_size: override the preset's window side.
        fusion_antialias: resize the global fusion view with antialiasing (LAION-CLAP);
            ``False`` for Hugging Face ``ClapModel`` directories (plain bilinear).
    """

    def __init__(
        self,
        variant: Variant = "tiny",
        fusion: bool = False,
        frontend: nn.Module | None = None,
        clip_samples: int = 480000,
        pad_mode: PadMode = "repeatpad",
        frame_align: Literal["interpolate", "pad"] = "interpolate",
        spec_size: int = 256,
        patch_size: int = 4,
        classes_num: int = 527,
        drop_path_rate: float = 0.1,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        spec_augment: bool = True,
        embed_dim: int | None = None,
        depths: tuple[int, ...] | None = None,
        num_heads: tuple[int, ...] | None = None,
        window_size: int | None = None,
        fusion_antialias: bool = True,
    ):
        super().__init__()
        if variant not in PRESETS:
            raise ValueError(f"unknown HTSAT variant {variant!r}; expected one of {sorted(PRESETS)}")
        preset = PRESETS[variant]
        self.variant = variant
        self.geometry = HTSATGeometry(
            embed_dim or preset.embed_dim, tuple(depths or preset.depths), tuple(num_heads or preset.num_heads),
            window_size or preset.window_size,
        )
        if frontend is None:
            frontend = LogMel(mel_scale="htk", norm=None) if fusion else LogMel()
        self.fusion = fusion
        self.frontend = frontend
        self.batcher = ClipBatcher(clip_samples, pad_mode, fusion, antialias=fusion_antialias)
        self.frame_align = frame_align
        self.spec_size, self.patch_size = spec_size, patch_size
        n_mels = frontend.n_mels
        if spec_size % n_mels:
            raise ValueError(f"spec_size {spec_size} must be a multiple of the {n_mels} mel bins")
        self.freq_ratio = spec_size // n_mels
        self.spec_augment = spec_augment
        self.bn0 = nn.BatchNorm2d(n_mels)
        g = self.geometry
        self.patch_embed = PatchEmbed(g.embed_dim, patch_size, fusion)
        grid = spec_size // patch_size
        rates = torch.linspace(0, drop_path_rate, sum(g.depths), device="cpu").tolist()
        self.layers = nn.ModuleList()
        for i, (depth, heads) in enumerate(zip(g.depths, g.num_heads, strict=True)):
            side = grid // 2**i
            self.layers.append(Stage(
                g.embed_dim * 2**i, (side, side), depth, heads, g.window_size,
                rates[sum(g.depths[:i]):sum(g.depths[:i + 1])], downsample=i < len(g.depths) - 1,
                drop=drop_rate, attn_drop=attn_drop_rate,
            ))
        self.num_features = g.embed_dim * 2 ** (len(g.depths) - 1)
        self.norm = nn.LayerNorm(self.num_features)
        self.final_grid = grid // 2 ** (len(g.depths) - 1)
        self.tscam_conv = nn.Conv2d(self.num_features, classes_num,
                                    kernel_size=(self.final_grid // self.freq_ratio, 3), padding=(0, 1))
        self.apply(swin_init)

    @property
    def output_dim(self) -> int:
        return self.num_features

    @property
    def sample_rate(self) -> int:
        return self.frontend.sample_rate

    @property
    def clip_samples(self) -> int:
        return self.batcher.clip_samples

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None,
                crop_starts: torch.Tensor | None = None) -> EncoderOutput:
        """Embed a batch of waveforms at :attr:`sample_rate`.

        Args:
            waveform: ``[B, T]`` (or ``[B, C, T]``), any ``T``; zero-padded when ``lengths`` is given.
            lengths: valid samples per clip.
            crop_starts: ``[B, 3]`` fusion crop start frames for long clips (see
                :mod:`clapkit.encoders.fusion`).
        """
        batch = self.batcher(self.frontend, waveform, lengths, crop_starts, self.training)
        return self.forward_mel(batch.mel, batch.longer)

    def align_frames_by_padding(self) -> None:
        self.frame_align = "pad"

    def forward_mel(self, mel: torch.Tensor, longer: torch.Tensor | None = None) -> EncoderOutput:
        """Run on a log-mel ``[B, C, frames, n_mels]`` (C = 4 views with fusion) from the front end."""
        x = self._pad_frames(mel) if self.frame_align == "pad" else mel
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        if self.training and self.spec_augment:
            x = apply_spec_augment(x)
        if longer is None:
            longer = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
        if self.fusion and self.training and not bool(longer.any()):
            # The reference fuses one random clip of an all-short batch while training so the
            # fusion branch always gets gradients (its local views are copies of the global one).
            longer = longer.clone()
            longer[torch.randint(x.shape[0], (1,))] = True
        x = self._interpolate_frames(x)
        image = self._fold(x)
        tokens_map = self.patch_embed(image, longer if self.fusion else None)
        features = [tokens_map]
        premerge = []
        tokens = tokens_map.flatten(2).transpose(1, 2)
        for layer in self.layers:
            before, tokens = layer(tokens)
            premerge.append(_to_map(before))
            features.append(_to_map(tokens))
        tokens = self.norm(tokens)
        embedding = tokens.mean(dim=1)
        extras = Extras(stage_outputs_premerge=premerge, longer=longer, mel=x)
        # The AudioSet (TSCAM) head runs only when its logits are read: embeddings never do.
        head = functools.cache(lambda: self._tscam(tokens))
        extras.lazy("clipwise_logits", lambda: head()[0])
        extras.lazy("framewise_logits", lambda: head()[1])
        return EncoderOutput(embedding=embedding, features=features, tokens=tokens, extras=extras)

    @property
    def _target_frames(self) -> int:
        return self.spec_size * self.freq_ratio

    def _check_frames(self, frames: int) -> None:
        if frames > self._target_frames:
            raise ValueError(
                f"HTSAT takes at most {self._target_frames} frames, got {frames}; shorten the clip window"
            )

    def _pad_frames(self, mel: torch.Tensor) -> torch.Tensor:
        # CLAPSep zero-pads the power spectrogram to 1024 frames; after the log that is the floor.
        self._check_frames(mel.shape[2])
        floor = 10.0 * torch.log10(torch.tensor(float(getattr(self.frontend, "amin", 1e-10))))
        return F.pad(mel, (0, 0, 0, self._target_frames - mel.shape[2]), value=float(floor))

    def _interpolate_frames(self, x: torch.Tensor) -> torch.Tensor:
        self._check_frames(x.shape[2])
        if x.shape[2] == self._target_frames:
            return x
        return F.interpolate(x, (self._target_frames, x.shape[3]), mode="bicubic", align_corners=True)

    def _fold(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, 4*S, F]`` -> ``[B, C, S, S]``: row = chunk * F + mel bin, column = frame in chunk."""
        b, c, t, f = x.shape
        x = x.transpose(2, 3).reshape(b, c, f, self.freq_ratio, t // self.freq_ratio)
        return x.permute(0, 1, 3, 2, 4).reshape(b, c, f * self.freq_ratio, t // self.freq_ratio)

    def _tscam(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, _, c = tokens.shape
        side = self.final_grid
        x = tokens.transpose(1, 2).reshape(b, c, side, side)
        rows = side // self.freq_ratio
        x = x.reshape(b, c, self.freq_ratio, rows, side).permute(0, 1, 3, 2, 4).reshape(b, c, rows, -1)
        frames = self.tscam_conv(x).flatten(2)  # [B, classes, T']
        return frames.mean(dim=2), frames.transpose(1, 2)


def _to_map(tokens: torch.Tensor) -> torch.Tensor:
    """Square token grid ``[B, H*W, C]`` -> ``[B, C, H, W]``."""
    b, n, c = tokens.shape
    side = math.isqrt(n)
    return tokens.transpose(1, 2).reshape(b, c, side, side)
