"""Frozen decoder features of a pretrained ``TimestepUNet`` and the MDM pixel-MLP head.

The paper upsamples every tap to the crop size, concatenates them (D channels), divides the whole D x H x W
tensor by its Frobenius norm, and applies a per-pixel MLP. The first Linear layer commutes with bilinear
upsampling, so ``PixelMLPHead`` applies it per tap at native resolution and sums after upsampling, and
``feature_norm`` gets the norm of the upsampled concatenation from native-resolution Gram products: the
same numbers without ever materialising the (B, D, H, W) tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mdm_med.corruption import PatchMasking
from mdm_med.networks.unet import TimestepUNet

__all__ = ["DecoderFeatures", "PixelMLPHead", "FrozenFeatureSegmenter", "feature_norm", "sample_norm", "upsample"]


def upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(B, C, *s) -> (B, C, *size), bilinear / trilinear, align_corners=False (as the reference)."""
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[x.ndim - 2]
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)


def _interp_gram(n_in: int, n_out: int, device, dtype) -> torch.Tensor:
    """(n_in, n_in) Gram matrix A^T A of the 1-D linear interpolation matrix A (n_out x n_in)."""
    eye = torch.eye(n_in, device=device, dtype=torch.float64)[None]  # (1, n_in channels, n_in length)
    a = F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0].T  # (n_out, n_in)
    return (a.T @ a).to(dtype)


def sample_norm(x: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """(B,) Frobenius norm of each sample of (B, C, *S), accurate for huge tensors: torch's CPU ``norm`` accumulates
    the 1e8 float32 squares of a paper-size feature stack with about 1% error; cascade ``sum`` over channel chunks
    stays at float precision and needs only chunk-sized temporaries."""
    dims = tuple(range(1, x.ndim))
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    return sum(c.square().sum(dim=dims) for c in x.split(chunk, dim=1)).sqrt()


def feature_norm(features: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
    """(B,) Frobenius norm of ``cat([upsample(f, size) for f in features], 1)`` per sample, without building it.

    Uses ||A_1 f A_2^T||^2 = <f, G_1 f G_2> with G = A^T A per spatial axis (separable interpolation). Channels go
    in chunks of 64, which bounds the temporaries to a few chunk-sized tensors.
    """
    total = 0.0
    for f in features:
        f = f.to(torch.promote_types(f.dtype, torch.float32))
        grams = [None if n_in == n_out else _interp_gram(n_in, n_out, f.device, f.dtype)
                 for n_in, n_out in zip(f.shape[2:], size)]
        for fc in f.split(64, dim=1):
            g = fc
            for axis, gram in enumerate(grams):
                if gram is not None:
                    g = torch.movedim(torch.tensordot(g, gram, dims=([axis + 2], [1])), -1, axis + 2)
            total = total + (g * fc).sum(dim=tuple(range(1, fc.ndim)))
    return total.clamp_min(1e-12).sqrt()


class DecoderFeatures(nn.Module):
    """Frozen feature extractor (taps default to ``unet.default_taps``): corrupt ``x`` at timestep ``t`` with a
    seeded (deterministic) mask (or ``corruption``'s noise), run the U-Net, return the named decoder taps at their
    native resolution.

    ``forward(x (B, C, *S)) -> list of (B, C_i, *S_i)``; ``materialize(x) -> (B, D, *S)`` is the paper's
    upsampled, concatenated, norm-divided tensor (for checks and the memory benchmark).
    """

    def __init__(self, unet: TimestepUNet, taps: Sequence[str] | None = None, timestep: int = 50,
                 patch_size: int | Sequence[int] = 8, mask_seed: int = 0, num_train_timesteps: int = 1000,
                 corruption=None):
        super().__init__()
        self.unet = unet.eval()
        for p in self.unet.parameters():
            p.requires_grad_(False)
        self.taps = tuple(taps or unet.default_taps)
        self.timestep = int(timestep)
        self.mask_seed = int(mask_seed)
        # the forward process applied before feature extraction (MDM masking by default; DDPM noise for DDPM)
        self.corruption = corruption or PatchMasking(patch_size, num_train_timesteps=num_train_timesteps)

    @property
    def channels(self) -> list[int]:
        return [self.unet.tap_channels[t] for t in self.taps]

    def train(self, mode: bool = True):
        return super().train(False)  # always frozen: BatchNorm-free, but dropout must stay off

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        t = torch.full((x.shape[0],), self.timestep, dtype=torch.long, device=x.device)
        gen = torch.Generator(device=x.device).manual_seed(self.mask_seed)
        xt = self.corruption.add_noise(x, t, generator=gen) if self.timestep > 0 else x
        out = self.unet(xt, t, taps=self.taps)
        return [out[name] for name in self.taps]

    @torch.no_grad()
    def materialize(self, x: torch.Tensor) -> torch.Tensor:
        feats = self(x)
        cat = torch.cat([upsample(f, x.shape[2:]) for f in feats], dim=1)
        return cat / sample_norm(cat).view(-1, *([1] * (cat.ndim - 1)))


class _ReluBatchNormLinear(torch.autograd.Function):
    """``linear(batch_norm(relu(z)))`` per position, BatchNorm in training mode, keeping one activation.

    z: (B, C, *S) (the ReLU is applied to it in place), weight: (O, C), bias: (O,) -> (B, O, N) with N = prod(S);
    also returns the batch mean and biased variance (for the running statistics) and z itself (marked dirty). Only
    relu(z) is saved; the weight gradient comes from relu(z) and the batch statistics directly, and ATen's batch-norm
    backward runs in chunks of ``chunk`` channels, so besides the (B, C, *S) input gradient only chunk-sized
    temporaries are needed.
    """

    @staticmethod
    def forward(ctx, z, gamma, beta, weight, bias, eps: float, chunk: int):
        z.relu_()
        ctx.mark_dirty(z)
        ctx.set_materialize_grads(False)
        x = z.flatten(2)
        var, mean = torch.var_mean(x, dim=(0, 2), unbiased=False)
        rstd = (var + eps).rsqrt()
        scale = gamma * rstd
        y = torch.baddbmm((bias + weight @ (beta - mean * scale))[None, :, None].expand(x.shape[0], -1, -1),
                          (weight * scale).expand(x.shape[0], -1, -1), x)
        ctx.save_for_backward(z, mean, rstd, gamma, beta, weight)
        ctx.eps, ctx.chunk = eps, chunk
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var, z

    @staticmethod
    def backward(ctx, gy, _gmean, _gvar, _gz_out):
        if gy is None:  # y unused
            return None, None, None, None, None, None, None
        z, mean, rstd, gamma, beta, weight = ctx.saved_tensors
        x = z.flatten(2)  # (B, C, N), already through the ReLU
        scale = gamma * rstd  # BatchNorm output = scale * x + shift
        shift = beta - mean * scale
        gweight = torch.bmm(gy, x.transpose(1, 2)).sum(0) * scale + gy.sum(dim=(0, 2))[:, None] * shift
        gx = torch.bmm(weight.T.expand(x.shape[0], -1, -1), gy)  # at the BatchNorm output; made the input grad in place
        ggamma, gbeta = torch.empty_like(gamma), torch.empty_like(beta)
        for start in range(0, x.shape[1], ctx.chunk):
            c = slice(start, start + ctx.chunk)
            gin, ggamma[c], gbeta[c] = torch.ops.aten.native_batch_norm_backward(
                gx[:, c], x[:, c], gamma[c], None, None, mean[c], rstd[c], True, ctx.eps, [True, True, True])
            gx[:, c] = torch.ops.aten.threshold_backward(gin, x[:, c], 0)  # through the ReLU
        return gx.view_as(z), ggamma, gbeta, gweight, gy.sum(dim=(0, 2)), None, None


class PixelMLPHead(nn.Module):
    """MDM's per-pixel MLP: Linear(D, h1)-ReLU-BN-Linear(h1, h2)-ReLU-BN-Linear(h2, C), as 1x1 convolutions.

    ``forward(features, size)``: features = list of (B, C_i, *S_i) taps -> logits (B, num_classes, *size); the
    first layer runs per tap at native resolution. ``forward_materialized(cat)`` takes the (B, D, *size)
    normalised concatenation instead and gives the same logits.
    Weights ~ N(0, 0.02), biases 0. Hidden sizes (128, 32), or (256, 128) for 30+ classes.
    BatchNorm running statistics use momentum ``max(bn_momentum, 1/n)`` at the n-th training batch: the first batch
    sets them exactly (the first BatchNorm's inputs have a variance of ~1e-9, which an update from the default
    running variance of 1 at momentum 0.1 would take ~200 batches to forget), later batches follow an EMA.
    """

    bn_momentum = 0.1

    def __init__(self, in_channels: Sequence[int], num_classes: int, spatial_dims: int = 2,
                 hidden: Sequence[int] | None = None):
        super().__init__()
        self.in_channels = list(in_channels)
        h1, h2 = hidden or ((256, 128) if num_classes >= 30 else (128, 32))
        conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[spatial_dims - 1]
        bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[spatial_dims - 1]
        self.first = nn.ModuleList(conv(c, h1, 1, bias=False) for c in self.in_channels)
        self.first_bias = nn.Parameter(torch.zeros(h1))
        self.rest = nn.Sequential(nn.ReLU(), bn(h1), conv(h1, h2, 1), nn.ReLU(), bn(h2), conv(h2, num_classes, 1))
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.register_forward_pre_hook(self._warm_momentum_hook)

    def _warm_momentum(self, bn: nn.Module) -> float:
        """Momentum of the next running-statistics update of ``bn``: max(bn_momentum, 1 / (batches seen + 1))."""
        return max(self.bn_momentum, 1.0 / (float(bn.num_batches_tracked) + 1.0))

    def _warm_momentum_hook(self, bn: nn.Module, _inputs) -> None:
        if bn.training and bn.track_running_stats:
            bn.momentum = self._warm_momentum(bn)

    def _bias(self, z: torch.Tensor) -> torch.Tensor:
        return self.first_bias.view(1, -1, *([1] * (z.ndim - 2)))

    def forward(self, features: Sequence[torch.Tensor], size: Sequence[int]) -> torch.Tensor:
        # The first layer, the division by the norm and the bias all commute with bilinear upsampling (its weights
        # sum to 1), so they run at native size; taps of equal size are summed first and upsampled once.
        scale = 1.0 / feature_norm(features, size).view(-1, *([1] * (features[0].ndim - 1)))
        by_size: dict[tuple[int, ...], torch.Tensor] = {}
        for f, layer in zip(features, self.first):
            key = tuple(f.shape[2:])
            by_size[key] = layer(f) if key not in by_size else by_size[key] + layer(f)
        z = None
        for zs in by_size.values():
            if z is None:  # the bias goes in once; z is fresh and no backward needs it, so it is added to in place
                z = upsample(zs * scale + self._bias(zs), size)
            else:
                z.add_(upsample(zs * scale, size))
        return self._mlp(z)

    def _mlp(self, z: torch.Tensor) -> torch.Tensor:
        """``self.rest(z)``; when training with gradients, its first ReLU-BatchNorm-Linear runs as one autograd
        function that keeps a single full-resolution activation (same numbers, same running statistics). ``z`` must
        be a fresh tensor: its ReLU is taken in place."""
        bn, lin = self.rest[1], self.rest[2]
        fused = self.training and torch.is_grad_enabled() and bn.track_running_stats
        if not fused or torch.is_autocast_enabled(z.device.type):
            return self.rest(z)
        b, c, *spatial = z.shape
        y, mean, var, _ = _ReluBatchNormLinear.apply(z, bn.weight, bn.bias, lin.weight.flatten(1), lin.bias, bn.eps, 16)
        with torch.no_grad():  # nn.BatchNorm's running-statistics update, with the warm momentum
            momentum = self._warm_momentum(bn)
            bn.num_batches_tracked.add_(1)
            n = var.new_tensor(b * z[0, 0].numel())
            bn.running_mean.lerp_(mean, momentum)
            bn.running_var.lerp_(var * n / (n - 1).clamp_min(1), momentum)
        return self.rest[3:](y.view(b, -1, *spatial))

    def forward_materialized(self, cat: torch.Tensor) -> torch.Tensor:
        """cat: (B, D, *size) normalised concatenation -> (B, num_classes, *size); the reference's memory path."""
        weight = torch.cat([layer.weight for layer in self.first], dim=1)
        conv = (F.conv1d, F.conv2d, F.conv3d)[cat.ndim - 3]
        return self.rest(conv(cat, weight, self.first_bias))


class FrozenFeatureSegmenter(nn.Module):
    """Frozen MDM features + trainable pixel head: ``forward(x (B, C, *S)) -> logits (B, num_classes, *S)``."""

    def __init__(self, features: DecoderFeatures, num_classes: int = 2, hidden: Sequence[int] | None = None):
        super().__init__()
        self.features = features
        self.head = PixelMLPHead(features.channels, num_classes, features.unet.spatial_dims, hidden)

    def load_pretrained(self, state: dict[str, torch.Tensor]) -> None:
        """Load pretraining U-Net weights into the frozen feature extractor."""
        self.features.unet.load_state_dict(state)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x), x.shape[2:])
