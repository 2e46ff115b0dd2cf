"""Networks: backbone, hybrid pooling, visual-word codebooks, the VWL classifier, DeepLab."""
