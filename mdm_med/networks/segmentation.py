"""End-to-end segmentation U-Net fine-tuned from MDM-pretrained weights (or trained from scratch)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch
from torch import nn

from mdm_med.networks.unet import build_unet

__all__ = ["SegmentationUNet", "load_state_dict_file", "pretrained_unet", "build_segmenter", "optimizer_param_groups"]

logger = logging.getLogger(__name__)


def load_state_dict_file(path: str | os.PathLike, key: str | None = None) -> dict[str, torch.Tensor]:
    """A state dict from a ``.pt`` file: a plain state dict, or ``obj[key]`` of a checkpoint dict."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pretrained checkpoint not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if key is not None:
        if key not in obj:
            raise KeyError(f"{path} has no entry {key!r}; entries: {sorted(obj)}")
        obj = obj[key]
    return obj


class SegmentationUNet(nn.Module):
    """The pretraining U-Net with a new ``num_classes`` output layer, run at t = 0 (no masking).

    ``forward(x (B, in_ch, *S)) -> logits (B, num_classes, *S)``. ``pretrained``: a state dict file of the
    pretraining U-Net; every weight but the output layer is copied (shapes must match, else an error).
    """

    NEW_LAYER = "out.2."  # prefix (in ``self.unet``) of the output layer, which pretraining does not provide

    def __init__(self, preset: str = "cpu", spatial_dims: int = 2, in_channels: int = 3, num_classes: int = 2,
                 pretrained: str | None = None, pretrained_key: str | None = None, **overrides):
        super().__init__()
        self.unet = build_unet(preset, spatial_dims, in_channels, num_classes, **overrides)
        out_conv = self.unet.out[-1]
        out_conv.reset_parameters()  # the pretraining net zero-initialises it; a classifier should not
        if pretrained:
            self.load_pretrained(load_state_dict_file(pretrained, pretrained_key))
            logger.info("SegmentationUNet: loaded pretrained weights from %s", pretrained)

    def load_pretrained(self, state: dict[str, torch.Tensor]) -> None:
        own = self.unet.state_dict()
        head = {k for k in own if k.startswith(self.NEW_LAYER)}
        missing = [k for k in own if k not in head and k not in state]
        bad = [k for k in own if k not in head and k in state and state[k].shape != own[k].shape]
        if missing or bad:
            raise ValueError(
                f"pretrained weights do not fit this U-Net: missing {missing[:5]}, shape mismatch {bad[:5]}")
        self.unet.load_state_dict({k: (own[k] if k in head else state[k]) for k in own})

    def is_new_layer(self, name: str) -> bool:
        """Whether parameter ``name`` (of ``named_parameters()``) is the new output layer, not a pretrained one."""
        return name.startswith("unet." + self.NEW_LAYER)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.unet(x, None)
        assert isinstance(out, torch.Tensor)  # no taps requested: logits (also refines the type for TorchScript)
        return out


def pretrained_unet(path: str | None, preset: str = "cpu", spatial_dims: int = 2, in_channels: int = 3,
                    **overrides):
    """The pretraining ``TimestepUNet`` (out = in channels) with weights from an exported checkpoint (or random
    weights when ``path`` is None: the random-features baseline)."""
    unet = build_unet(preset, spatial_dims, in_channels, in_channels, **overrides)
    if path:
        unet.load_state_dict(load_state_dict_file(path, "state_dict"))
        logger.info("loaded pretrained U-Net from %s", path)
    return unet


def build_segmenter(mode: str = "finetune", preset: str = "cpu", spatial_dims: int = 2, in_channels: int = 3,
                    num_classes: int = 2, pretrained: str | None = None, timestep: int = 50,
                    taps: Sequence[str] | None = None, patch_size: int | Sequence[int] = 8, mask_seed: int = 0,
                    feature_corruption=None, **overrides) -> nn.Module:
    """One factory for every segmentation arm: ``forward(x (B, in_ch, *S)) -> logits (B, num_classes, *S)``.

    - ``finetune``: ``SegmentationUNet`` initialised from ``pretrained`` (required).
    - ``scratch``: the same U-Net, random initialisation (``pretrained`` must be None: no silent mix-ups).
    - ``head``: frozen ``pretrained`` U-Net features at ``timestep`` + trainable pixel-MLP head
      (``pretrained=None`` gives the random-features baseline or a shell to load a saved model into);
      ``feature_corruption`` replaces MDM masking before feature extraction (e.g. DDPM noise).
    """
    from mdm_med.networks.features import DecoderFeatures, FrozenFeatureSegmenter

    if mode == "finetune":
        return SegmentationUNet(preset, spatial_dims, in_channels, num_classes, pretrained, "state_dict", **overrides)
    if mode == "scratch":
        if pretrained:
            raise ValueError("mode 'scratch' takes no pretrained checkpoint; use mode 'finetune'")
        return SegmentationUNet(preset, spatial_dims, in_channels, num_classes, None, **overrides)
    if mode == "head":
        unet = pretrained_unet(pretrained, preset, spatial_dims, in_channels, **overrides)
        features = DecoderFeatures(unet, taps, timestep, patch_size, mask_seed, corruption=feature_corruption)
        return FrozenFeatureSegmenter(features, num_classes)
    raise ValueError(f"unknown segmentation mode {mode!r}; use 'finetune', 'scratch' or 'head'")


def optimizer_param_groups(network: nn.Module, lr: float, pretrained_lr_scale: float = 1.0) -> list[dict]:
    """Trainable parameters of ``network`` as optimizer groups.

    With ``pretrained_lr_scale != 1`` and a ``SegmentationUNet`` (fine-tuning), the weights that come from
    pretraining train at ``lr * pretrained_lr_scale`` and the new output layer at ``lr`` (two groups); otherwise one
    group at ``lr``. A scale of 0 freezes the pretrained weights in effect; it must not be negative.
    """
    if pretrained_lr_scale < 0:
        raise ValueError(f"pretrained_lr_scale must be >= 0, got {pretrained_lr_scale}")
    net = getattr(network, "module", network)  # DistributedDataParallel
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError(f"{type(net).__name__} has no trainable parameters")
    if pretrained_lr_scale == 1.0 or not isinstance(net, SegmentationUNet):
        return [{"params": [p for _, p in named], "lr": lr}]
    new = [p for n, p in named if net.is_new_layer(n)]
    old = [p for n, p in named if not net.is_new_layer(n)]
    return [{"params": old, "lr": lr * pretrained_lr_scale}, {"params": new, "lr": lr}]
