"""Scoring against ground truth: mIoU (``metrics``), reports, CAM diagnostics (completeness, spill),
the embedded benchmark's mechanism checks and codebook use."""
