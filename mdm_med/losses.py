"""Reconstruction losses for pretraining: SSIM with MDM's constants (2-D and 3-D) and MSE."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SSIMLoss", "ssim_map", "gaussian_window", "build_reconstruction_loss"]


def gaussian_window(win_size: int = 5, sigma: float = 1.5, dtype=torch.float32, device=None) -> torch.Tensor:
    """(win_size,) normalised 1-D Gaussian; the d-D window is its outer product."""
    coords = torch.arange(win_size, dtype=torch.float64) - (win_size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _blur(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter of (N, C, *spatial), zero padding, same size output."""
    dims = x.ndim - 2
    channels = x.shape[1]
    conv = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
    pad = window.numel() // 2
    for axis in range(dims):
        shape = [1] * dims
        shape[axis] = window.numel()
        kernel = window.view(1, 1, *shape).expand(channels, 1, *shape)
        padding = [0] * dims
        padding[axis] = pad
        x = conv(x, kernel, padding=tuple(padding), groups=channels)
    return x


def ssim_map(
    x: torch.Tensor, y: torch.Tensor, win_size: int = 5, sigma: float = 1.5, data_range: float = 1.0,
    k1: float = 0.01, k2: float = 0.03,
) -> torch.Tensor:
    """Per-pixel SSIM of (N, C, *spatial) tensors, same shape as the input.

    Local statistics use a Gaussian window with zero padding; C1 = (k1 L)^2, C2 = (k2 L)^2 with L = data_range.
    MDM uses a 5 x 5 window, sigma 1.5 and L = 1 on data in [-1, 1].
    """
    window = gaussian_window(win_size, sigma, dtype=x.dtype, device=x.device)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_x, mu_y = _blur(x, window), _blur(y, window)
    # one batched filter pass over the five needed moments
    moments = _blur(torch.cat([x * x, y * y, x * y]), window)
    exx, eyy, exy = moments.chunk(3)
    var_x, var_y, cov = exx - mu_x * mu_x, eyy - mu_y * mu_y, exy - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)
    return num / den


class SSIMLoss(nn.Module):
    """MDM's SSIM loss: ``mean(clamp(1 - ssim_map, 0, 1) / 2)`` over the whole image (2-D or 3-D)."""

    def __init__(self, win_size: int = 5, sigma: float = 1.5, data_range: float = 1.0, k1: float = 0.01,
                 k2: float = 0.03):
        super().__init__()
        self.win_size, self.sigma, self.data_range, self.k1, self.k2 = win_size, sigma, data_range, k1, k2

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """pred, target: (N, C, *spatial) -> scalar, in float32 even under AMP (MONAI's trainers compute the loss
        inside autocast, where fp16 / bf16 local variances lose the precision that SSIM's C2 = 9e-4 needs)."""
        with torch.autocast(pred.device.type, enabled=False):
            s = ssim_map(pred.float(), target.float(), self.win_size, self.sigma, self.data_range, self.k1, self.k2)
            return (torch.clamp(1.0 - s, 0.0, 1.0) / 2.0).mean()


def build_reconstruction_loss(name: str = "ssim") -> nn.Module:
    """``"ssim"`` (MDM's) or ``"mse"`` (the paper's ablation)."""
    if name == "ssim":
        return SSIMLoss()
    if name == "mse":
        return nn.MSELoss()
    raise ValueError(f"unknown reconstruction loss {name!r}; use 'ssim' or 'mse'")
