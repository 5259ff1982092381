"""Ignite handlers: resumable checkpoints, weight export, TensorBoard image grids, throughput, early stopping."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from mdm_med.utils import save_atomic

__all__ = ["LoadPretrained", "CheckpointResume", "ExportWeights", "SaveBestModel", "ImageGrid", "Throughput",
           "EarlyStopAfterWarmup"]

logger = logging.getLogger(__name__)


class LoadPretrained:
    """On start, load pretrained U-Net weights (an ``ExportWeights`` file) into ``network.load_pretrained``.

    Loading when the run starts, not when the network is built, lets one config pretrain and then fine-tune, and
    lets MONAI build the workflow (``check_properties``) before the pretrained file exists. ``path=None``: nothing
    to load (training from scratch / random features), which is logged.
    """

    def __init__(self, network: torch.nn.Module, path: str | None):
        self.network, self.path = network, path

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        from mdm_med.networks.segmentation import load_state_dict_file

        if not self.path:
            logger.info("no pretrained weights: %s starts from random initialisation", type(self.network).__name__)
            return
        net = getattr(self.network, "module", self.network)
        net.load_pretrained(load_state_dict_file(self.path, "state_dict"))
        logger.info("loaded pretrained weights from %s", self.path)


class CheckpointResume:
    """Save ``save_dict`` (network, optimizer, EMA ...) plus the engine's own state (key ``trainer``) and, under CUDA
    AMP, its grad scaler (key ``scaler``) to one file every ``interval`` iterations and at the end, atomically; on
    start, resume from that file when it exists. With gradient accumulation an interval save waits for an iteration
    that ends an optimiser step (``iteration % accumulation_steps == 0``): the gradient accumulated so far is not
    saved. ``meta`` (settings that made the saved state) is stored with it, and a file saved with other ``meta`` is
    refused instead of resumed. The current config decides how long to train, so a resumed run may train longer, but
    not shorter: a file saved past this run's last iteration, or with another epoch length, is refused too.
    """

    def __init__(self, save_dir: str, save_dict: Mapping, interval: int = 200, filename: str = "checkpoint.pt",
                 meta: Mapping | None = None, accumulation_steps: int = 1):
        self.path = os.path.join(save_dir, filename)
        self.save_dict = dict(save_dict)
        self.interval, self.accumulation_steps = int(interval), int(accumulation_steps)
        self.meta = None if meta is None else dict(meta)

    def attach(self, engine: Engine) -> None:
        self.save_dict["trainer"] = engine
        engine.add_event_handler(Events.STARTED, self.load)
        engine.add_event_handler(Events.ITERATION_COMPLETED(event_filter=self._due), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def _due(self, engine: Engine, iteration: int) -> bool:
        return iteration % self.interval == 0 and iteration % self.accumulation_steps == 0

    @staticmethod
    def _scaler(engine: Engine):
        """The engine's grad scaler (MONAI creates it when a CUDA AMP run starts), else None."""
        return getattr(engine, "scaler", None)

    def load(self, engine: Engine) -> None:
        if not os.path.isfile(self.path):
            return
        max_epochs = engine.state.max_epochs
        ckpt = torch.load(self.path, map_location="cpu", weights_only=False)
        if self.meta is not None:
            saved = ckpt.get("meta") or {}
            diff = {k: (saved.get(k), v) for k, v in self.meta.items() if saved.get(k) != v}
            if diff:
                raise ValueError(f"{self.path} was saved by a run with other settings (checkpoint vs this run: "
                                 f"{diff}); delete it to start over, or run with its settings to resume it")
        saved = ckpt.get("trainer", {})
        length, last = engine.state.epoch_length, max_epochs * engine.state.epoch_length
        if saved.get("epoch_length", length) != length or saved.get("iteration", 0) > last:
            raise ValueError(f"{self.path} was saved at iteration {saved.get('iteration')} with epoch length "
                             f"{saved.get('epoch_length')}; this run trains {last} iterations with epoch length "
                             f"{length}, so it cannot resume it: delete it to start over")
        Checkpoint.load_objects(to_load=self.save_dict,
                                checkpoint={k: v for k, v in ckpt.items() if k not in ("meta", "scaler")})
        if "scaler" in ckpt and self._scaler(engine) is not None:
            self._scaler(engine).load_state_dict(ckpt["scaler"])
        engine.state.max_epochs = max_epochs  # the current config decides how long to train
        logger.info("resumed from %s at epoch %d, iteration %d", self.path, engine.state.epoch, engine.state.iteration)

    def save(self, engine: Engine) -> None:
        state = {k: v.state_dict() for k, v in self.save_dict.items()}
        if self._scaler(engine) is not None:
            state["scaler"] = self._scaler(engine).state_dict()
        save_atomic(state if self.meta is None else {**state, "meta": self.meta}, self.path)


class ExportWeights:
    """On completion, write ``{"state_dict": network weights, "meta": meta}`` atomically to ``path``."""

    def __init__(self, path: str, network: torch.nn.Module, meta: Mapping | None = None):
        self.path, self.network, self.meta = path, network, dict(meta or {})

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        net = getattr(self.network, "module", self.network)
        meta = {**self.meta, "iterations": engine.state.iteration}
        save_atomic({"state_dict": net.state_dict(), "meta": meta}, self.path)
        logger.info("exported weights to %s", self.path)


class SaveBestModel:
    """Attach to an evaluator with a key metric: after each validation that improved it (MONAI's
    ``state.best_metric_epoch`` is the epoch just run), write ``network.state_dict()`` (unwrapped from DDP)
    atomically to ``path``, so a crash never leaves a half-written or no best model. MONAI's ``CheckpointSaver``
    deletes the previous best before writing the new one in place."""

    def __init__(self, path: str, network: torch.nn.Module):
        self.path, self.network = path, network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)  # after the workflow's own best-metric update

    def __call__(self, engine: Engine) -> None:
        if engine.state.best_metric_epoch != engine.state.epoch:
            return
        save_atomic(getattr(self.network, "module", self.network).state_dict(), self.path)
        logger.info("best %s so far (%.4f): saved %s", engine.state.key_metric_name, engine.state.best_metric,
                    self.path)


def _batched(output, key):
    """``engine.state.output[key]`` as a batch tensor, whether the output is decollated (list of dicts) or not."""
    if isinstance(output, list):
        return torch.stack([torch.as_tensor(o[key]) for o in output])
    return torch.as_tensor(output[key])


def _to_rgb(x: torch.Tensor, kind: str) -> torch.Tensor:
    """(B, C, H, W) -> (B, 3, H, W) in [0, 1]. kind: 'image' ([-1, 1]) or 'label' (class ids / one-hot)."""
    x = x.detach().float().cpu()
    if kind == "image":
        x = ((x + 1) / 2).clamp(0, 1)
    elif x.shape[1] > 1:  # one-hot or logits -> class ids
        x = x.argmax(1, keepdim=True).float()
    if kind == "label":
        x = x / max(1.0, float(x.max()))
    if x.shape[1] == 1:
        x = x.expand(-1, 3, *x.shape[2:])
    return x[:, :3]


class ImageGrid:
    """Write a TensorBoard image grid: one row per sample (up to ``max_images``), one column per entry of
    ``columns`` (name -> (key in engine.state.output, 'image' | 'label')). 2-D, or the middle slice of 3-D.

    Pretraining: columns image / masked input / reconstruction; segmentation: image / label / prediction.
    """

    def __init__(self, log_dir: str, tag: str, columns: Mapping[str, tuple[str, str]], interval: int = 100,
                 max_images: int = 4, epoch_level: bool = False):
        self.log_dir, self.tag, self.columns = log_dir, tag, dict(columns)
        self.interval, self.max_images, self.epoch_level = interval, max_images, epoch_level
        self._writer = None

    def attach(self, engine: Engine) -> None:
        event = Events.EPOCH_COMPLETED if self.epoch_level else Events.ITERATION_COMPLETED(every=self.interval)
        engine.add_event_handler(event, self)

    def __call__(self, engine: Engine) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if self._writer is None:
            self._writer = SummaryWriter(log_dir=self.log_dir)
        cols = []
        for key, kind in self.columns.values():
            x = _batched(engine.state.output, key)[: self.max_images]
            if x.ndim == 5:
                x = x[..., x.shape[-1] // 2]
            cols.append(_to_rgb(x, kind))
        size = cols[0].shape[2:]
        cols = [torch.nn.functional.interpolate(c, size=size, mode="nearest") for c in cols]
        grid = torch.cat([torch.cat(list(c), dim=2) for c in cols], dim=1)  # rows: columns stacked; cols: samples
        step = engine.state.epoch if self.epoch_level else engine.state.iteration
        self._writer.add_image(f"{self.tag}/{'|'.join(self.columns)}", grid, step)
        self._writer.flush()


class Throughput:
    """Log seconds per iteration and images per second every ``interval`` iterations; keep totals in
    ``engine.state.metrics`` (``sec_per_iter``, ``images_per_sec``)."""

    def __init__(self, interval: int = 50, batch_size: int | None = None, name: str = "throughput"):
        self.interval, self.batch_size, self.name = interval, batch_size, name

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self._log)
        engine.add_event_handler(Events.COMPLETED, self._log)

    def _reset(self, engine: Engine) -> None:
        self.t0 = None

    def _start(self, engine: Engine) -> None:
        if self.t0 is None:  # first iteration actually run (after any resume)
            self.t0, self.it0 = time.perf_counter(), engine.state.iteration - 1

    def _log(self, engine: Engine) -> None:
        its = engine.state.iteration - self.it0 if self.t0 is not None else 0
        if its <= 0:
            return
        spi = (time.perf_counter() - self.t0) / its
        engine.state.metrics["sec_per_iter"] = spi
        msg = f"{self.name}: {spi:.3f} s/iteration over {its} iterations"
        if self.batch_size:
            engine.state.metrics["images_per_sec"] = self.batch_size / spi
            msg += f", {self.batch_size / spi:.1f} images/s"
        logger.info(msg)


class EarlyStopAfterWarmup:
    """Attach to the trainer after its ``ValidationHandler``: stop training when the evaluator's ``metric_name``
    has not improved for ``patience`` validations, counting only after ``warmup_epochs`` epochs (the paper: 20
    after epoch 40 on GlaS)."""

    def __init__(self, evaluator: Engine, metric_name: str, patience: int = 20, warmup_epochs: int = 40,
                 min_delta: float = 0.0):
        self.evaluator, self.metric_name = evaluator, metric_name
        self.patience, self.warmup_epochs, self.min_delta = patience, warmup_epochs, min_delta
        self.best, self.bad = -float("inf"), 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, trainer: Engine) -> None:
        state = self.evaluator.state
        if state is None or state.epoch != trainer.state.epoch or self.metric_name not in state.metrics:
            return  # no validation in this epoch
        score = float(state.metrics[self.metric_name])
        if score > self.best + self.min_delta:
            self.best, self.bad = score, 0
            return
        if trainer.state.epoch <= self.warmup_epochs:
            return
        self.bad += 1
        if self.bad >= self.patience:
            logger.info("early stop at epoch %d: %s has not improved on %.4f for %d validations",
                        trainer.state.epoch, self.metric_name, self.best, self.bad)
            trainer.terminate()
