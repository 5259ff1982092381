"""Tests for mdm_med.object_metrics with hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from scipy.spatial.distance import directed_hausdorff

from mdm_med.object_metrics import (
    AJIHandler,
    AJIMetric,
    GlaSObjectDiceHandler,
    GlaSObjectDiceMetric,
    GlaSObjectF1Handler,
    GlaSObjectF1Metric,
    GlaSObjectHausdorffHandler,
    GlaSObjectHausdorffMetric,
    PaperAJIHandler,
    PaperAJIMetric,
    aggregated_jaccard_index,
    glas_object_dice,
    glas_object_f1,
    glas_object_hausdorff,
    instances_from_binary,
    paper_aji_binary,
    to_instance_map,
)

ALL_FNS = (aggregated_jaccard_index, glas_object_f1, glas_object_dice, glas_object_hausdorff, paper_aji_binary)


def split_fp_miss_case():
    """10x10; GT: G1 rows 0-1 x cols 0-3 (8 px), G2 rows 5-7 x cols 5-7 (9 px).

    Prediction: S1 = left half of G1 (rows 0-1, cols 0-1, 4 px), S2 = right half of G1 (cols 2-3, 4 px),
    S3 = false positive row 9, cols 0-2 (3 px); G2 is missed.
    """
    gt = np.zeros((10, 10), np.int32)
    gt[0:2, 0:4] = 1
    gt[5:8, 5:8] = 2
    pred = np.zeros((10, 10), np.int32)
    pred[0:2, 0:2] = 1
    pred[0:2, 2:4] = 2
    pred[9, 0:3] = 3
    return gt, pred


def merge_case():
    """2x5: G1 rows 0-1 cols 0-1 (4 px), G2 rows 0-1 cols 3-4 (4 px); S1 rows 0-1 cols 0-4 (10 px)."""
    gt = np.zeros((2, 5), np.int32)
    gt[:, 0:2] = 1
    gt[:, 3:5] = 2
    pred = np.ones((2, 5), np.int32)
    return gt, pred


# ---------------------------------------------------------------------------------------------------------------
# hand-computed values
# ---------------------------------------------------------------------------------------------------------------


def test_instances_from_binary_connectivity():
    m = np.zeros((4, 4), bool)
    m[0, 0] = m[1, 1] = True  # diagonal neighbours
    m[3, 2:4] = True
    assert instances_from_binary(m, 1).max() == 3
    lab8 = instances_from_binary(m, 2)
    assert lab8.max() == 2 and lab8[0, 0] == lab8[1, 1]
    assert lab8.dtype == np.int32
    with pytest.raises(ValueError):
        instances_from_binary(m, 3)
    # 3-D works
    assert instances_from_binary(np.ones((2, 2, 2)), 1).max() == 1


def test_aji_split_fp_miss():
    gt, pred = split_fp_miss_case()
    # G1: IoU(S1)=4/8=IoU(S2) -> tie, take S1: I=4, U=8.  G2: no overlap -> U+=9.
    # unused S2 (4) and S3 (3) -> U+=7.  AJI = 4/24 = 1/6
    assert aggregated_jaccard_index(gt, pred) == pytest.approx(1 / 6)


def test_aji_merge():
    gt, pred = merge_case()
    # G1 -> S1: I=4, U=10;  G2 -> S1: I=4, U=10 (S1 counted again).  AJI = 8/20 = 0.4
    assert aggregated_jaccard_index(gt, pred) == pytest.approx(0.4)


def test_f1_split_fp_miss():
    gt, pred = split_fp_miss_case()
    # S1 and S2 both cover 50% of G1 -> one TP (G1 matched once), S2 + S3 FP, G2 FN
    # F1 = 2*1 / (2 + 2 + 1) = 0.4
    assert glas_object_f1(gt, pred) == pytest.approx(0.4)


def test_f1_merge():
    gt, pred = merge_case()
    # S1 covers G1 and G2 fully but counts once: TP=1, FP=0, FN=1 -> 2/3
    assert glas_object_f1(gt, pred) == pytest.approx(2 / 3)


def test_f1_below_half_is_not_tp():
    gt = np.zeros((1, 10), np.int32)
    gt[0, 0:5] = 1  # 5 px
    pred = np.zeros((1, 10), np.int32)
    pred[0, 0:2] = 1  # covers 2/5 < 50%
    # TP=0, FP=1, FN=1 -> 0
    assert glas_object_f1(gt, pred) == 0.0
    pred[0, 0:3] = 1  # 3/5 >= 50% -> TP=1 -> F1 = 1
    assert glas_object_f1(gt, pred) == 1.0


def test_f1_matching_is_order_independent():
    # G1 = (0,0) (1 px), G2 = row 2 cols 0-3 (4 px)
    # P1 = (0,0) + (2,0),(2,1): covers G1 fully and 2/4 of G2; P2 = (2,2),(2,3): covers 2/4 of G2.
    # A greedy "largest overlap first" would give P1-G2 and leave P2 unmatched; max matching: P1-G1, P2-G2.
    gt = np.zeros((3, 4), np.int32)
    gt[0, 0] = 1
    gt[2, :] = 2
    pred = np.zeros((3, 4), np.int32)
    pred[0, 0] = 1
    pred[2, 0:2] = 1
    pred[2, 2:4] = 2
    assert glas_object_f1(gt, pred) == 1.0


def test_object_dice_split_fp_miss():
    gt, pred = split_fp_miss_case()
    # GT side (sum|G|=17): G1 -> S1 (tie in overlap, lowest id): Dice = 2*4/(8+4) = 2/3; G2 -> none: 0.
    #   term_g = 8/17 * 2/3 = 16/51
    # pred side (sum|S|=11): S1 -> G1: 2/3, S2 -> G1: 2/3, S3 -> none: 0.  term_s = (4*2/3 + 4*2/3)/11 = 16/33
    # Dice = 0.5 * (16/51 + 16/33) = 8/51 + 8/33
    assert glas_object_dice(gt, pred) == pytest.approx(8 / 51 + 8 / 33)


def test_object_dice_merge():
    gt, pred = merge_case()
    # GT side: each Dice(G_i, S1) = 2*4/(4+10) = 4/7, weights 1/2 -> 4/7; pred side: S1 -> G1: 4/7
    assert glas_object_dice(gt, pred) == pytest.approx(4 / 7)


def test_object_hausdorff_merge():
    gt, pred = merge_case()
    # H(G1, S1): farthest S1 pixel (col 4) is 3 px from G1 (col 1); G1 inside S1 -> 3. Same for G2 and S1.
    # 0.5 * (3 + 3) = 3
    assert glas_object_hausdorff(gt, pred) == pytest.approx(3.0)


def test_object_hausdorff_nearest_partner():
    # 8x8; GT: G1 rows 0-1 x cols 0-1 (4 px), G2 = (0,6) (1 px)
    # pred: S1 rows 0-1 x cols 1-2 (4 px, shift by 1 of G1), S2 = (7,7) (1 px)
    gt = np.zeros((8, 8), np.int32)
    gt[0:2, 0:2] = 1
    gt[0, 6] = 2
    pred = np.zeros((8, 8), np.int32)
    pred[0:2, 1:3] = 5
    pred[7, 7] = 9
    # H(G1,S1) = 1.
    # G2 has no overlap: H(G2,S1) = max(d((0,6)->S1)=4, farthest S1 px (1,1) -> sqrt(1+25)) = sqrt(26);
    #   H(G2,S2) = sqrt(49+1) = sqrt(50) -> nearest is S1 with sqrt(26).
    # S2 has no overlap: H(S2,G2) = sqrt(50); H(S2,G1) = sqrt(98) (farthest G1 px (0,0)) -> sqrt(50).
    # GT side: (4*1 + 1*sqrt26)/5; pred side: (4*1 + 1*sqrt50)/5 -> total (8 + sqrt26 + sqrt50)/10
    expected = (8 + math.sqrt(26) + math.sqrt(50)) / 10
    assert glas_object_hausdorff(gt, pred) == pytest.approx(expected)


def test_paper_aji_binary_is_foreground_iou():
    gt, pred = split_fp_miss_case()
    # |G|=17, |S|=11, |G∩S| = 8 (S1 and S2 lie in G1) -> IoU = 8 / (17 + 11 - 8) = 0.4
    assert paper_aji_binary(gt, pred) == pytest.approx(0.4)
    assert paper_aji_binary(gt > 0, pred > 0) == pytest.approx(0.4)


def test_perfect_match_with_arbitrary_ids():
    gt, _ = split_fp_miss_case()
    pred = np.where(gt == 1, 40, np.where(gt == 2, 3, 0)).astype(np.uint16)
    gt = np.where(gt == 1, 7, np.where(gt == 2, 100, 0))
    assert aggregated_jaccard_index(gt, pred) == 1.0
    assert glas_object_f1(gt, pred) == 1.0
    assert glas_object_dice(gt, pred) == 1.0
    assert glas_object_hausdorff(gt, pred) == 0.0
    assert paper_aji_binary(gt, pred) == 1.0


# ---------------------------------------------------------------------------------------------------------------
# edge cases
# ---------------------------------------------------------------------------------------------------------------


def test_empty_prediction_is_not_perfect():
    gt, _ = split_fp_miss_case()
    empty = np.zeros_like(gt)
    diag = math.sqrt(10**2 + 10**2)
    for a, b in ((gt, empty), (empty, gt)):
        assert aggregated_jaccard_index(a, b) == 0.0
        assert glas_object_f1(a, b) == 0.0
        assert glas_object_dice(a, b) == 0.0
        assert glas_object_hausdorff(a, b) == pytest.approx(diag)
        assert paper_aji_binary(a, b) == 0.0


def test_both_empty():
    e = np.zeros((6, 7), np.int64)
    assert aggregated_jaccard_index(e, e) == 1.0
    assert glas_object_f1(e, e) == 1.0
    assert glas_object_dice(e, e) == 1.0
    assert glas_object_hausdorff(e, e) == 0.0
    assert paper_aji_binary(e, e) == 1.0


def test_input_validation():
    a = np.zeros((3, 3), np.int32)
    with pytest.raises(ValueError):
        aggregated_jaccard_index(a, np.zeros((3, 4), np.int32))
    with pytest.raises(ValueError):
        glas_object_f1(a - 1, a)
    with pytest.raises(ValueError):
        glas_object_dice(a + 0.5, a)


# ---------------------------------------------------------------------------------------------------------------
# brute-force cross-check on random maps (naive per-object loops)
# ---------------------------------------------------------------------------------------------------------------


def _naive_aji(g, s):
    gi, si = [i for i in np.unique(g) if i], [j for j in np.unique(s) if j]
    if not gi and not si:
        return 1.0
    if not gi or not si:
        return 0.0
    inter = union = 0
    used = set()
    for i in gi:
        G = g == i
        ious = [((G & (s == j)).sum() / (G | (s == j)).sum()) for j in si]
        k = int(np.argmax(ious))
        S = s == si[k]
        if (G & S).sum() == 0:
            union += G.sum()
            continue
        inter += (G & S).sum()
        union += (G | S).sum()
        used.add(si[k])
    union += sum((s == j).sum() for j in si if j not in used)
    return inter / union


def _hd(A, B):
    a, b = np.argwhere(A), np.argwhere(B)
    return max(directed_hausdorff(a, b)[0], directed_hausdorff(b, a)[0])


def _naive_dice_hd(g, s):
    gi, si = [i for i in np.unique(g) if i], [j for j in np.unique(s) if j]

    def side(x, xi, y, yi):
        tot_d = tot_h = 0.0
        area = sum((x == i).sum() for i in xi)
        for i in xi:
            X = x == i
            ov = [(X & (y == j)).sum() for j in yi]
            k = int(np.argmax(ov))
            Y = y == yi[k]
            d = 2 * ov[k] / (X.sum() + Y.sum()) if ov[k] else 0.0
            h = _hd(X, Y) if ov[k] else min(_hd(X, y == j) for j in yi)
            tot_d += X.sum() / area * d
            tot_h += X.sum() / area * h
        return tot_d, tot_h

    d1, h1 = side(g, gi, s, si)
    d2, h2 = side(s, si, g, gi)
    return 0.5 * (d1 + d2), 0.5 * (h1 + h2)


def _random_instances(rng, shape, n):
    lab = np.zeros(shape, np.int32)
    for _k in range(1, n + 1):
        r, c = rng.integers(0, shape[0] - 3), rng.integers(0, shape[1] - 3)
        h, w = rng.integers(1, 5, size=2)
        lab[r : r + h, c : c + w] = rng.integers(1, 50)  # random ids, may collide / overwrite
    return lab


def test_against_naive_reference():
    rng = np.random.default_rng(0)
    for _ in range(15):
        g = _random_instances(rng, (20, 24), int(rng.integers(1, 7)))
        s = _random_instances(rng, (20, 24), int(rng.integers(1, 7)))
        assert aggregated_jaccard_index(g, s) == pytest.approx(_naive_aji(g, s))
        d, h = _naive_dice_hd(g, s)
        assert glas_object_dice(g, s) == pytest.approx(d)
        assert glas_object_hausdorff(g, s) == pytest.approx(h)


def test_3d_volumes():
    g = np.zeros((4, 5, 6), np.int32)
    g[0:2, 0:2, 0:2] = 1
    s = np.zeros_like(g)
    s[0:2, 0:2, 1:3] = 1  # shifted by one voxel: overlap 4 of 8
    assert aggregated_jaccard_index(g, s) == pytest.approx(4 / 12)
    assert glas_object_f1(g, s) == 1.0
    assert glas_object_dice(g, s) == pytest.approx(0.5)
    assert glas_object_hausdorff(g, s) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------------
# MONAI metrics + ignite handlers
# ---------------------------------------------------------------------------------------------------------------


def test_to_instance_map_conventions():
    bin_map = torch.tensor([[[1, 0, 1], [1, 0, 1]]])  # (1, 2, 3): two components
    assert to_instance_map(bin_map).max() == 2
    inst = torch.tensor([[[2, 0, 2], [2, 0, 5]]])  # ids > 1 -> kept as given (object 2 is not connected)
    np.testing.assert_array_equal(to_instance_map(inst), inst[0].numpy())
    stored = bin_map * 255  # a binary mask as a 0/255 PNG is not one object with id 255
    np.testing.assert_array_equal(to_instance_map(stored), to_instance_map(bin_map))
    onehot = torch.stack([1 - bin_map[0], bin_map[0]]).float()  # (2, 2, 3)
    np.testing.assert_array_equal(to_instance_map(onehot), to_instance_map(bin_map))


def _batch():
    gt1, pred1 = split_fp_miss_case()
    gt2, pred2 = np.zeros((10, 10), np.int32), np.zeros((10, 10), np.int32)
    gt2[2:5, 2:5] = 1
    pred2[2:5, 3:6] = 1
    # y: image 0 as instance map (ids up to 2), image 1 binary; y_pred: binary (B,1,H,W) for 0, one-hot for 1
    y = torch.from_numpy(np.stack([gt1, gt2])[:, None])
    y_pred_bin = torch.from_numpy(np.stack([pred1 > 0, pred2 > 0])[:, None].astype(np.float32))
    y_pred_onehot = torch.cat([1 - y_pred_bin, y_pred_bin], dim=1)
    return y_pred_bin, y_pred_onehot, y


@pytest.mark.parametrize(
    "metric_cls,handler_cls,fn",
    [
        (AJIMetric, AJIHandler, aggregated_jaccard_index),
        (GlaSObjectF1Metric, GlaSObjectF1Handler, glas_object_f1),
        (GlaSObjectDiceMetric, GlaSObjectDiceHandler, glas_object_dice),
        (GlaSObjectHausdorffMetric, GlaSObjectHausdorffHandler, glas_object_hausdorff),
        (PaperAJIMetric, PaperAJIHandler, paper_aji_binary),
    ],
)
def test_metric_and_handler(metric_cls, handler_cls, fn):
    y_pred_bin, y_pred_onehot, y = _batch()
    # expected: y_pred binary -> connected components; y[0] instance ids kept, y[1] binary -> components
    expected = []
    for b in range(2):
        gt = y[b, 0].numpy() if y[b].max() > 1 else instances_from_binary(y[b, 0].numpy())
        expected.append(fn(gt, instances_from_binary(y_pred_bin[b, 0].numpy())))
    # pred of image 0: S1 and S2 touch -> one component = G1 exactly, so AJI = 8 / (8 + 9 + 3) = 0.4
    if fn is aggregated_jaccard_index:
        assert expected[0] == pytest.approx(0.4)

    metric = metric_cls()
    metric(y_pred=y_pred_bin, y=y)
    metric(y_pred=list(y_pred_onehot), y=list(y))  # list of channel-first tensors, one-hot prediction
    assert metric.get_buffer().shape == (4, 1)
    assert metric.aggregate().item() == pytest.approx(np.mean(expected * 2), rel=1e-6)

    data = [(y_pred_bin, y), (y_pred_onehot, y)]
    engine = Engine(lambda e, batch: batch)
    handler_cls(output_transform=lambda out: (out[0], out[1])).attach(engine, "m")
    engine.run(data, max_epochs=1)
    assert engine.state.metrics["m"] == pytest.approx(np.mean(expected * 2), rel=1e-6)
    assert engine.state.metric_details["m"].shape == (4, 1)
