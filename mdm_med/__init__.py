"""mdm_med: Masked Diffusion Model (MDM) pretraining and few-label segmentation on MONAI."""

__version__ = "0.1.0"
