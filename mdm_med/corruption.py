"""Forward (corruption) processes for self-supervised pretraining.

All processes share one interface, shaped like MONAI's / diffusers' schedulers:

- ``num_train_timesteps``: T.
- ``sample_timesteps(batch_size, device, generator) -> (B,) long``.
- ``add_noise(x0, timesteps, generator=None) -> xt`` with ``x0`` of shape (B, C, *spatial) in [-1, 1].

So DDPM, MAE and MDM differ by one line of configuration. Everything is vectorised over the batch.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence

import torch
from monai.networks.schedulers import DDPMScheduler

__all__ = ["PatchMasking", "FixedRatioMasking", "GaussianDiffusion", "patch_keep_mask", "corruption_from_repr"]


def patch_keep_mask(
    num_keep: torch.Tensor, num_patches: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-sample random subset of patches to keep, as in MAE (argsort of uniform noise).

    Args:
        num_keep: (B,) number of patches to keep per sample.
        num_patches: L, patches per image.
        generator: optional generator for reproducible masks.

    Returns:
        (B, L) bool, True where the patch is kept; row b has exactly ``num_keep[b]`` True entries.
    """
    batch = num_keep.shape[0]
    noise = torch.rand(batch, num_patches, generator=generator, device=num_keep.device)
    # stable=True: same order for distinct keys, deterministic for ties, and on CPU ~10x faster than the default
    perm = noise.argsort(dim=1, stable=True)
    order = torch.arange(num_patches, device=perm.device).expand(batch, -1)
    rank = torch.empty_like(perm).scatter_(1, perm, order)  # rank of each patch = inverse permutation
    return rank < num_keep[:, None]


class _PatchMaskingBase:
    """Mask non-overlapping p^d patches of a (B, C, *spatial) batch; masked pixels are set to ``mask_value``."""

    def __init__(self, patch_size: int | Sequence[int] = 8, mask_value: float = 0.0, num_train_timesteps: int = 1000):
        self.patch_size = patch_size
        self.mask_value = mask_value
        self.num_train_timesteps = int(num_train_timesteps)

    def __repr__(self) -> str:
        """The class and its settings (recorded with runs and compared before reusing a pretrained checkpoint)."""
        keys = [k for k in ("mask_ratio", "fixed_timestep") if hasattr(self, k)]
        args = [f"{k}={getattr(self, k)!r}" for k in ("patch_size", "mask_value", "num_train_timesteps", *keys)]
        return f"{type(self).__name__}({', '.join(args)})"

    def _patch_grid(self, spatial: Sequence[int]) -> tuple[int, ...]:
        ps = (self.patch_size,) * len(spatial) if isinstance(self.patch_size, int) else tuple(self.patch_size)
        if len(ps) != len(spatial):
            raise ValueError(f"patch_size {ps} does not match {len(spatial)} spatial dims")
        for s, p in zip(spatial, ps):
            if s % p:
                raise ValueError(f"spatial size {tuple(spatial)} is not divisible by patch size {ps}")
        return ps

    def sample_timesteps(
        self, batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B,) long timesteps drawn uniformly from {0, ..., T-1}."""
        return torch.randint(0, self.num_train_timesteps, (batch_size,), generator=generator, device=device)

    def num_keep(self, timesteps: torch.Tensor, num_patches: int) -> torch.Tensor:
        """(B,) number of patches kept for each timestep."""
        raise NotImplementedError

    def _keep_patches(self, x0: torch.Tensor, timesteps: torch.Tensor, generator: torch.Generator | None = None):
        """(B, L) bool patch mask (True = kept), the patch grid and the patch size per spatial dim."""
        spatial = x0.shape[2:]
        ps = self._patch_grid(spatial)
        grid = [s // p for s, p in zip(spatial, ps)]
        num_patches = 1
        for g in grid:
            num_patches *= g
        keep = patch_keep_mask(self.num_keep(timesteps.to(x0.device), num_patches), num_patches, generator)
        return keep, grid, ps

    def _pixel_keep(self, x0: torch.Tensor, timesteps: torch.Tensor, generator: torch.Generator | None = None):
        """(B, 1, *spatial) bool, True where the pixel is kept: the (B, L) patch mask broadcast over each patch."""
        keep, grid, ps = self._keep_patches(x0, timesteps, generator)
        b = x0.shape[0]
        blocks = [n for g, p in zip(grid, ps) for n in (g, p)]
        keep = keep.view(b, *[n for g in grid for n in (g, 1)]).expand(b, *blocks)
        return keep.reshape(b, 1, *x0.shape[2:])

    def keep_mask(self, x0: torch.Tensor, timesteps: torch.Tensor, generator: torch.Generator | None = None):
        """(B, 1, *spatial) float mask, 1 where the pixel is kept; the same for every channel."""
        return self._pixel_keep(x0, timesteps, generator).to(x0.dtype)

    def add_noise(
        self, x0: torch.Tensor, timesteps: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Masked copy of ``x0`` (B, C, *spatial): dropped patches set to ``mask_value`` in every channel.

        One pass over the batch (``torch.where`` with a one-byte pixel mask shared by the channels).
        """
        return torch.where(self._pixel_keep(x0, timesteps, generator), x0, self.mask_value)


class PatchMasking(_PatchMaskingBase):
    """MDM forward process: keep ``int(L * (1 - t / T))`` random patches of L, mask the rest (t = 0 masks nothing).

    Args:
        patch_size: p (int) or one size per spatial dim; 8 at 256 x 256 in the paper.
        mask_value: value of masked pixels in [-1, 1] intensity space (0 = mid-grey).
        num_train_timesteps: T (1000).
        fixed_timestep: when set, ``sample_timesteps`` always returns it (the paper's fixed-t ablation).
    """

    def __init__(self, patch_size: int | Sequence[int] = 8, mask_value: float = 0.0, num_train_timesteps: int = 1000,
                 fixed_timestep: int | None = None):
        super().__init__(patch_size, mask_value, num_train_timesteps)
        if fixed_timestep is not None and not 0 <= fixed_timestep < self.num_train_timesteps:
            raise ValueError(f"fixed_timestep must lie in [0, {self.num_train_timesteps - 1}]")
        self.fixed_timestep = fixed_timestep

    def sample_timesteps(self, batch_size, device="cpu", generator=None):
        if self.fixed_timestep is None:
            return super().sample_timesteps(batch_size, device, generator)
        return torch.full((batch_size,), self.fixed_timestep, dtype=torch.long, device=device)

    def num_keep(self, timesteps: torch.Tensor, num_patches: int) -> torch.Tensor:
        if (timesteps < 0).any() or (timesteps >= self.num_train_timesteps).any():
            raise ValueError(f"timesteps must lie in [0, {self.num_train_timesteps - 1}]")
        # integer arithmetic == int(L * (1 - t / T)) without float rounding surprises
        return (num_patches * (self.num_train_timesteps - timesteps.long())) // self.num_train_timesteps


class FixedRatioMasking(_PatchMaskingBase):
    """MAE-style forward process: always mask ``int(L * mask_ratio)`` random patches; timesteps are ignored.

    ``sample_timesteps`` returns zeros so the timestep embedding carries no information.
    """

    def __init__(self, mask_ratio: float = 0.75, patch_size: int | Sequence[int] = 8, mask_value: float = 0.0,
                 num_train_timesteps: int = 1000):
        super().__init__(patch_size, mask_value, num_train_timesteps)
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.mask_ratio = float(mask_ratio)

    def sample_timesteps(self, batch_size, device="cpu", generator=None):
        return torch.zeros(batch_size, dtype=torch.long, device=device)

    def num_keep(self, timesteps: torch.Tensor, num_patches: int) -> torch.Tensor:
        keep = num_patches - int(num_patches * self.mask_ratio)
        return torch.full_like(timesteps, keep, dtype=torch.long)


class GaussianDiffusion:
    """DDPM forward process through MONAI's ``DDPMScheduler``: ``xt = sqrt(a_t) x0 + sqrt(1 - a_t) eps``.

    The network still predicts x0 (as in MDM), so the same engine and loss serve all three processes.
    """

    def __init__(self, num_train_timesteps: int = 1000, schedule: str = "linear_beta", **schedule_args):
        self.scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, schedule=schedule, **schedule_args)
        self.num_train_timesteps = int(num_train_timesteps)
        self._settings = {"num_train_timesteps": self.num_train_timesteps, "schedule": schedule, **schedule_args}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._settings.items())})"

    def sample_timesteps(self, batch_size, device="cpu", generator=None):
        return torch.randint(0, self.num_train_timesteps, (batch_size,), generator=generator, device=device)

    def add_noise(self, x0: torch.Tensor, timesteps: torch.Tensor, generator: torch.Generator | None = None):
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        return self.scheduler.add_noise(original_samples=x0, noise=noise, timesteps=timesteps.to(x0.device))


def corruption_from_repr(text: str | None):
    """The process that ``repr(process)`` describes (e.g. ``"GaussianDiffusion(num_train_timesteps=1000, ...)"``, as
    published in ``model_settings.json``), or None for None / "". Only this module's classes with literal keyword
    arguments are accepted; anything else raises ``ValueError``."""
    if not text:
        return None
    classes = {cls.__name__: cls for cls in (PatchMasking, FixedRatioMasking, GaussianDiffusion)}
    try:
        call = ast.parse(text, mode="eval").body
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in classes
                and not call.args and all(k.arg for k in call.keywords)):
            raise ValueError("not a call of a corruption class with keyword arguments")
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
    except (SyntaxError, ValueError) as e:
        raise ValueError(f"cannot rebuild a corruption process from {text!r} ({e}); expected one of "
                         f"{sorted(classes)} as written by repr()") from None
    return classes[call.func.id](**kwargs)
