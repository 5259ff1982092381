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

__all__ = ["PaperIoUMetric", "PaperIoU"]


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
