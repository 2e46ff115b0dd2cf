"""Small helpers shared by every layer: atomic file output, manifests, checkpoints, precision, the config
folder."""
