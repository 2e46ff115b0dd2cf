"""Export to TorchScript and ONNX: each exported file against PyTorch on the same input (max |Δ| reported and
small), dynamic sizes, the input normalisation in the file's metadata, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import torch.nn.functional as F

from fixtures_models import MEAN, NAMES, STD, tiny_run
from vwl_lightning.errors import ConfigError
from vwl_lightning.export import main
from vwl_lightning.inference.export import export, read_torchscript_meta
from vwl_lightning.modules.classifier import load_classifier
from vwl_lightning.stages.train_segmenter import load_segmenter
from vwl_lightning.utils.io import read_json

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-4  # float32, same operators: differences are rounding only


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Path:
    from conftest import TINY, compose_config

    root = tmp_path_factory.mktemp("export")
    tiny_run(lambda *o, run_dir: compose_config([TINY, *o], run_dir, cache_dir), root / "run")
    export(root / "run", root / "out", check_size=(72, 56))
    return root


def references(root: Path, x: torch.Tensor) -> dict[str, np.ndarray]:
    """PyTorch outputs computed here from the loaded checkpoints (logits upsampled; raw CAMs)."""
    seg = load_segmenter(root / "run" / "segmenter" / "segmenter.ckpt").eval()
    net = load_classifier(root / "run" / "classifier" / "classifier.ckpt").model.eval()
    with torch.no_grad():
        logits = F.interpolate(seg.model(x), size=x.shape[-2:], mode="bilinear", align_corners=False)
        cams = torch.relu(net.classifier(net.backbone(x)))
    return {"segmenter": logits.numpy(), "classifier": cams.numpy()}


def test_report_lists_every_file_with_a_small_difference(exported: Path) -> None:
    report = read_json(exported / "out" / "export.json")
    assert sorted(Path(p).name for p in report["files"]) == ["classifier.onnx", "classifier.pt",
                                                            "segmenter.onnx", "segmenter.pt"]
    for row in report["files"].values():
        assert 0 <= row["max_abs_diff"] < TOL and row["mean"] == MEAN and row["std"] == STD


@pytest.mark.parametrize("size", [(72, 56), (2, 50, 90)])
def test_exported_files_match_pytorch_at_other_sizes(exported: Path, size: tuple[int, ...]) -> None:
    shape = (1, 3, *size) if len(size) == 2 else (size[0], 3, *size[1:])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(5))
    expected = references(exported, x)
    for model in ("segmenter", "classifier"):
        traced = torch.jit.load(str(exported / "out" / f"{model}.pt"))
        with torch.no_grad():
            got_ts = traced(x).numpy()
        session = onnxruntime.InferenceSession(str(exported / "out" / f"{model}.onnx"),
                                               providers=["CPUExecutionProvider"])
        got_onnx = session.run(None, {"image": x.numpy()})[0]
        assert got_ts.shape == got_onnx.shape == expected[model].shape
        assert np.abs(got_ts - expected[model]).max() < TOL, model
        assert np.abs(got_onnx - expected[model]).max() < TOL, model
    assert expected["segmenter"].shape[1] == len(NAMES) and expected["classifier"].shape[1] == len(NAMES) - 1


def test_normalisation_and_classes_are_in_the_metadata(exported: Path) -> None:
    meta = read_torchscript_meta(exported / "out" / "segmenter.pt")
    assert meta["mean"] == MEAN and meta["std"] == STD and meta["class_names"] == NAMES
    assert meta["format"] == "torchscript" and meta["max_abs_diff"] < TOL
    props = {p.key: p.value for p in onnx.load(str(exported / "out" / "classifier.onnx")).metadata_props}
    assert json.loads(props["mean"]) == MEAN and json.loads(props["std"]) == STD
    full = json.loads(props["vwl_meta"])
    assert full["model"] == "classifier" and "(rgb / 255 - mean) / std" in full["input"]
    assert len(full["checkpoint_sha256"]) == 64


def test_cli_prints_the_differences_and_refuses_unknown_formats(exported: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = exported / "run" / "segmenter" / "segmenter.ckpt"
    assert main([str(ckpt), "--out", str(tmp_path), "--formats", "torchscript"]) == 0
    assert "segmenter.pt: max |exported - PyTorch| =" in capsys.readouterr().out
    assert (tmp_path / "segmenter.pt").is_file() and not (tmp_path / "classifier.pt").exists()
    with pytest.raises(ConfigError, match="unknown 'tflite'"):
        export(exported / "run", tmp_path, formats=["tflite"])
