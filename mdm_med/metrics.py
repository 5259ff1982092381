"""Pixel metrics as the MDM paper reports them, as MONAI metrics with Ignite handlers.

MONAI's ``DiceMetric`` / ``MeanIoU`` give per-image foreground Dice / IoU averaged over images. The paper's "IoU"
for GlaS is not a mean IoU: it is ``Dice / (2 - Dice)`` of the mean Dice; ``PaperIoUMetric`` computes exactly
that, under a name that says so.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.handlers import IgniteMetricHandler
from monai.metrics import CumulativeIterationMetric, DiceMetric

__all__ = ["PaperIoUMetric", "PaperIoU", "class_output"]


class PaperIoUMetric(CumulativeIterationMetric):
    """The MDM paper's GlaS "IoU": ``d / (2 - d)`` where d = per-image foreground Dice averaged over images.

    Inputs as ``DiceMetric``: one-hot / binarised ``y_pred`` and ``y`` of shape (B, C, *S).
    """

    def __init__(self, include_background: bool = False):
        super().__init__()
        self.dice = DiceMetric(include_background=include_background, reduction="none")

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.dice._compute_tensor(y_pred, y)  # (B, C') per-image Dice

    def aggregate(self):  # type: ignore[override]
        per_image = self.get_buffer()
        d = torch.nanmean(per_image.float())
        return d / (2.0 - d)


class PaperIoU(IgniteMetricHandler):
    """Ignite handler for :class:`PaperIoUMetric` (attach as ``additional_metrics``)."""

    def __init__(self, include_background: bool = False, output_transform: Callable = lambda x: x,
                 save_details: bool = False):
        super().__init__(metric_fn=PaperIoUMetric(include_background), output_transform=output_transform,
                         save_details=save_details)


def class_output(class_index: int, keys: tuple[str, str] = ("pred", "label")) -> Callable:
    """Output transform for a per-class metric: from ``engine.state.output`` (list of dicts with one-hot
    ``(C, *S)`` tensors under ``keys``) take channels ``[0, class_index]``, so a metric with
    ``include_background=False`` scores class ``class_index`` alone. Returns ``(preds, labels)`` lists."""
    from monai.handlers import from_engine

    pick = from_engine(list(keys))

    def transform(output):
        preds, labels = pick(output)
        return [p[[0, class_index]] for p in preds], [y[[0, class_index]] for y in labels]

    return transform
