"""Engine helpers that every bundle run relies on: early stopping after warm-up, the paper's IoU, and the seeded
masking of pretraining batches."""

import pytest
import torch
from ignite.engine import Engine, Events

from mdm_med.corruption import PatchMasking
from mdm_med.engines import MaskedPrepareBatch
from mdm_med.handlers import EarlyStopAfterWarmup
from mdm_med.metrics import PaperIoUMetric


def _train_with_scores(scores, patience, warmup, validate_every=1):
    """Run a no-op trainer whose evaluator reports ``scores[epoch - 1]`` after every ``validate_every`` epochs;
    returns the epoch at which training ended."""
    trainer, evaluator = Engine(lambda e, b: None), Engine(lambda e, b: None)

    @trainer.on(Events.EPOCH_COMPLETED)
    def validate(engine):  # registered first, like the bundles' ValidationHandler
        if engine.state.epoch % validate_every == 0:
            evaluator.state.epoch = engine.state.epoch
            evaluator.state.metrics = {"dice": scores[engine.state.epoch - 1]}

    EarlyStopAfterWarmup(evaluator, "dice", patience=patience, warmup_epochs=warmup).attach(trainer)
    trainer.run([0], max_epochs=len(scores))
    return trainer.state.epoch


def test_early_stop_counts_only_after_warmup():
    scores = [0.5, 0.6, 0.4, 0.4, 0.4, 0.9, 0.9, 0.9]
    assert _train_with_scores(scores, patience=2, warmup=3) == 5  # epoch 3 is warm-up; 4 and 5 count
    assert _train_with_scores(scores, patience=2, warmup=5) == 8  # 0.9 at epoch 6 resets; 7 and 8 would stop at 8
    assert _train_with_scores([0.5] * 8, patience=3, warmup=0) == 4
    # epochs without a validation do not count: validations at 2 (best), 4 and 6 (bad) -> stop at 6, not 5
    assert _train_with_scores([0.5] * 8, patience=2, warmup=3, validate_every=2) == 6


def test_paper_iou_is_from_the_mean_dice():
    y = torch.zeros(2, 2, 4, 4)
    y[:, 1, :2] = 1
    y[:, 0] = 1 - y[:, 1]
    pred = y.clone()
    pred[1, 1, :, :] = 0  # image 1: no foreground predicted -> Dice 0
    pred[1, 0] = 1
    metric = PaperIoUMetric()
    metric(pred, y)
    d = 0.5  # mean of per-image Dice 1 and 0
    assert metric.aggregate().item() == pytest.approx(d / (2 - d))


def test_masked_batches_are_seeded():
    x = torch.rand(4, 3, 16, 16) * 2 - 1

    def batches(seed, n=3):
        prep = MaskedPrepareBatch(PatchMasking(4), seed=seed)
        return [prep({"image": x}) for _ in range(n)]

    a, b, c = batches(0), batches(0), batches(1)
    for (xa, x0, (ta,), _), (xb, _, (tb,), _) in zip(a, b):
        assert torch.equal(ta, tb) and torch.equal(xa, xb) and torch.equal(x0, x)
    assert not torch.equal(a[0][2][0], a[1][2][0]) or not torch.equal(a[0][0], a[1][0])  # the stream moves on
    assert any(not torch.equal(p[0], q[0]) for p, q in zip(a, c))  # another seed, other masks
