"""LightningModules: the VWL classifier, CAM inference, the segmenter, and their optimiser settings."""
