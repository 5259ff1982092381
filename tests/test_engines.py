"""Mixed precision on CPU: the bundles' ``amp`` switch through ``autocast_inferer``."""

import os

import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.inferers import SimpleInferer, SlidingWindowInferer

from mdm_med.engines import CpuAutocastInferer, autocast_inferer, engine_amp
from mdm_med.networks import build_unet

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bundles", "mdm_glas", "configs")


class DtypeProbe(torch.nn.Module):
    """A conv that records the dtype it computed in; (B, 3, H, W) -> (B, 2, H, W)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 3, padding=1)
        self.seen = []

    def forward(self, x):
        y = self.conv(x)
        self.seen.append(y.dtype)
        return y


def test_autocast_inferer_is_the_plain_inferer_unless_amp_on_cpu():
    base = SimpleInferer()
    assert autocast_inferer(base, False, "cpu") is base
    assert autocast_inferer(base, True, "cuda") is base  # MONAI's engines autocast CUDA themselves
    assert isinstance(autocast_inferer(base, True, torch.device("cpu")), CpuAutocastInferer)
    assert engine_amp(True, "cuda") and not engine_amp(True, "cpu") and not engine_amp(False, "cuda")


@pytest.mark.parametrize("inferer", [SimpleInferer(), SlidingWindowInferer(roi_size=(16, 16), sw_batch_size=2,
                                                                         overlap=0.25, mode="gaussian")])
def test_cpu_autocast_runs_bf16_and_returns_float32(inferer):
    torch.manual_seed(0)
    net, x = DtypeProbe(), torch.randn(2, 3, 40, 24)
    ref = inferer(x, net)
    assert set(net.seen) == {torch.float32}
    net.seen.clear()
    out = CpuAutocastInferer(inferer)(x, net)
    assert set(net.seen) == {torch.bfloat16}
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert torch.allclose(out, ref, atol=0.05, rtol=0.02) and not torch.equal(out, ref)


def test_cpu_autocast_passes_extra_arguments_and_gradients():
    torch.manual_seed(0)
    net = build_unet("tiny", 2, 3, 3)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 500])
    out = CpuAutocastInferer(SimpleInferer())(x, net, t)
    assert out.dtype == torch.float32
    out.square().mean().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_bundle_amp_on_cpu_trains_in_bf16(tmp_path, tiny_glas):
    wf = ConfigWorkflow(config_file=os.path.join(CONFIGS, "train.json"), workflow_type="train", logging_file=False,
                        bundle_root=str(tmp_path / "bundle"), dataset_dir=tiny_glas, device="$torch.device('cpu')",
                        amp=True, preset="tiny", pretrain_iterations=2, epoch_length=2, max_epochs=1, num_val=2,
                        image_scale=1.0, crop_size=32, pretrain_batch_size=2, seg_batch_size=2, label_fraction=1.0)
    wf.initialize()
    for engine in ("pretrain#trainer", "train#trainer", "validate#evaluator", "test#evaluator"):
        obj = wf.parser.get_parsed_content(engine)
        assert obj.amp is False and isinstance(obj.inferer, CpuAutocastInferer), engine
    wf.run()
    wf.finalize()
    dice = wf.parser.get_parsed_content("test#evaluator").state.metrics["test_mean_dice"]
    assert 0.0 <= dice <= 1.0


def test_pretrain_epochs_refuses_budgets_it_cannot_run_exactly():
    from mdm_med.engines import pretrain_epochs

    assert pretrain_epochs(4000, 25) == 160 and pretrain_epochs(80000, 40, 8) == 2000
    for bad in ((1000, 300, 1), (10, 25, 1), (0, 25, 1)):
        with pytest.raises(ValueError, match="multiple of epoch_length"):
            pretrain_epochs(*bad)
    with pytest.raises(ValueError, match="pretrain_accumulation_steps"):
        pretrain_epochs(4000, 25, 8)
