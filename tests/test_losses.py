import numpy as np
import pytest
import torch
from scipy import ndimage

from mdm_med.losses import SSIMLoss, build_reconstruction_loss, ssim_map


def ssim_reference(x, y, win=5, sigma=1.5, L=1.0):
    """SSIM map from the formula with a normalised Gaussian window, zero padding (scipy, float64)."""
    ax = np.arange(win) - (win - 1) / 2
    g = np.exp(-(ax**2) / (2 * sigma**2))
    g /= g.sum()
    kernel = g
    for _ in range(x.ndim - 1):
        kernel = np.multiply.outer(kernel, g)

    def f(a):
        return ndimage.correlate(a, kernel, mode="constant", cval=0.0)

    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx**2, f(y * y) - my**2, f(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


@pytest.mark.parametrize("shape", [(2, 3, 20, 24), (1, 2, 10, 12, 9)])
def test_ssim_map_matches_formula(shape):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, shape)
    y = np.clip(x + rng.normal(0, 0.3, shape), -1, 1)
    ours = ssim_map(torch.tensor(x), torch.tensor(y)).numpy()
    for n in range(shape[0]):
        for c in range(shape[1]):
            np.testing.assert_allclose(ours[n, c], ssim_reference(x[n, c], y[n, c]), rtol=1e-6, atol=1e-8)


def test_ssim_loss_definition_and_range():
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (2, 3, 16, 16))
    y = rng.uniform(-1, 1, (2, 3, 16, 16))
    expected = np.mean(np.clip(1 - np.stack([ssim_reference(x[n, c], y[n, c]) for n in range(2) for c in range(3)]),
                               0, 1) / 2)
    loss = SSIMLoss()(torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32))
    assert abs(loss.item() - expected) < 1e-5
    same = SSIMLoss()(torch.tensor(x), torch.tensor(x))
    assert same.item() < 1e-6


def test_ssim_loss_gradient_and_choice():
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    SSIMLoss()(x, torch.rand(1, 3, 16, 16)).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert isinstance(build_reconstruction_loss("mse"), torch.nn.MSELoss)
    with pytest.raises(ValueError):
        build_reconstruction_loss("l1")


def test_ssim_loss_is_float32_under_autocast():
    """MONAI's trainers call the loss inside autocast: SSIM must not drop to reduced precision there."""
    torch.manual_seed(0)
    target = torch.rand(2, 3, 32, 32) * 2 - 1
    pred = (target + 0.05 * torch.randn_like(target)).requires_grad_()
    loss = SSIMLoss()
    exact = loss(pred, target)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_amp = loss(pred, target)
    assert under_amp.dtype == torch.float32 and torch.equal(under_amp, exact)
    under_amp.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
