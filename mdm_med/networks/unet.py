"""Timestep-conditioned U-Net that predicts x0 (guided-diffusion layout), 2-D or 3-D, with named decoder taps.

Decoder blocks are named ``dec{f}.{j}``: level with downsampling factor ``f`` (1, 2, 4, ...), block ``j`` in
``0..num_res_blocks``; the last block of every level but the finest upsamples, so its output has factor ``f / 2``.
At 256 x 256 the paper's taps (reference indices 8-12) are ``dec8.2, dec4.0, dec4.1, dec4.2, dec2.0``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TimestepUNet", "PRESETS", "build_unet", "timestep_embedding", "PAPER_TAPS"]

PAPER_TAPS = ("dec8.2", "dec4.0", "dec4.1", "dec4.2", "dec2.0")  # reference output blocks 8-12 at 256 x 256

PRESETS: dict[str, dict] = {
    # MDM_SPEC section 2: guided-diffusion UNet at 256 x 256, about 311 M parameters.
    "paper": dict(base_channels=192, channel_mult=(1, 1, 2, 2, 4, 4), num_res_blocks=2,
                  attention_levels=(False, False, False, True, True, True), head_channels=64),
    # Small enough for 2 CPU cores at 64-128 px crops; same block types and the same tap names.
    "cpu": dict(base_channels=32, channel_mult=(1, 2, 2, 4), num_res_blocks=1,
                attention_levels=(False, False, False, True), head_channels=32),
    # 3-D on 2 CPU cores (32^3 crops, ~2.4 M parameters at 1 input channel): the 2-D "cpu" widths cost ~4x more in 3-D.
    "cpu3d": dict(base_channels=16, channel_mult=(1, 2, 2, 4), num_res_blocks=1,
                  attention_levels=(False, False, False, True), head_channels=16),
    # 0.48 M parameters: the mdm_glas default on 2 CPU cores (a pretraining step 2.9x faster than "cpu"), and tests.
    "tiny": dict(base_channels=16, channel_mult=(1, 2, 2, 2), num_res_blocks=1,
                 attention_levels=(False, False, False, True), head_channels=16),
}


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding: (B,) integer or float timesteps -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=timesteps.device, dtype=torch.float32) / half)
    args = timesteps.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


def _conv(dims: int, *args, **kwargs) -> nn.Module:
    return (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1](*args, **kwargs)


def _norm(channels: int) -> nn.GroupNorm:
    groups = 32 if channels % 32 == 0 else 8 if channels % 8 == 0 else 1
    return nn.GroupNorm(groups, channels)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, timestep scale-shift on the second norm, optional 2x up/down, residual."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, emb_ch: int, dropout: float = 0.0,
                 up: bool = False, down: bool = False):
        super().__init__()
        self.dims, self.up, self.down = dims, up, down
        self.norm1 = _norm(in_ch)
        self.conv1 = _conv(dims, in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_ch, 2 * out_ch)
        self.norm2 = _norm(out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(_conv(dims, out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else _conv(dims, in_ch, out_ch, 1)

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")
        if self.down:
            if self.dims == 1:
                return F.avg_pool1d(x, 2)
            if self.dims == 2:
                return F.avg_pool2d(x, 2)
            return F.avg_pool3d(x, 2)
        return x

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x: (B, in_ch, *S), emb: (B, emb_ch) -> (B, out_ch, *S') with S' = S, 2S or S/2."""
        h = F.silu(self.norm1(x))
        h = self.conv1(self._resample(h))
        x = self._resample(x)
        e = self.emb(F.silu(emb))
        for _ in range(self.dims):
            e = e.unsqueeze(-1)  # (B, 2 out_ch, 1, ...)
        scale, shift = e.chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over all positions, ``head_channels`` channels per head, residual."""

    def __init__(self, dims: int, channels: int, head_channels: int):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = _norm(channels)
        self.qkv = _conv(1, channels, 3 * channels, 1)
        self.proj = _zero(_conv(1, channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, C, *S) -> (B, C, *S)."""
        b, c = x.shape[0], x.shape[1]
        qkv = self.qkv(self.norm(x).reshape(b, c, -1))  # (B, 3C, N)
        qkv = qkv.reshape(b, 3, self.heads, c // self.heads, -1).transpose(-1, -2)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        h = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, C/heads)
        h = h.transpose(-1, -2).reshape(b, c, -1)
        return x + self.proj(h).reshape(x.shape)


class _Stage(nn.Sequential):
    """A ResBlock optionally followed by attention; passes the timestep embedding through."""

    def forward(self, x, emb):
        for layer in self:
            x = layer(x, emb)
        return x


class TimestepUNet(nn.Module):
    """Timestep-conditioned U-Net: ``forward(x (B, in_ch, *S), t (B,)) -> (B, out_ch, *S)``.

    Args:
        spatial_dims: 2 or 3.
        in_channels, out_channels: 3 and 3 for RGB reconstruction.
        base_channels: width of the first level; level i has ``base_channels * channel_mult[i]``.
        channel_mult: one entry per level; spatial size must be divisible by ``2 ** (len(channel_mult) - 1)``.
        num_res_blocks: ResBlocks per encoder level (the decoder has one more per level).
        attention_levels: per level, whether blocks carry self-attention (the middle block always does).
        head_channels: channels per attention head.
        dropout: dropout inside ResBlocks.
    """

    __jit_unused_properties__ = ["tap_names", "default_taps"]  # Python-side helpers, not compiled by TorchScript

    def __init__(self, spatial_dims: int = 2, in_channels: int = 3, out_channels: int = 3, base_channels: int = 32,
                 channel_mult: Sequence[int] = (1, 2, 2, 4), num_res_blocks: int = 2,
                 attention_levels: Sequence[bool] | None = None, head_channels: int = 64, dropout: float = 0.0):
        super().__init__()
        levels = len(channel_mult)
        attention_levels = tuple(attention_levels or (False,) * levels)
        if len(attention_levels) != levels:
            raise ValueError("attention_levels needs one entry per level of channel_mult")
        self.spatial_dims, self.in_channels, self.out_channels = spatial_dims, in_channels, out_channels
        self.levels = levels
        self.base_channels = base_channels
        self._num_res_blocks = num_res_blocks
        emb_ch = 4 * base_channels
        self.time_embed = nn.Sequential(nn.Linear(base_channels, emb_ch), nn.SiLU(), nn.Linear(emb_ch, emb_ch))

        def stage(cin, cout, level, **kw):
            layers = [ResBlock(spatial_dims, cin, cout, emb_ch, dropout, **kw)]
            if attention_levels[level] and not kw:
                layers.append(AttentionBlock(spatial_dims, cout, head_channels))
            return _Stage(*layers)

        self.input_conv = _conv(spatial_dims, in_channels, base_channels, 3, padding=1)
        self.encoder = nn.ModuleList()
        skip_channels = [base_channels]
        ch = base_channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.encoder.append(stage(ch, base_channels * mult, level))
                ch = base_channels * mult
                skip_channels.append(ch)
            if level < levels - 1:
                self.encoder.append(stage(ch, ch, level, down=True))
                skip_channels.append(ch)
        self.middle = _Stage(ResBlock(spatial_dims, ch, ch, emb_ch, dropout),
                             AttentionBlock(spatial_dims, ch, head_channels),
                             ResBlock(spatial_dims, ch, ch, emb_ch, dropout))
        self.decoder = nn.ModuleDict()
        self.tap_channels: dict[str, int] = {}
        self.tap_factor: dict[str, int] = {}
        for level in reversed(range(levels)):
            mult = channel_mult[level]
            for j in range(num_res_blocks + 1):
                block = stage(ch + skip_channels.pop(), base_channels * mult, level)
                ch = base_channels * mult
                name = f"dec{2 ** level}.{j}"
                if level > 0 and j == num_res_blocks:
                    block.append(ResBlock(spatial_dims, ch, ch, emb_ch, dropout, up=True))
                self.decoder[name.replace(".", "_")] = block
                self.tap_channels[name] = ch
                self.tap_factor[name] = 2 ** level // 2 if (level > 0 and j == num_res_blocks) else 2 ** level
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), _zero(_conv(spatial_dims, ch, out_channels, 3, padding=1)))

    @property
    def tap_names(self) -> list[str]:
        """Decoder block names in execution order."""
        return list(self.tap_channels)

    @property
    def default_taps(self) -> tuple[str, ...]:
        """The paper's choice for any depth: the last block of level 8, every block of level 4, the first block
        of level 2 (``PAPER_TAPS`` for the paper preset)."""
        last = self._num_res_blocks
        return (f"dec8.{last}", *(f"dec4.{j}" for j in range(last + 1)), "dec2.0")

    def check_input(self, x: torch.Tensor) -> None:
        div = 2 ** (self.levels - 1)
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected (B, {self.in_channels}, *{self.spatial_dims} spatial dims), "
                             f"got {list(x.shape)}")
        for s in x.shape[2:]:
            if s % div != 0:
                raise ValueError(f"spatial size {list(x.shape[2:])} must be divisible by {div}")

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | None = None,
                taps: list[str] | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        """x: (B, in_ch, *S); timesteps: (B,) (None = 0).

        Returns (B, out_ch, *S), or, when ``taps`` is given, a dict name -> (B, tap_channels, *S / tap_factor)
        computed only up to the last requested tap.
        """
        self.check_input(x)
        if timesteps is None:
            timesteps = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        emb = self.time_embed(timestep_embedding(timesteps, self.base_channels).to(x.dtype))
        wanted: list[str] = []  # unique, in request order (TorchScript has no set)
        if taps is not None:
            for name in taps:
                if name not in self.tap_channels:
                    raise KeyError(f"unknown tap {name}; available: {list(self.tap_channels.keys())}")
                if name not in wanted:
                    wanted.append(name)
        h = self.input_conv(x)
        skips = [h]
        for block in self.encoder:
            h = block(h, emb)
            skips.append(h)
        h = self.middle(h, emb)
        out: dict[str, torch.Tensor] = {}
        for key, block in self.decoder.items():
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
            name = key.replace("_", ".")
            if name in wanted:
                out[name] = h
                if len(out) == len(wanted):
                    return out
        return self.out(h)


def build_unet(preset: str = "cpu", spatial_dims: int = 2, in_channels: int = 3, out_channels: int = 3,
               **overrides) -> TimestepUNet:
    """A ``TimestepUNet`` from a named preset (``paper``, ``cpu``, ``tiny``) with optional overrides."""
    if preset not in PRESETS:
        raise KeyError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    kwargs = {**PRESETS[preset], **overrides}
    return TimestepUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)
