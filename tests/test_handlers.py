"""Engine helpers that every bundle run relies on: early stopping after warm-up, the paper's IoU, the seeded
masking of pretraining batches, the resumable pretraining checkpoint and the atomically saved best model."""

import pytest
import torch
from ignite.engine import Engine, Events

from mdm_med.corruption import PatchMasking
from mdm_med.engines import MaskedPrepareBatch
from mdm_med.handlers import CheckpointResume, EarlyStopAfterWarmup, SaveBestModel
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


def test_checkpoint_waits_for_the_end_of_an_accumulated_step_and_keeps_the_grad_scaler(tmp_path, monkeypatch):
    """Interval saves land only where an optimiser step ends (the accumulated gradient is not in the file); a grad
    scaler (CUDA AMP) is saved and restored with the rest."""
    import mdm_med.handlers as handlers

    net = torch.nn.Linear(2, 1)
    saved = []
    real_save = handlers.save_atomic
    monkeypatch.setattr(handlers, "save_atomic", lambda obj, path: (saved.append(obj["trainer"]["iteration"]),
                                                                    real_save(obj, path)))

    def run(scaler=None, max_epochs=2):
        engine = Engine(lambda e, b: None)
        engine.scaler = scaler
        CheckpointResume(str(tmp_path), {"network": net}, interval=6, accumulation_steps=4).attach(engine)
        engine.run(range(8), max_epochs=max_epochs)  # 8 iterations per epoch
        return engine

    run()
    assert saved == [12, 16]  # 6 and 18 fall inside an accumulated step; 12 ends one; 16 is the end
    (tmp_path / "checkpoint.pt").unlink()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    run(scaler)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["scaler"]["scale"] == 1024.0
    fresh = torch.amp.GradScaler("cpu")  # a resumed run starts a new scaler: it gets the saved scale back
    engine = run(fresh, max_epochs=3)
    assert fresh.get_scale() == 1024.0 and engine.state.iteration == 24


def test_best_model_is_saved_atomically_when_validation_improves(tmp_path, monkeypatch):
    import mdm_med.handlers as handlers

    net = torch.nn.Linear(2, 1)
    evaluator = Engine(lambda e, b: None)
    evaluator.state.best_metric_epoch, evaluator.state.key_metric_name, evaluator.state.best_metric = -1, "dice", -1
    scores, writes = [0.5, 0.7, 0.6], []
    monkeypatch.setattr(handlers, "save_atomic", lambda obj, path: writes.append((evaluator.state.epoch, path)))

    @evaluator.on(Events.EPOCH_COMPLETED)
    def compare(engine):  # the workflow's own best-metric update runs first
        score = scores[engine.state.epoch - 1]
        if score > engine.state.best_metric:
            engine.state.best_metric, engine.state.best_metric_epoch = score, engine.state.epoch

    SaveBestModel(str(tmp_path / "model.pt"), net).attach(evaluator)
    evaluator.run([0], max_epochs=3)
    assert writes == [(1, str(tmp_path / "model.pt")), (2, str(tmp_path / "model.pt"))]  # not after epoch 3
