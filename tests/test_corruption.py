import numpy as np
import pytest
import torch

from mdm_med.corruption import FixedRatioMasking, GaussianDiffusion, PatchMasking


def masked_patches(xt, x0, p):
    """(B,) number of p x p patches whose every pixel equals the mask value 0 while x0 was nonzero there."""
    b = xt.shape[0]
    masked = (xt == 0).all(1).float()  # (B, H, W)
    pooled = torch.nn.functional.avg_pool2d(masked[:, None], p)[:, 0]
    return (pooled == 1).view(b, -1).sum(1)


@pytest.mark.parametrize("t", [0, 1, 37, 500, 999])
def test_exact_masked_patch_count(t):
    x0 = torch.rand(3, 3, 32, 48) + 0.5  # no zeros in the clean image
    proc = PatchMasking(patch_size=8)
    xt = proc.add_noise(x0, torch.full((3,), t), generator=torch.Generator().manual_seed(0))
    num_patches = (32 // 8) * (48 // 8)
    expected = num_patches - int(num_patches * (1 - t / 1000))
    assert masked_patches(xt, x0, 8).tolist() == [expected] * 3
    # kept pixels are untouched; masked patches are whole patches on every channel
    keep = xt != 0
    assert torch.equal(xt[keep], x0[keep])
    assert torch.equal(keep.all(1), keep.any(1))


def test_t0_is_identity():
    x0 = torch.randn(4, 3, 16, 16)
    assert torch.equal(PatchMasking(4).add_noise(x0, torch.zeros(4, dtype=torch.long)), x0)


def test_per_sample_independence_and_determinism():
    x0 = torch.rand(6, 1, 32, 32) + 1
    t = torch.full((6,), 500)
    a = PatchMasking(8).add_noise(x0, t, generator=torch.Generator().manual_seed(3))
    b = PatchMasking(8).add_noise(x0, t, generator=torch.Generator().manual_seed(3))
    c = PatchMasking(8).add_noise(x0, t, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    masks = [(a[i] == 0).flatten().tolist() for i in range(6)]
    assert len({tuple(m) for m in masks}) == 6  # every sample gets its own random patch subset


def test_mixed_timesteps_per_sample():
    x0 = torch.rand(3, 3, 16, 16) + 1
    xt = PatchMasking(4).add_noise(x0, torch.tensor([0, 500, 999]))
    assert masked_patches(xt, x0, 4).tolist() == [0, 8, 16]


def test_3d_cubic_patches():
    x0 = torch.rand(2, 1, 16, 16, 8) + 1
    xt = PatchMasking(4).add_noise(x0, torch.tensor([250, 750]), generator=torch.Generator().manual_seed(0))
    masked = (xt == 0).float()
    pooled = torch.nn.functional.avg_pool3d(masked, 4)
    assert set(pooled.unique().tolist()) <= {0.0, 1.0}  # whole cubes only
    num = 4 * 4 * 2
    assert pooled.view(2, -1).sum(1).tolist() == [num - int(num * 0.75), num - int(num * 0.25)]


def test_fixed_ratio_and_fixed_t():
    x0 = torch.rand(2, 3, 32, 32) + 1
    mae = FixedRatioMasking(0.75, patch_size=8)
    assert mae.sample_timesteps(5).eq(0).all()
    xt = mae.add_noise(x0, mae.sample_timesteps(2))
    assert masked_patches(xt, x0, 8).tolist() == [12, 12]
    assert PatchMasking(8, fixed_timestep=300).sample_timesteps(4).eq(300).all()
    with pytest.raises(ValueError):
        PatchMasking(8, fixed_timestep=1000)


def test_bad_sizes_and_timesteps():
    with pytest.raises(ValueError, match="divisible"):
        PatchMasking(8).add_noise(torch.zeros(1, 3, 30, 32), torch.tensor([10]))
    with pytest.raises(ValueError, match="timesteps"):
        PatchMasking(8).add_noise(torch.zeros(1, 3, 32, 32), torch.tensor([1000]))


def test_gaussian_matches_closed_form():
    proc = GaussianDiffusion(num_train_timesteps=1000)
    x0 = torch.randn(2, 3, 8, 8)
    t = torch.tensor([10, 900])
    xt = proc.add_noise(x0, t, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    abar = proc.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    np.testing.assert_allclose(xt, abar.sqrt() * x0 + (1 - abar).sqrt() * noise, atol=1e-5)


def test_corruption_from_repr_round_trip_and_refusals():
    """model_settings.json stores repr(feature_corruption); inference rebuilds the same process from it."""
    from mdm_med.corruption import corruption_from_repr

    for process in (PatchMasking(4, mask_value=-1.0, fixed_timestep=500), FixedRatioMasking(0.6, (4, 4, 2)),
                    GaussianDiffusion(500)):
        again = corruption_from_repr(repr(process))
        assert type(again) is type(process) and repr(again) == repr(process)
    assert corruption_from_repr(None) is None and corruption_from_repr("") is None
    for bad in ("__import__('os').system('true')", "GaussianDiffusion(1000)", "PatchMasking(patch_size=len('ab'))",
                "Compose(transforms=[])"):
        with pytest.raises(ValueError, match="cannot rebuild"):
            corruption_from_repr(bad)
