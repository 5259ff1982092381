"""Timestep-conditioned U-Net, decoder-feature extraction, pixel head and segmentation wrappers."""

from mdm_med.networks.features import DecoderFeatures, FrozenFeatureSegmenter, PixelMLPHead, feature_norm
from mdm_med.networks.segmentation import (SegmentationUNet, build_segmenter, load_state_dict_file,
                                           optimizer_param_groups, pretrained_unet)
from mdm_med.networks.unet import PRESETS, TimestepUNet, build_unet

__all__ = [
    "PRESETS",
    "TimestepUNet",
    "build_unet",
    "DecoderFeatures",
    "PixelMLPHead",
    "FrozenFeatureSegmenter",
    "SegmentationUNet",
    "build_segmenter",
    "optimizer_param_groups",
    "pretrained_unet",
    "load_state_dict_file",
    "feature_norm",
]
