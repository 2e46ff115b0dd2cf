"""vwl_lightning: weakly-supervised semantic segmentation with Visual Words Learning and Hybrid Pooling.

A PyTorch Lightning + Hydra re-implementation of Ru, Du, Zhan, Wu (IJCV 2022, arXiv 2202.04812).
The method reference is ``docs/method.md`` in the repository (cited in the code as "spec §N").

The tree follows the pipeline: ``data`` and ``models`` (networks) at the bottom; ``cam``, ``pseudo``,
``evaluation`` and ``tracking`` on them; ``modules`` (LightningModules); ``stages`` (one task per stage and
``pipeline``); ``studies`` over many runs. See ``docs/architecture.md``.
"""

__version__ = "0.1.0"

# every checkpoint is read with weights_only=True (no pickled code runs); torch 2.6 is the first release whose
# weights_only loader is the safe default and covers Lightning's checkpoints. Checked here, once, at import.
TORCH_FLOOR = (2, 6)


def _check_torch(version: str) -> None:
    """ImportError (one line) when ``version`` is below :data:`TORCH_FLOOR`."""
    parts = tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in version.split("+")[0].split(".")[:2])
    if parts < TORCH_FLOOR:
        floor = ".".join(map(str, TORCH_FLOOR))
        raise ImportError(f"vwl_lightning needs torch>={floor} (safe weights_only checkpoint loading), found torch "
                          f"{version}; upgrade with: pip install 'torch>={floor}'")


def _installed_torch() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch")
    except PackageNotFoundError:
        return None


if (_torch_version := _installed_torch()) is not None:
    _check_torch(_torch_version)
