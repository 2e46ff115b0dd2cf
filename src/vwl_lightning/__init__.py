"""vwl_lightning: weakly-supervised semantic segmentation with Visual Words Learning and Hybrid Pooling.

A PyTorch Lightning + Hydra re-implementation of Ru, Du, Zhan, Wu (IJCV 2022, arXiv 2202.04812).
The method reference is ``shared/docs/vwl_method.md`` (cited below as "spec §N").
"""

__version__ = "0.1.0"
