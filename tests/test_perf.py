"""Smoke test of the performance benchmark (``python -m mdm_med.perf --quick``) and the exactness of the fast paths
it measures: vectorised masking and the memory-light pixel head (values and gradients)."""

from __future__ import annotations

import copy

import pytest
import torch

from mdm_med import perf
from mdm_med.corruption import PatchMasking
from mdm_med.networks.features import PixelMLPHead, feature_norm, sample_norm, upsample


def test_quick_benchmark_writes_report(tmp_path):
    out = tmp_path / "perf.md"
    argv = ["--quick", "--out", str(out), "--sections", "mask,head,sw,data"]
    text, results = perf.run(perf.parse_args(argv), argv)
    assert out.read_text() == text
    assert "## Summary" in text and "| measure | result |" in text
    assert "Command: `python -m mdm_med.perf --quick" in text
    mask = results["mask"]
    assert mask["rule_ok"] and mask["counts_ok"] and mask["formula_ok"]
    assert results["head"]["diff"] <= 1e-4
    assert all(r.get("ok", True) for r in results.values()), {k: r.get("error") for k, r in results.items()}


def test_step_flops_match_monai_twin():
    pytest.importorskip("einops")  # MONAI's attention blocks need it
    args = perf.parse_args(["--quick"])
    cfg = perf.make_config(args)
    ours, monai = (perf.count_step_flops(k, cfg, batch=1) for k in ("ours", "monai"))
    assert abs(ours - monai) / monai < 0.01


def test_loops_follow_the_same_rule():
    proc = PatchMasking(8)
    x0 = torch.rand(6, 3, 32, 32) * 2 - 1
    t = torch.tensor([0, 1, 250, 500, 875, 999])
    expected = 16 - proc.num_keep(t, 16)
    for xt in (proc.add_noise(x0, t), perf.loop_mask_patchwise(x0, t, 8), perf.loop_mask_per_sample(x0, t, 8)):
        assert torch.equal(perf.masked_patch_counts(xt, 8), expected)


def test_add_noise_equals_pixel_mask_formula_3d():
    proc = PatchMasking((4, 4, 2))
    x0 = torch.randn(2, 1, 8, 8, 4)
    t = torch.tensor([300, 900])
    keep = proc.keep_mask(x0, t, generator=torch.Generator().manual_seed(5))
    assert torch.equal(proc.add_noise(x0, t, generator=torch.Generator().manual_seed(5)), x0 * keep)


def test_head_forward_equals_materialised_with_gradients():
    torch.manual_seed(0)
    taps = ((8, 4), (8, 4), (6, 8))
    size = (16, 16)
    head = PixelMLPHead([c for c, _ in taps], 3).double().train()
    ref = copy.deepcopy(head)
    feats = [torch.randn(2, c, s, s, dtype=torch.float64) for c, s in taps]
    cat = torch.cat([upsample(f, size) for f in feats], 1)
    torch.testing.assert_close(feature_norm(feats, size), sample_norm(cat))
    out, expected = head(feats, size), ref.forward_materialized(cat / sample_norm(cat).view(-1, 1, 1, 1))
    torch.testing.assert_close(out, expected)
    grad = torch.randn_like(out)
    (out * grad).sum().backward()
    (expected * grad).sum().backward()
    for (name, p), q in zip(head.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)
    for (name, b), c in zip(head.named_buffers(), ref.buffers()):
        torch.testing.assert_close(b, c, msg=name)
    head.eval(), ref.eval()
    with torch.no_grad():
        expected = ref.forward_materialized(cat / sample_norm(cat).view(-1, 1, 1, 1))
        torch.testing.assert_close(head(feats, size), expected)
