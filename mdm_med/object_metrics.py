"""Object-level (instance) segmentation metrics for nuclei / gland segmentation.

All functions take numpy *instance label maps*: integer arrays of any spatial shape (2-D ``(H, W)`` or n-D),
``0`` = background and every positive id one object.  Ids need not be contiguous.

Implemented metrics

* :func:`aggregated_jaccard_index` - object-level AJI of Kumar et al. 2017 (IEEE TMI 36(7)).
* :func:`glas_object_f1`, :func:`glas_object_dice`, :func:`glas_object_hausdorff` - the object-level
  metrics of the GlaS challenge (Sirinukunwattana et al. 2017, Medical Image Analysis 35).
* :func:`paper_aji_binary` - the *binary* "AJI" the MDM paper reports for MoNuSeg, which is simply the
  per-image foreground IoU of the binary maps (NOT the object-level AJI).

Edge-case conventions (chosen so that an empty prediction is never rewarded when objects exist):

==========================  =====  =======  ==========  ==============
case                        AJI    F1       obj. Dice   obj. Hausdorff
==========================  =====  =======  ==========  ==============
GT and prediction empty     1.0    1.0      1.0         0.0
exactly one of them empty   0.0    0.0      0.0         image diagonal
==========================  =====  =======  ==========  ==============

The "image diagonal" is ``sqrt(sum(s ** 2 for s in shape))`` pixels, an upper bound on any distance
between two pixels of the image.

MONAI wrappers (:class:`AJIMetric`, ... derived from :class:`monai.metrics.CumulativeIterationMetric`) and
Ignite handlers (:class:`AJIHandler`, ... derived from :class:`monai.handlers.IgniteMetricHandler`) are at
the end of the module.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from monai.handlers.ignite_metric import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

__all__ = [
    "AJIHandler",
    "AJIMetric",
    "GlaSObjectDiceHandler",
    "GlaSObjectDiceMetric",
    "GlaSObjectF1Handler",
    "GlaSObjectF1Metric",
    "GlaSObjectHausdorffHandler",
    "GlaSObjectHausdorffMetric",
    "PaperAJIHandler",
    "PaperAJIMetric",
    "aggregated_jaccard_index",
    "glas_object_dice",
    "glas_object_f1",
    "glas_object_hausdorff",
    "instances_from_binary",
    "paper_aji_binary",
    "to_instance_map",
]


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


def instances_from_binary(mask: np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Connected-component instance map of a binary mask.

    Args:
        mask: ``(H, W)`` or n-D array; every non-zero value is foreground.
        connectivity: 1 = faces only (4-neighbourhood in 2-D, 6 in 3-D) up to ``mask.ndim``
            (8-neighbourhood in 2-D, 26 in 3-D), as in :func:`scipy.ndimage.generate_binary_structure`.

    Returns:
        int32 array of ``mask.shape``: 0 background, components numbered 1..N in raster order.
    """
    mask = np.asarray(mask) != 0
    if mask.ndim == 0:
        raise ValueError("mask must have at least one dimension")
    if not 1 <= connectivity <= mask.ndim:
        raise ValueError(f"connectivity must be in [1, {mask.ndim}], got {connectivity}")
    structure = ndimage.generate_binary_structure(mask.ndim, connectivity)
    labels, _ = ndimage.label(mask, structure=structure)
    return labels.astype(np.int32, copy=False)


def _relabel(inst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map arbitrary positive ids to 1..N (ascending original id); returns (relabelled int64 map, original ids (N,))."""
    inst = np.asarray(inst)
    if inst.dtype.kind not in "iub":
        if inst.dtype.kind == "f" and np.all(np.mod(inst, 1) == 0):
            inst = inst.astype(np.int64)
        else:
            raise ValueError(f"instance maps must be integer arrays, got dtype {inst.dtype}")
    if inst.dtype.kind == "i" and inst.size and inst.min() < 0:
        raise ValueError("instance maps must not contain negative ids")
    flat = inst.ravel()
    if flat.size and flat.max() <= max(4 * flat.size, 1 << 16):
        # lookup-table relabelling (linear time) for moderately sized ids
        flat = flat.astype(np.int64, copy=False)
        present = np.bincount(flat) > 0
        present[0] = False
        lut = np.cumsum(present)
        return lut[flat].reshape(inst.shape).astype(np.int64, copy=False), np.flatnonzero(present)
    ids, inverse = np.unique(flat, return_inverse=True)
    inverse = inverse.reshape(inst.shape).astype(np.int64)
    if ids.size and ids[0] == 0:
        return inverse, ids[1:]
    return inverse + 1, ids


def _contingency(gt_inst: np.ndarray, pred_inst: np.ndarray):
    """Pairwise overlaps of GT and predicted objects.

    Returns:
        gt_rel: relabelled GT map (ids 1..nG), pred_rel: relabelled prediction map (ids 1..nP),
        inter: (nG, nP) int64 pixel counts of G_i ∩ S_j (row/col k = relabelled id k + 1),
        gt_area: (nG,), pred_area: (nP,).
    """
    gt_inst, pred_inst = np.asarray(gt_inst), np.asarray(pred_inst)
    if gt_inst.shape != pred_inst.shape:
        raise ValueError(f"shape mismatch: gt {gt_inst.shape} vs pred {pred_inst.shape}")
    gt_rel, gt_ids = _relabel(gt_inst)
    pred_rel, pred_ids = _relabel(pred_inst)
    n_g, n_p = gt_ids.size, pred_ids.size
    # full table including background row/column 0, built with a single bincount over paired ids
    table = np.bincount((gt_rel * (n_p + 1) + pred_rel).ravel(), minlength=(n_g + 1) * (n_p + 1))
    table = table.reshape(n_g + 1, n_p + 1)
    gt_area = table[1:, :].sum(axis=1)
    pred_area = table[:, 1:].sum(axis=0)
    return gt_rel, pred_rel, table[1:, 1:], gt_area, pred_area


def _diagonal(shape: tuple[int, ...]) -> float:
    """Image diagonal sqrt(sum(s^2)) in pixels (upper bound of any pixel distance in the image)."""
    return float(np.sqrt(np.sum(np.square(np.asarray(shape, dtype=np.float64)))))


def _empty_case(n_g: int, n_p: int, both: float, one: float) -> float | None:
    """Value for empty GT and/or prediction, None if both are non-empty."""
    if n_g == 0 and n_p == 0:
        return both
    if n_g == 0 or n_p == 0:
        return one
    return None


# ----------------------------------------------------------------------------------------------------------------
# AJI
# ----------------------------------------------------------------------------------------------------------------


def aggregated_jaccard_index(gt_inst: np.ndarray, pred_inst: np.ndarray) -> float:
    """Object-level Aggregated Jaccard Index (Kumar et al. 2017, IEEE TMI).

    For every GT object G_i the predicted object S_j with maximal IoU is chosen (ties: lowest id);
    |G_i ∩ S_j| is added to the intersection sum I and |G_i ∪ S_j| to the union sum U, and S_j is marked used
    (a prediction may be chosen by several GT objects; its area then enters U once per choice, as in the
    original algorithm).  A GT object without any overlapping prediction adds |G_i| to U.  Finally the area
    of every unused predicted object is added to U.  AJI = I / U.

    Args:
        gt_inst: ``(H, W)`` (or n-D) integer instance map, 0 = background.
        pred_inst: same shape as ``gt_inst``.

    Returns:
        AJI in [0, 1]; 1.0 if both maps are empty, 0.0 if exactly one is empty.
    """
    _, _, inter, gt_area, pred_area = _contingency(gt_inst, pred_inst)
    special = _empty_case(gt_area.size, pred_area.size, 1.0, 0.0)
    if special is not None:
        return special
    union = gt_area[:, None] + pred_area[None, :] - inter
    iou = inter / union
    best = np.argmax(iou, axis=1)  # first maximum -> lowest id on ties
    rows = np.arange(gt_area.size)
    best_inter = inter[rows, best]
    has_match = best_inter > 0
    total_i = best_inter[has_match].sum()
    total_u = union[rows, best][has_match].sum() + gt_area[~has_match].sum()
    used = np.zeros(pred_area.size, dtype=bool)
    used[best[has_match]] = True
    total_u += pred_area[~used].sum()
    return float(total_i / total_u)


def paper_aji_binary(gt_mask: np.ndarray, pred_mask: np.ndarray) -> float:
    """The MDM paper's *binary variant* of "AJI": per-image foreground IoU of the binary maps.

    This is what the MDM paper reports as "AJI" for MoNuSeg (everything there is computed on binary maps).
    It is NOT the object-level AJI of Kumar et al.; use :func:`aggregated_jaccard_index` for that.

    Args:
        gt_mask: ``(H, W)`` (or n-D) array, non-zero = foreground (instance maps are binarised).
        pred_mask: same shape.

    Returns:
        |G ∩ S| / |G ∪ S|; 1.0 if both are empty, 0.0 if exactly one is empty.
    """
    g, p = np.asarray(gt_mask) != 0, np.asarray(pred_mask) != 0
    if g.shape != p.shape:
        raise ValueError(f"shape mismatch: gt {g.shape} vs pred {p.shape}")
    union = np.count_nonzero(g | p)
    if union == 0:
        return 1.0
    return float(np.count_nonzero(g & p) / union)


# ----------------------------------------------------------------------------------------------------------------
# GlaS object metrics
# ----------------------------------------------------------------------------------------------------------------


def glas_object_f1(gt_inst: np.ndarray, pred_inst: np.ndarray) -> float:
    """GlaS object-level F1 (Sirinukunwattana et al. 2017).

    A predicted object S_j is a true positive if it covers at least 50 % of the area of a GT object G_i
    (``|G_i ∩ S_j| >= 0.5 |G_i|``).  Matching is one-to-one (each GT object and each prediction counted at
    most once); among the valid (G_i, S_j) pairs a maximum-cardinality matching is used, so the result does
    not depend on id order (e.g. a prediction merging two GT objects gives one TP and one FN; two halves of
    one GT object give one TP and one FP).  FP = unmatched predictions, FN = unmatched GT objects,
    F1 = 2TP / (2TP + FP + FN).

    Args:
        gt_inst: ``(H, W)`` (or n-D) integer instance map, 0 = background.
        pred_inst: same shape as ``gt_inst``.

    Returns:
        F1 in [0, 1]; 1.0 if both are empty, 0.0 if exactly one is empty.
    """
    _, _, inter, gt_area, pred_area = _contingency(gt_inst, pred_inst)
    n_g, n_p = gt_area.size, pred_area.size
    special = _empty_case(n_g, n_p, 1.0, 0.0)
    if special is not None:
        return special
    valid = 2 * inter >= gt_area[:, None]  # gt_area > 0, so this implies a real overlap
    rows = np.flatnonzero(valid.any(axis=1))
    cols = np.flatnonzero(valid.any(axis=0))
    tp = 0
    if rows.size:
        sub = valid[np.ix_(rows, cols)].astype(np.float64)
        r, c = linear_sum_assignment(sub, maximize=True)
        tp = int(sub[r, c].sum())
    fp, fn = n_p - tp, n_g - tp
    return float(2 * tp / (2 * tp + fp + fn))


def glas_object_dice(gt_inst: np.ndarray, pred_inst: np.ndarray) -> float:
    """GlaS object-level Dice (Sirinukunwattana et al. 2017).

    ``0.5 * [sum_i w_i Dice(G_i, S*(G_i)) + sum_j w~_j Dice(G*(S_j), S_j)]`` with ``w_i = |G_i| / sum|G|``,
    ``w~_j = |S_j| / sum|S|``; S*(G_i) is the predicted object with maximal overlap with G_i (ties: lowest
    id; Dice 0 if no prediction overlaps G_i), G*(S_j) likewise.

    Args:
        gt_inst: ``(H, W)`` (or n-D) integer instance map, 0 = background.
        pred_inst: same shape as ``gt_inst``.

    Returns:
        object Dice in [0, 1]; 1.0 if both are empty, 0.0 if exactly one is empty.
    """
    _, _, inter, gt_area, pred_area = _contingency(gt_inst, pred_inst)
    special = _empty_case(gt_area.size, pred_area.size, 1.0, 0.0)
    if special is not None:
        return special
    # GT side
    j = np.argmax(inter, axis=1)
    ov = inter[np.arange(gt_area.size), j]
    dice_g = 2.0 * ov / (gt_area + pred_area[j])  # ov == 0 -> Dice 0
    # prediction side
    i = np.argmax(inter, axis=0)
    ov_s = inter[i, np.arange(pred_area.size)]
    dice_s = 2.0 * ov_s / (pred_area + gt_area[i])
    term_g = np.sum(gt_area * dice_g) / gt_area.sum()
    term_s = np.sum(pred_area * dice_s) / pred_area.sum()
    return float(0.5 * (term_g + term_s))


def _pair_hausdorff(rel_a: np.ndarray, ia: int, sl_a: tuple, rel_b: np.ndarray, ib: int, sl_b: tuple) -> float:
    """Symmetric Hausdorff distance (pixels) between object ``ia`` of ``rel_a`` and object ``ib`` of ``rel_b``.

    Computed on all pixels of both objects with Euclidean distance transforms restricted to the bounding
    box of their union (exact: nearest points of either object always lie inside that box).
    """
    box = tuple(slice(min(a.start, b.start), max(a.stop, b.stop)) for a, b in zip(sl_a, sl_b))
    a = rel_a[box] == ia
    b = rel_b[box] == ib
    d_to_a = ndimage.distance_transform_edt(~a)
    d_to_b = ndimage.distance_transform_edt(~b)
    return float(max(d_to_a[b].max(), d_to_b[a].max()))


def _bbox_bounds(slices: list) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive bounding boxes of ``find_objects`` slices: (lo (n, ndim), hi (n, ndim)) int64."""
    lo = np.array([[s.start for s in sl] for sl in slices], dtype=np.int64)
    hi = np.array([[s.stop - 1 for s in sl] for sl in slices], dtype=np.int64)
    return lo, hi


def _nearest_by_hausdorff(
    rel_a: np.ndarray, ia: int, sl_a: tuple, rel_b: np.ndarray, slices_b: list, lo_b: np.ndarray, hi_b: np.ndarray
) -> float:
    """Minimal Hausdorff distance between object ``ia`` of ``rel_a`` and any object of ``rel_b``.

    Branch and bound: the Hausdorff distance of two sets is at least that of their projections on each axis,
    hence at least ``max_axis max(|lo_a - lo_b|, |hi_a - hi_b|)`` of their bounding boxes.  Exact pairwise
    distances are evaluated in increasing lower-bound order until the bound exceeds the best distance.
    """
    lo_a = np.array([s.start for s in sl_a])
    hi_a = np.array([s.stop - 1 for s in sl_a])
    lower = np.maximum(np.abs(lo_b - lo_a), np.abs(hi_b - hi_a)).max(axis=1).astype(np.float64)
    best = np.inf
    for k in np.argsort(lower, kind="stable"):
        if lower[k] >= best:
            break
        best = min(best, _pair_hausdorff(rel_a, ia, sl_a, rel_b, int(k) + 1, slices_b[k]))
    return float(best)


def glas_object_hausdorff(gt_inst: np.ndarray, pred_inst: np.ndarray) -> float:
    """GlaS object-level Hausdorff distance in pixels (Sirinukunwattana et al. 2017).

    ``0.5 * [sum_i w_i H(G_i, S*(G_i)) + sum_j w~_j H(G*(S_j), S_j)]`` with the weights of
    :func:`glas_object_dice` and H the symmetric Hausdorff distance between the full pixel sets of the two
    objects (Euclidean, pixel units).  S*(G_i) is the predicted object with maximal overlap with G_i (ties:
    lowest id).  As in the challenge, if no predicted object overlaps G_i, S*(G_i) is the predicted object
    *nearest* to G_i in Hausdorff distance (likewise for G*(S_j)), so missed objects and false positives
    are penalised by their distance to the closest object of the other set.

    Args:
        gt_inst: ``(H, W)`` (or n-D) integer instance map, 0 = background.
        pred_inst: same shape as ``gt_inst``.

    Returns:
        distance >= 0 (lower is better); 0.0 if both are empty; the image diagonal
        ``sqrt(sum(shape ** 2))`` if exactly one is empty.
    """
    gt_rel, pred_rel, inter, gt_area, pred_area = _contingency(gt_inst, pred_inst)
    n_g, n_p = gt_area.size, pred_area.size
    special = _empty_case(n_g, n_p, 0.0, _diagonal(gt_rel.shape))
    if special is not None:
        return special
    gt_sl = ndimage.find_objects(gt_rel, max_label=n_g)
    pred_sl = ndimage.find_objects(pred_rel, max_label=n_p)
    gt_lo, gt_hi = _bbox_bounds(gt_sl)
    pred_lo, pred_hi = _bbox_bounds(pred_sl)
    cache: dict[tuple[int, int], float] = {}

    def pair(i: int, j: int) -> float:  # 0-based indices
        if (i, j) not in cache:
            cache[(i, j)] = _pair_hausdorff(gt_rel, i + 1, gt_sl[i], pred_rel, j + 1, pred_sl[j])
        return cache[(i, j)]

    j_best = np.argmax(inter, axis=1)
    h_g = np.empty(n_g)
    for i in range(n_g):
        j = int(j_best[i])
        if inter[i, j] > 0:
            h_g[i] = pair(i, j)
        else:
            h_g[i] = _nearest_by_hausdorff(gt_rel, i + 1, gt_sl[i], pred_rel, pred_sl, pred_lo, pred_hi)
    i_best = np.argmax(inter, axis=0)
    h_s = np.empty(n_p)
    for j in range(n_p):
        i = int(i_best[j])
        if inter[i, j] > 0:
            h_s[j] = pair(i, j)
        else:
            h_s[j] = _nearest_by_hausdorff(pred_rel, j + 1, pred_sl[j], gt_rel, gt_sl, gt_lo, gt_hi)
    term_g = np.sum(gt_area * h_g) / gt_area.sum()
    term_s = np.sum(pred_area * h_s) / pred_area.sum()
    return float(0.5 * (term_g + term_s))


# ----------------------------------------------------------------------------------------------------------------
# MONAI metrics
# ----------------------------------------------------------------------------------------------------------------


def to_instance_map(x: torch.Tensor | np.ndarray, connectivity: int = 1) -> np.ndarray:
    """Instance map of one channel-first image.

    Args:
        x: ``(C, H, W)`` (or ``(C, *spatial)``).  ``C > 1``: one-hot / probabilities / logits; the argmax over
            channels is taken and every non-zero class is foreground.  ``C == 1``: a label map; if it holds
            two or more different non-zero values it is taken as an instance map (ids as given), otherwise it is
            a binary mask (non-zero = foreground; 0/1 or 0/255 as stored).  Single-channel probability maps must
            be discretised first (e.g. ``monai.transforms.AsDiscrete(threshold=0.5)``).
        connectivity: connectivity for the connected components of binary foregrounds.

    Returns:
        int64 array ``(H, W)`` (``spatial``), 0 background, one positive id per object.
    """
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if arr.ndim < 2:
        raise ValueError(f"expected a channel-first array (C, *spatial), got shape {arr.shape}")
    if arr.shape[0] > 1:
        return instances_from_binary(np.argmax(arr, axis=0) > 0, connectivity).astype(np.int64)
    arr = arr[0]
    if np.unique(arr[arr != 0]).size > 1:
        if arr.dtype.kind == "f" and not np.all(np.mod(arr, 1) == 0):
            raise ValueError("single-channel input with values > 1 must hold integer instance ids")
        if arr.min() < 0:
            raise ValueError("instance ids must be non-negative")
        return arr.astype(np.int64)
    return instances_from_binary(arr > 0, connectivity).astype(np.int64)


class _ObjectMetric(CumulativeIterationMetric):
    """Base class: per-image object metric on batches ``(B, C, H, W)``; buffer holds ``(B, 1)`` values.

    Args:
        connectivity: connectivity of the connected components used on binary inputs.
        reduction: MONAI reduction for :meth:`aggregate` (default ``"mean"`` over images, NaN values ignored).
        get_not_nans: if True, :meth:`aggregate` also returns the number of non-NaN values.
    """

    fn: Callable[[np.ndarray, np.ndarray], float]

    def __init__(
        self,
        connectivity: int = 1,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        self.connectivity = connectivity
        self.reduction = reduction
        self.get_not_nans = get_not_nans

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """y_pred, y: ``(B, C, H, W)`` (see :func:`to_instance_map`); returns ``(B, 1)`` float32 per-image values."""
        if y is None:
            raise ValueError("y (ground truth) is required")
        if y_pred.ndim < 3 or y.ndim < 3:
            raise ValueError(
                f"expected batch-first (B, C, *spatial) tensors, got {tuple(y_pred.shape)}, {tuple(y.shape)}"
            )
        if y_pred.shape[0] != y.shape[0] or y_pred.shape[2:] != y.shape[2:]:
            raise ValueError(f"y_pred {tuple(y_pred.shape)} and y {tuple(y.shape)} do not match")
        vals = [
            type(self).fn(to_instance_map(g, self.connectivity), to_instance_map(p, self.connectivity))
            for p, g in zip(y_pred, y)
        ]
        return torch.tensor(vals, dtype=torch.float32).reshape(-1, 1)

    def aggregate(self, reduction: MetricReduction | str | None = None):
        """Reduce the buffered ``(N, 1)`` per-image values (default: nan-safe mean over images)."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise TypeError("the data to aggregate must be a PyTorch Tensor.")
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f


class AJIMetric(_ObjectMetric):
    """Per-image object-level AJI (:func:`aggregated_jaccard_index`); see :class:`_ObjectMetric` for inputs."""

    fn = staticmethod(aggregated_jaccard_index)


class GlaSObjectF1Metric(_ObjectMetric):
    """Per-image GlaS object F1 (:func:`glas_object_f1`); see :class:`_ObjectMetric` for inputs."""

    fn = staticmethod(glas_object_f1)


class GlaSObjectDiceMetric(_ObjectMetric):
    """Per-image GlaS object Dice (:func:`glas_object_dice`); see :class:`_ObjectMetric` for inputs."""

    fn = staticmethod(glas_object_dice)


class GlaSObjectHausdorffMetric(_ObjectMetric):
    """Per-image GlaS object Hausdorff in pixels (:func:`glas_object_hausdorff`); lower is better."""

    fn = staticmethod(glas_object_hausdorff)


class PaperAJIMetric(_ObjectMetric):
    """Per-image binary foreground IoU = the MDM paper's binary "AJI" variant (:func:`paper_aji_binary`).

    Instances are irrelevant here; inputs are only binarised (connected components do not change the result).
    """

    fn = staticmethod(paper_aji_binary)


# ----------------------------------------------------------------------------------------------------------------
# Ignite handlers
# ----------------------------------------------------------------------------------------------------------------


class _ObjectMetricHandler(IgniteMetricHandler):
    """Ignite handler for an object metric (mirrors :class:`monai.handlers.MeanDice`).

    Args:
        connectivity: connectivity of connected components for binary inputs.
        reduction: reduction over images (default ``"mean"``, NaN-safe).
        output_transform: callable extracting ``(y_pred, y)`` from ``engine.state.output``; both batch-first
            ``(B, C, H, W)`` tensors or lists of channel-first ``(C, H, W)`` tensors.
        save_details: save per-image values to ``engine.state.metric_details[name]`` (``(N, 1)`` tensor).
    """

    metric_cls: type[_ObjectMetric]

    def __init__(
        self,
        connectivity: int = 1,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        output_transform: Callable = lambda x: x,
        save_details: bool = True,
    ) -> None:
        metric_fn = self.metric_cls(connectivity=connectivity, reduction=reduction)
        super().__init__(metric_fn=metric_fn, output_transform=output_transform, save_details=save_details)


class AJIHandler(_ObjectMetricHandler):
    """Mean object-level AJI over images (:class:`AJIMetric`)."""

    metric_cls = AJIMetric


class GlaSObjectF1Handler(_ObjectMetricHandler):
    """Mean GlaS object F1 over images (:class:`GlaSObjectF1Metric`)."""

    metric_cls = GlaSObjectF1Metric


class GlaSObjectDiceHandler(_ObjectMetricHandler):
    """Mean GlaS object Dice over images (:class:`GlaSObjectDiceMetric`)."""

    metric_cls = GlaSObjectDiceMetric


class GlaSObjectHausdorffHandler(_ObjectMetricHandler):
    """Mean GlaS object Hausdorff distance (pixels) over images (:class:`GlaSObjectHausdorffMetric`)."""

    metric_cls = GlaSObjectHausdorffMetric


class PaperAJIHandler(_ObjectMetricHandler):
    """Mean of the paper's binary "AJI" (foreground IoU) over images (:class:`PaperAJIMetric`)."""

    metric_cls = PaperAJIMetric
