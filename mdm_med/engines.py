"""Pieces injected into MONAI's engines: the corrupting ``prepare_batch`` for pretraining, bfloat16 autocast on CPU,
and the pretrained checkpoint bookkeeping. The training loops themselves are MONAI's ``SupervisedTrainer`` /
``SupervisedEvaluator``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch
from monai.engines import PrepareBatch
from monai.inferers import Inferer

__all__ = ["MaskedPrepareBatch", "CpuAutocastInferer", "autocast_inferer", "engine_amp", "pretrained_ready",
           "pretrain_epochs"]

logger = logging.getLogger(__name__)


class MaskedPrepareBatch(PrepareBatch):
    """Sample t per sample and corrupt the clean batch with ``corruption.add_noise``.

    Returns ``(xt, x0, (t,), {})`` so that ``SupervisedTrainer`` calls ``network(xt, t)`` and scores the prediction
    against the clean image ``x0`` (B, C, *S). ``engine.state.output`` then holds the masked input as ``image``,
    the clean image as ``label`` and the reconstruction as ``pred``.
    """

    def __init__(self, corruption, image_key: str = "image", seed: int | None = 0):
        self.corruption, self.image_key, self.seed = corruption, image_key, seed
        self._generator: torch.Generator | None = None

    def _gen(self, device) -> torch.Generator | None:
        if self.seed is None:
            return None
        device = torch.device(device)
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        x0 = batchdata[self.image_key] if isinstance(batchdata, Mapping) else batchdata
        x0 = torch.as_tensor(x0).to(device=device, non_blocking=non_blocking, **kwargs)
        gen = self._gen(x0.device)
        t = self.corruption.sample_timesteps(x0.shape[0], device=x0.device, generator=gen)
        xt = self.corruption.add_noise(x0, t, generator=gen)
        return xt, x0, (t,), {}


def engine_amp(amp: bool, device) -> bool:
    """The ``amp`` flag for MONAI's engines: their mixed precision (float16 autocast + grad scaler) is CUDA only."""
    return bool(amp) and torch.device(device).type == "cuda"


def autocast_inferer(inferer: Inferer, amp: bool, device) -> Inferer:
    """The bundles' inferer for their ``amp`` switch: ``CpuAutocastInferer(inferer)`` when ``amp`` is on and the device
    is the CPU, else ``inferer`` itself (on CUDA, MONAI's engines do mixed precision: ``engine_amp``)."""
    return CpuAutocastInferer(inferer) if amp and torch.device(device).type == "cpu" else inferer


class CpuAutocastInferer(Inferer):
    """Run ``inferer`` with every network call (each sliding window too) under CPU autocast (bfloat16 by default).

    Outputs come back as float32, so the loss, the window blending and the metrics stay in float32. MONAI's engines
    cannot do this themselves: their ``amp`` autocasts CUDA only. Inputs on another device go through unchanged.
    """

    def __init__(self, inferer: Inferer, dtype: torch.dtype = torch.bfloat16):
        self.inferer, self.dtype = inferer, dtype

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        if inputs.device.type != "cpu":
            return self.inferer(inputs, network, *args, **kwargs)

        def autocast_network(*a, **k):
            with torch.autocast("cpu", dtype=self.dtype):
                out = network(*a, **k)
            return out.float() if torch.is_tensor(out) and out.is_floating_point() else out

        return self.inferer(inputs, autocast_network, *args, **kwargs)


def pretrain_epochs(iterations: int, epoch_length: int, accumulation_steps: int = 1) -> int:
    """Epochs of ``epoch_length`` iterations (micro-batches) that make ``iterations``. Refuses a budget that is not
    a whole number of epochs (the trainer would run another count than the one recorded) and epochs that end in the
    middle of a gradient-accumulation step (MONAI flushes a partial step there)."""
    if iterations < 1 or epoch_length < 1 or iterations % epoch_length:
        raise ValueError(f"pretrain_iterations={iterations} must be a positive multiple of epoch_length={epoch_length}")
    if epoch_length % accumulation_steps:
        raise ValueError(f"epoch_length={epoch_length} must be a multiple of pretrain_accumulation_steps="
                         f"{accumulation_steps}")
    return iterations // epoch_length


def pretrained_ready(path: str, expected_meta: Mapping | None = None, required: bool = False) -> bool:
    """True when a finished pretrained checkpoint exists at ``path`` (so pretraining is skipped).

    When ``expected_meta`` is given, every listed entry must match the checkpoint's ``meta`` (e.g. the data
    source and network preset); a mismatch raises instead of silently reusing weights from other data.
    ``required``: a missing checkpoint raises ``FileNotFoundError`` (a run that must not pretrain by itself).
    """
    if not path or not os.path.isfile(path):
        if required:
            raise FileNotFoundError(f"pretrained checkpoint {path} does not exist; this run does not pretrain, so "
                                    "run the pretraining first")
        return False
    meta = torch.load(path, map_location="cpu", weights_only=False).get("meta", {})
    diff = {k: (meta.get(k), v) for k, v in (expected_meta or {}).items() if meta.get(k) != v}
    if diff:
        raise ValueError(f"pretrained checkpoint {path} does not match this run (checkpoint vs run): {diff}; "
                         "delete it, or point pretrained_checkpoint elsewhere")
    logger.info("pretrained checkpoint %s exists: skipping pretraining", path)
    return True
