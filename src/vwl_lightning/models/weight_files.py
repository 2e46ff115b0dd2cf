"""Weight files: where a backbone's weights come from and how their keys map onto timm's.

``weights_path`` is a local file or ``package:MODULE[/relative/file.pth]`` (the one ``.pth``/``.pt`` file shipped
inside an installed Python package); files are read with ``weights_only=True`` and named by their SHA-256.
Key layouts (:data:`~vwl_lightning.models.backbone.WEIGHTS_FORMATS`): timm and torchvision ResNets share key
names; ``efficientnet_pytorch`` (lukemelas) keys are renamed to timm's by :func:`efficientnet_pytorch_to_timm`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vwl_lightning.errors import ConfigError, DataError, load_error_text

PACKAGE_PREFIX = "package:"
WEIGHT_FILE_SUFFIXES = (".pth", ".pt")

# efficientnet_pytorch (lukemelas) → timm EfficientNet names (spec §1 backbone generalisation).
# Top level: stem conv/BN, head conv/BN, classifier.
EFFNET_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                    "_fc": "classifier"}
# A block with an expansion conv (timm InvertedResidual): expand → depthwise → (SE) → project.
EFFNET_EXPAND_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                       "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand",
                       "_project_conv": "conv_pwl", "_bn2": "bn3"}
# A block without expansion (timm DepthwiseSeparableConv, the first block): depthwise → (SE) → project.
EFFNET_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
                   "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}


def sha256_of(path: str | os.PathLike) -> str:
    """SHA-256 of a file, logged with every loaded weight file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_weights_path(spec: str | os.PathLike, key: str = "model.backbone.weights_path") -> Path:
    """A weight file path; ``package:MODULE[/relative/path]`` names a file inside an installed package.

    With no relative path the package must ship exactly one ``.pth``/``.pt`` file (searched recursively).
    """
    text = str(spec)
    if not text.startswith(PACKAGE_PREFIX):
        return Path(text).expanduser()
    module, _, relative = text[len(PACKAGE_PREFIX):].partition("/")
    try:
        found = importlib.util.find_spec(module) if module else None
    except (ImportError, ValueError):
        found = None
    if found is None or not found.origin:
        raise ConfigError(f"{key}={text}: Python package {module!r} is not installed "
                          f"(pip install {module.replace('_', '-')}), or give a file path")
    package_dir = Path(found.origin).parent
    if relative:
        return package_dir / relative
    files = sorted(p for p in package_dir.rglob("*") if p.suffix in WEIGHT_FILE_SUFFIXES and p.is_file())
    if len(files) != 1:
        raise ConfigError(f"{key}={text}: expected exactly one {'/'.join(WEIGHT_FILE_SUFFIXES)} file in "
                          f"{package_dir}, found {[p.name for p in files]}; name it as {PACKAGE_PREFIX}"
                          f"{module}/<relative path>")
    return files[0]


def read_weights_only(path: str | os.PathLike, what: str = "backbone weights file",
                      key: str = "model.backbone.weights_path") -> Any:
    """The object in a torch file, read with ``weights_only=True``; DataError naming the file (and the config
    ``key`` that named it) when it is missing or not a weights-only checkpoint."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{what} {path} not found ({key})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is the file's fault
        raise DataError(f"{path}: cannot read as a PyTorch state dict ({load_error_text(exc)})") from None


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a checkpoint with ``weights_only=True``; accepts a bare state dict or one under
    ``state_dict`` / ``model``."""
    blob = read_weights_only(path)
    for key in ("state_dict", "model"):
        if isinstance(blob, dict) and key in blob and isinstance(blob[key], dict):
            blob = blob[key]
    if not isinstance(blob, dict):
        raise DataError(f"{path}: expected a state dict, got {type(blob).__name__}")
    return blob


def strip_key_prefix(state: Mapping[str, torch.Tensor], prefix: str, only: bool = False) -> dict[str, torch.Tensor]:
    """The state dict with ``prefix`` removed from the keys that start with it (``module.`` of DataParallel,
    ``model.`` of a Lightning checkpoint, ``model.backbone.`` of a classifier's trunk); with ``only`` the keys
    without it are left out."""
    return {k.removeprefix(prefix): v for k, v in state.items() if not only or k.startswith(prefix)}


def detect_weights_format(state: Mapping[str, Any]) -> str:
    """``efficientnet_pytorch`` when the keys are lukemelas' (``_conv_stem.*``, ``_blocks.N.*``), else
    ``timm`` (timm and torchvision ResNets share their key names)."""
    if any(k.startswith(("_conv_stem.", "_blocks.")) for k in state):
        return "efficientnet_pytorch"
    return "timm"


def efficientnet_block_index(net: nn.Module) -> list[tuple[int, int]]:
    """(stage, block) of every block of a timm EfficientNet, in order: lukemelas' flat ``_blocks.N``."""
    blocks = getattr(net, "blocks", None)
    if not isinstance(blocks, nn.Sequential):
        raise ConfigError("model.backbone.weights_format=efficientnet_pytorch needs a timm EfficientNet "
                          f"(e.g. tf_efficientnet_lite0, tf_efficientnet_b0); {type(net).__name__} has no "
                          "`blocks` stages")
    return [(s, b) for s, stage in enumerate(blocks) for b in range(len(stage))]


def efficientnet_pytorch_to_timm(state: Mapping[str, torch.Tensor], net: nn.Module,
                                 source: str = "state dict") -> dict[str, torch.Tensor]:
    """Rename an efficientnet_pytorch (lukemelas) state dict to timm EfficientNet names.

    * ``_conv_stem``/``_bn0`` → ``conv_stem``/``bn1``; ``_conv_head``/``_bn1`` → ``conv_head``/``bn2``;
      ``_fc`` → ``classifier``.
    * ``_blocks.N`` (flat) → ``blocks.S.B`` (the N-th block of timm's stages, in order).
    * In a block with ``_expand_conv``: ``_expand_conv``/``_bn0`` → ``conv_pw``/``bn1``,
      ``_depthwise_conv``/``_bn1`` → ``conv_dw``/``bn2``, ``_project_conv``/``_bn2`` → ``conv_pwl``/``bn3``;
      without it: ``_depthwise_conv``/``_bn1`` → ``conv_dw``/``bn1``, ``_project_conv``/``_bn2`` →
      ``conv_pw``/``bn2``. ``_se_reduce``/``_se_expand`` → ``se.conv_reduce``/``se.conv_expand``.

    Every tensor is mapped; the block count must match ``net``'s. DataError names ``source`` otherwise.
    Shapes are checked by the caller against the network it loads into.
    """
    index = efficientnet_block_index(net)
    flat = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.")}
    if not flat:
        raise DataError(f"{source}: not an efficientnet_pytorch state dict (no _blocks.N tensors); "
                        "model.backbone.weights_format=auto detects the key format")
    if flat != set(range(len(index))):
        raise DataError(f"{source}: {len(flat)} efficientnet_pytorch blocks but {type(net).__name__} has "
                        f"{len(index)}; the weights are of another EfficientNet variant")
    expanding = {int(k.split(".")[1]) for k in state if k.startswith("_blocks.") and "._expand_conv." in k}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            block, module, rest = int(parts[1]), parts[2], parts[3:]
            names = EFFNET_EXPAND_BLOCK if block in expanding else EFFNET_DS_BLOCK
            if module not in names:
                raise DataError(f"{source}: unknown efficientnet_pytorch block tensor {key!r}")
            stage, position = index[block]
            out[".".join([f"blocks.{stage}.{position}", names[module], *rest])] = value
        elif parts[0] in EFFNET_TOP_LEVEL:
            out[".".join([EFFNET_TOP_LEVEL[parts[0]], *parts[1:]])] = value
        else:
            raise DataError(f"{source}: unknown efficientnet_pytorch tensor {key!r}")
    return out
