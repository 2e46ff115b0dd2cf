"""Export the segmenter and the classifier's CAM head to TorchScript and ONNX, checked against PyTorch.

What is exported (float32, on the CPU, inputs of any batch size and image size):

* ``segmenter``: normalised images ``(B, 3, H, W)`` → logits ``(B, C, H, W)`` upsampled (bilinear) to the
  input size, exactly :meth:`SegmenterModule.predict_logits` (spec §7; MSC inside when the model has it);
  softmax/argmax over C give the stage's single-scale prediction.
* ``classifier``: normalised images → raw CAMs ``ReLU(W_cls * F)`` ``(B, C_fg, h, w)`` at the feature stride
  (spec §3, :meth:`VWLClassifier.cam`); the multi-scale/flip fusion and normalisation of spec §5 stay
  outside.

The input normalisation is recorded in the exported file's metadata (TorchScript: the extra file
``vwl_meta.json``; ONNX: ``metadata_props`` ``vwl_meta`` (the same JSON), ``mean``, ``std``)::

    x = (rgb_uint8 / 255 - mean) / std        channels RGB, layout NCHW

with the class names, the output's meaning, the checkpoint and its SHA-256, and the check: the exported
model and PyTorch run on the same input (a seeded normal draw at ``check_size``, which differs from the
trace size so that the dynamic sizes are exercised); ``max_abs_diff`` = max |exported − PyTorch|.
ONNX uses the TorchScript-based exporter (``dynamo=False``): it needs no ``onnxscript`` and keeps
``dynamic_axes``.  ``export.json`` (written last) lists the files and their max |Δ|.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vwl_lightning.errors import ConfigError
from vwl_lightning.utils.io import atomic_path, write_json_atomic

log = logging.getLogger(__name__)

FORMATS = ("torchscript", "onnx")
MODELS = ("segmenter", "classifier")
META_FILE = "vwl_meta.json"
SUFFIX = {"torchscript": ".pt", "onnx": ".onnx"}


class SegmenterLogits(nn.Module):
    """Normalised images → logits at the input size (:meth:`SegmenterModule.predict_logits`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


class CamHead(nn.Module):
    """Normalised images → raw CAMs ReLU(W_cls * F) (:meth:`VWLClassifier.cam`)."""

    def __init__(self, classifier: nn.Module) -> None:
        super().__init__()
        self.backbone, self.head = classifier.backbone, classifier.classifier

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.head(self.backbone(images)))


def check_input(size: Sequence[int], seed: int = 0) -> torch.Tensor:
    """The seeded ``(1, 3, H, W)`` standard-normal input both runtimes see (a normalised image's range)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn((1, 3, int(size[0]), int(size[1])), generator=generator)


def load_for_export(source: str | Path, model: str) -> tuple[nn.Module, dict[str, Any]]:
    """The network wrapped for export and its metadata (module docstring), from a run folder, a stage
    folder or a checkpoint file."""
    from vwl_lightning.inference.predict import find_stage_checkpoint, normalisation
    from vwl_lightning.models.weight_files import sha256_of

    checkpoint, manifest = find_stage_checkpoint(source, model)
    if model == "segmenter":
        from vwl_lightning.stages.train_segmenter import load_segmenter

        module = load_segmenter(checkpoint)
        wrapped: nn.Module = SegmenterLogits(module.model)
        names = list(module.hparams.class_names or range(module.hparams.num_classes))
        output = ("logits (B, C, H, W) at the input size; softmax over C = class probabilities; "
                  "classes = class_names")
    else:
        from vwl_lightning.modules.classifier import load_classifier

        module = load_classifier(checkpoint)
        wrapped = CamHead(module.model)
        names = list(module.hparams.class_names or range(module.hparams.num_classes + 1))
        output = ("raw CAMs ReLU(W_cls * F) (B, C-1, h, w) at the feature stride; channel c is class_names[c+1] "
                  "(background has no channel); spec §5 sums scales/flips, keeps labelled classes, divides by max")
    mean, std = normalisation(manifest, model)
    meta = {"format_version": 1, "model": model,
            "input": "float32 (B, 3, H, W) RGB, x = (rgb / 255 - mean) / std",
            "mean": list(mean), "std": list(std), "class_names": [str(n) for n in names], "output": output,
            "checkpoint": str(checkpoint), "checkpoint_sha256": sha256_of(checkpoint)}
    return wrapped.float().eval().to(memory_format=torch.contiguous_format), meta


@contextlib.contextmanager
def _quiet_export_warnings() -> Iterator[None]:
    """torch's own deprecation / tracer notices for the legacy exporters (ours are not touched)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch(\.|$)")
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated", category=Warning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        yield


def export_torchscript(net: nn.Module, meta: dict[str, Any], path: Path, trace_size: Sequence[int],
                       check_size: Sequence[int]) -> float:
    """Trace, compare with PyTorch on the check input, save with ``vwl_meta.json``; return max |Δ|."""
    with _quiet_export_warnings(), torch.no_grad():
        traced = torch.jit.trace(net, check_input(trace_size, seed=1), check_trace=False)
        x = check_input(check_size)
        diff = float((traced(x) - net(x)).abs().max())
    blob = json.dumps({**meta, "format": "torchscript", "max_abs_diff": diff, "check_size": list(check_size)})
    with _quiet_export_warnings(), atomic_path(path) as tmp:
        torch.jit.save(traced, str(tmp), _extra_files={META_FILE: blob})
    return diff


def export_onnx(net: nn.Module, meta: dict[str, Any], path: Path, trace_size: Sequence[int],
                check_size: Sequence[int], opset: int = 17) -> float:
    """Export (dynamic batch/height/width), compare with PyTorch in onnxruntime, store the metadata; max |Δ|."""
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ConfigError(f"ONNX export needs the 'export' extra (pip install 'vwl_lightning[export]'): "
                          f"{exc}") from None
    axes = {0: "batch", 2: "height", 3: "width"}
    with _quiet_export_warnings(), atomic_path(path) as tmp:
        torch.onnx.export(net, (check_input(trace_size, seed=1),), str(tmp), dynamo=False, opset_version=opset,
                          input_names=["image"], output_names=["output"],
                          dynamic_axes={"image": axes, "output": axes})
        x = check_input(check_size)
        session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        with torch.no_grad():
            diff = float(np.abs(session.run(None, {"image": x.numpy()})[0] - net(x).numpy()).max())
        proto = onnx.load(str(tmp))
        full = {**meta, "format": "onnx", "opset": opset, "max_abs_diff": diff, "check_size": list(check_size)}
        for key, value in (("vwl_meta", json.dumps(full)), ("mean", json.dumps(meta["mean"])),
                           ("std", json.dumps(meta["std"]))):
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(proto, str(tmp))
    return diff


def export(source: str | Path, out_dir: str | Path, models: Sequence[str] = MODELS,
           formats: Sequence[str] = FORMATS, trace_size: Sequence[int] = (64, 64),
           check_size: Sequence[int] = (72, 56), opset: int = 17) -> dict[str, Any]:
    """Export ``models`` of ``source`` in ``formats`` to ``out_dir/<model><suffix>``; write ``export.json``."""
    bad = [m for m in models if m not in MODELS] + [f for f in formats if f not in FORMATS]
    if bad:
        raise ConfigError(f"export: unknown {bad[0]!r}; models are {MODELS}, formats {FORMATS}")
    out = Path(out_dir)
    report: dict[str, Any] = {"source": str(source), "files": {}}
    for model in models:
        net, meta = load_for_export(source, model)
        for fmt in formats:
            path = out / f"{model}{SUFFIX[fmt]}"
            run = export_torchscript if fmt == "torchscript" else export_onnx
            kwargs = {"opset": opset} if fmt == "onnx" else {}
            diff = run(net, meta, path, trace_size, check_size, **kwargs)
            log.info("export: %s -> %s, max |exported - PyTorch| = %.3g", model, path, diff)
            report["files"][str(path)] = {"model": model, "format": fmt, "max_abs_diff": diff,
                                          "check_size": list(check_size), "mean": meta["mean"], "std": meta["std"]}
    write_json_atomic(out / "export.json", report)
    return report


def read_torchscript_meta(path: str | Path) -> dict[str, Any]:
    """The ``vwl_meta.json`` of an exported TorchScript file."""
    extra = {META_FILE: ""}
    with _quiet_export_warnings():
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[META_FILE])
