"""REHRSeg for nnU-Net v2: HR segmentation of thick-slice MRI trained from thick-slice labels."""

__version__ = "0.2.0"
