import pytest
import torch

from mdm_med.networks import (
    DecoderFeatures,
    FrozenFeatureSegmenter,
    PixelMLPHead,
    SegmentationUNet,
    build_segmenter,
    build_unet,
    feature_norm,
    optimizer_param_groups,
)
from mdm_med.networks.features import upsample
from mdm_med.networks.unet import PAPER_TAPS


def test_paper_preset_size_and_taps():
    with torch.device("meta"):
        net = build_unet("paper")
    assert abs(sum(p.numel() for p in net.parameters()) / 1e6 - 311) < 2  # MDM_SPEC: about 311 M
    assert net.default_taps == PAPER_TAPS
    chans = [net.tap_channels[t] for t in PAPER_TAPS]
    assert chans == [384, 384, 384, 384, 192] and sum(chans) == 1728
    assert [256 // net.tap_factor[t] for t in PAPER_TAPS] == [64, 64, 64, 128, 128]


@pytest.mark.parametrize("dims,size", [(2, (32, 48)), (3, (16, 16, 8))])
def test_unet_shapes_and_taps(dims, size):
    net = build_unet("tiny", spatial_dims=dims, in_channels=1, out_channels=1)
    x = torch.randn(2, 1, *size)
    t = torch.tensor([0, 999])
    assert net(x, t).shape == x.shape
    taps = net(x, t, taps=net.default_taps)
    for name, f in taps.items():
        assert f.shape[1] == net.tap_channels[name]
        assert tuple(f.shape[2:]) == tuple(s // net.tap_factor[name] for s in size)
    with pytest.raises(KeyError):
        net(x, t, taps=["dec3.0"])
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 1, *[s + 1 for s in size]), t[:1])


def test_timestep_changes_output():
    torch.manual_seed(0)
    net = build_unet("tiny")
    for p in net.parameters():  # zero-initialised output layers would hide the conditioning
        torch.nn.init.normal_(p, 0, 0.05)
    x = torch.randn(1, 3, 32, 32)
    assert not torch.allclose(net(x, torch.tensor([0])), net(x, torch.tensor([900])))


def test_feature_norm_equals_materialised_norm():
    feats = [torch.randn(2, 5, 8, 8), torch.randn(2, 3, 16, 16), torch.randn(2, 4, 32, 32)]
    size = (32, 32)
    cat = torch.cat([upsample(f, size) for f in feats], 1)
    torch.testing.assert_close(feature_norm(feats, size), cat.flatten(1).norm(dim=1), rtol=1e-5, atol=1e-5)
    feats3 = [torch.randn(1, 2, 4, 4, 2), torch.randn(1, 3, 8, 8, 4)]
    cat3 = torch.cat([upsample(f, (8, 8, 4)) for f in feats3], 1)
    torch.testing.assert_close(feature_norm(feats3, (8, 8, 4)), cat3.flatten(1).norm(dim=1), rtol=1e-5, atol=1e-5)


def test_head_per_tap_equals_materialised():
    torch.manual_seed(0)
    net = build_unet("tiny")
    extractor = DecoderFeatures(net, timestep=50, patch_size=4)
    seg = FrozenFeatureSegmenter(extractor, num_classes=3).eval()
    for m in seg.head.modules():  # make the comparison non-trivial
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 32, 32)
    fast = seg(x)
    slow = seg.head.forward_materialized(extractor.materialize(x))
    assert fast.shape == (2, 3, 32, 32)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-6)


def test_head_architecture_and_init():
    head = PixelMLPHead([8, 4], num_classes=2)
    convs = [m for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [128, 128, 32, 2]
    assert all(abs(c.weight.std().item() - 0.02) < 0.01 for c in convs[:3])
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in head.modules()) == 2
    assert [m.out_channels for m in PixelMLPHead([8], 30).modules() if isinstance(m, torch.nn.Conv2d)][-2] == 128


def test_features_deterministic_and_frozen():
    net = build_unet("tiny")
    extractor = DecoderFeatures(net, timestep=500, patch_size=4)
    x = torch.randn(2, 3, 32, 32)
    a, b = extractor(x), extractor(x)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    seg = FrozenFeatureSegmenter(extractor)
    seg.train()
    assert not extractor.unet.training
    assert all(not p.requires_grad for p in extractor.unet.parameters())
    assert all(p.requires_grad for p in seg.head.parameters())


def test_finetune_weight_transfer(tmp_path):
    torch.manual_seed(0)
    pre = build_unet("tiny")
    for p in pre.parameters():
        torch.nn.init.normal_(p, 0, 0.1)
    path = tmp_path / "pretrained.pt"
    torch.save({"state_dict": pre.state_dict(), "meta": {}}, path)
    seg = build_segmenter("finetune", preset="tiny", num_classes=2, pretrained=str(path))
    own = seg.unet.state_dict()
    copied = [k for k in own if not k.startswith("out.2.")]
    assert all(torch.equal(own[k], pre.state_dict()[k]) for k in copied)
    assert own["out.2.weight"].shape[0] == 2 and own["out.2.weight"].abs().sum() > 0  # new, non-zero classifier
    assert seg(torch.randn(1, 3, 32, 32)).shape == (1, 2, 32, 32)
    scratch = build_segmenter("scratch", preset="tiny")
    assert not torch.equal(scratch.unet.state_dict()["input_conv.weight"], own["input_conv.weight"])
    with pytest.raises(ValueError):
        build_segmenter("scratch", preset="tiny", pretrained=str(path))
    torch.save({"state_dict": build_unet("cpu").state_dict()}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="do not fit"):
        SegmentationUNet("tiny", pretrained=str(tmp_path / "other.pt"), pretrained_key="state_dict")


def test_head_batchnorm_running_stats_start_from_the_first_batch():
    """The first training batch sets the running statistics exactly (tiny-variance inputs), on the fused path and
    the plain path alike; later batches follow momentum max(0.1, 1/n)."""
    torch.manual_seed(0)
    feats = [torch.randn(4, 8, 8, 8) * 1e-4, torch.randn(4, 4, 16, 16) * 1e-4]
    fused, plain = PixelMLPHead([8, 4], 2), PixelMLPHead([8, 4], 2)
    plain.load_state_dict(fused.state_dict())
    fused.train()
    plain.train()
    fused(feats, (16, 16)).sum().backward()  # fused ReLU-BN-Linear path (grad enabled)
    with torch.no_grad():
        plain(feats, (16, 16))  # nn.BatchNorm path
    bn = fused.rest[1]
    for a, b in zip(fused.state_dict().values(), plain.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-12)
    assert bn.running_var.max() < 1e-3, "running variance still carries the initial 1"
    assert int(bn.num_batches_tracked) == 1
    assert fused._warm_momentum(bn) == 0.5 and plain._warm_momentum(plain.rest[1]) == 0.5
    for _ in range(20):
        fused(feats, (16, 16))
    assert fused._warm_momentum(bn) == 0.1


def test_optimizer_param_groups_scale_pretrained_weights_only():
    net = SegmentationUNet("tiny", 2, 3, 2)
    trainable = {id(p) for p in net.parameters()}
    one = optimizer_param_groups(net, 1e-3)
    assert len(one) == 1 and {id(p) for p in one[0]["params"]} == trainable
    old, new = optimizer_param_groups(net, 1e-3, 0.1)
    assert old["lr"] == pytest.approx(1e-4) and new["lr"] == 1e-3
    assert {id(p) for p in new["params"]} == {id(p) for p in net.unet.out[2].parameters()}
    assert {id(p) for p in old["params"]} | {id(p) for p in new["params"]} == trainable
    assert not {id(p) for p in old["params"]} & {id(p) for p in new["params"]}
    # a scale of 0: one AdamW step moves the new output layer only
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.AdamW(optimizer_param_groups(net, 1e-2, 0.0), weight_decay=0.0)
    x, y = torch.randn(2, 3, 16, 16), torch.randint(0, 2, (2, 16, 16))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
    moved = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert moved == {n for n, _ in net.named_parameters() if net.is_new_layer(n)}
    with pytest.raises(ValueError, match=">= 0"):
        optimizer_param_groups(net, 1e-3, -1.0)


def test_optimizer_param_groups_head_trains_the_head_only():
    seg = build_segmenter("head", "tiny", 2, 3, 2, None, patch_size=4)
    groups = optimizer_param_groups(seg, 1e-3, 0.1)  # not a fine-tuned U-Net: one group, frozen features left out
    assert len(groups) == 1 and groups[0]["lr"] == 1e-3
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in seg.parameters() if p.requires_grad}
    assert len(groups[0]["params"]) < len(list(seg.parameters()))
