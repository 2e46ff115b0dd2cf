"""Pipeline stages: one LightningModule or task per stage (classifier, CAMs, pseudo labels, segmenter)."""
