"""Small helpers shared by the stages: atomic file output, manifests."""
