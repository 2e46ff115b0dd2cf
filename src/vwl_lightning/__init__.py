"""vwl_lightning: weakly-supervised semantic segmentation with Visual Words Learning and Hybrid Pooling.

A PyTorch Lightning + Hydra re-implementation of Ru, Du, Zhan, Wu (IJCV 2022, arXiv 2202.04812).
The method reference is ``docs/method.md`` in the repository (cited in the code as "spec §N").

The tree follows the pipeline: ``data`` and ``models`` (networks) at the bottom; ``cam``, ``pseudo``,
``evaluation`` and ``tracking`` on them; ``modules`` (LightningModules); ``stages`` (one task per stage and
``pipeline``); ``studies`` over many runs. See ``docs/architecture.md``.
"""

__version__ = "0.1.0"
