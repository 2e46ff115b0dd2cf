"""Loading: the declared torch floor has the safe weights_only loader and is enforced at
import with one line that does not advise turning it off; every load site in the source passes
``weights_only=True`` explicitly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import vwl_lightning
from vwl_lightning import TORCH_FLOOR, _check_torch

SRC = Path(vwl_lightning.__file__).resolve().parent
PYPROJECT = SRC.parents[1] / "pyproject.toml"


@pytest.mark.parametrize("version", ["2.4.1", "2.5.1+cu121", "1.13.0"])
def test_old_torch_is_refused_in_one_line(version: str) -> None:
    with pytest.raises(ImportError) as info:
        _check_torch(version)
    message = str(info.value)
    assert message == (f"vwl_lightning needs torch>=2.6 (safe weights_only checkpoint loading), found torch "
                       f"{version}; upgrade with: pip install 'torch>=2.6'")
    assert "weights_only=False" not in message


@pytest.mark.parametrize("version", ["2.6.0", "2.14.1+cu130", "3.0.0"])
def test_supported_torch_passes(version: str) -> None:
    _check_torch(version)


def test_declared_floor_matches_the_enforced_one() -> None:
    declared = re.search(r'"torch>=([0-9.]+)', PYPROJECT.read_text()).group(1)
    assert tuple(int(p) for p in declared.split(".")[:2]) == TORCH_FLOOR == (2, 6)
    assert re.search(r'"pytorch-lightning>=2\.6', PYPROJECT.read_text())


def calls(text: str, name: str) -> list[str]:
    """The argument text of every call of ``name(`` in ``text`` (balanced parentheses)."""
    found = []
    for match in re.finditer(re.escape(name) + r"\(", text):
        depth, i = 1, match.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        found.append(text[match.end():i - 1])
    return found


def test_every_load_site_passes_weights_only_true() -> None:
    sites = 0
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for name in ("torch.load", ".load_from_checkpoint", "trainer.fit"):
            for args in calls(text, name):
                if name == "trainer.fit" and "ckpt_path" not in args:
                    continue
                sites += 1
                assert "weights_only=True" in args, f"{path}: {name}({args})"
                assert "weights_only=False" not in args
        assert "weights_only=False" not in text.replace("`weights_only=False`", ""), path
    assert sites >= 6


class Payload:
    """Any pickled object that is not a tensor or a plain container: the weights_only loader refuses it."""


@pytest.mark.parametrize("loader", ["state_dict", "classifier", "segmenter"])
def test_a_pickle_payload_is_refused_without_advice_to_disable_the_check(loader: str, tmp_path: Path) -> None:
    import torch

    from vwl_lightning.errors import DataError
    from vwl_lightning.models.weight_files import load_state_dict_file
    from vwl_lightning.modules.classifier import load_classifier
    from vwl_lightning.stages.train_segmenter import load_segmenter

    path = tmp_path / "payload.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": Payload()}, path)
    load = {"state_dict": load_state_dict_file, "classifier": load_classifier, "segmenter": load_segmenter}[loader]
    with pytest.raises(DataError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "refused: checkpoints are loaded with weights_only=True" in message
    assert "False" not in message and "trust" not in message
