"""Networks only (plain ``nn.Module``): backbone, hybrid pooling, visual-word codebooks, the VWL classifier
network, DeepLabV2."""
