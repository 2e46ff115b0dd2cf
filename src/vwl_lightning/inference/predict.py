"""Use a trained model on your own images: segmenter masks or classifier CAMs (spec §5, §7).

Input: a run folder (``runs/<name>``), a stage folder (``.../segmenter``, ``.../classifier``) or a checkpoint
file, and images: files, folders (every file PIL can open, by extension) or ``.txt`` lists of paths (one a
line, relative to the list's folder).  Any size, any format PIL reads; converted to RGB.

Segmenter (:func:`predict_masks`): P = softmax of the multi-scale (+ flip) fused logits, exactly the stage's
test-time rule (:func:`~vwl_lightning.evaluation.multiscale.predict_probs`), optionally refined by the dense
CRF (Q = CRF(image, P), spec §7); prediction = argmax.  Writes per image ``<stem>.png`` (VOC palette mask),
``<stem>_overlay.png`` (mask over the image with a colour legend) and, when asked, ``<stem>_probs.npz``
(``probs`` float16 (C, H, W), ``class_names``).

Classifier (:func:`predict_cams`): multi-scale + flip CAMs (spec §5,
:func:`~vwl_lightning.cam.fusion.multiscale_cams`) of the image's classes, given (``labels``) or predicted
(sigmoid of the image logits ≥ ``label_threshold``; the top class when none is), max-normalised; writes
``<stem>.npz`` in our CAM format (1-based keys), ``<stem>_cams.png`` (one captioned overlay per class + the
seed ``argmax [bg_score, CAMs]``) and ``<stem>_seed.png`` (palette mask).

Images are batched by size (``batch_size`` of one size per forward pass); the model runs on the GPU when one
is present (``device="auto"``).  An image that cannot be read is reported (one line naming it) and skipped;
the others go on.  ``manifest.json`` (written last) lists the checkpoint, settings, outputs and failures.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from vwl_lightning.cam.files import cams_to_label, save_cam_file, stride4_shape
from vwl_lightning.cam.fusion import keep_labelled, multiscale_cams
from vwl_lightning.data.label_png import write_label_png
from vwl_lightning.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalise
from vwl_lightning.errors import ConfigError, DataError
from vwl_lightning.pseudo.dense_crf import CRFParams, crf_from_probs, crf_params_from_config
from vwl_lightning.tracking.pictures import cam_tiles, colour_mask, grid, mask_overlay, save_png
from vwl_lightning.utils.io import read_json, write_json_atomic
from vwl_lightning.utils.manifest import MANIFEST, write_manifest

log = logging.getLogger(__name__)

LIST_SUFFIX = ".txt"


# ---------------------------------------------------------------------------------------------- inputs


def image_suffixes() -> set[str]:
    """File extensions PIL can open (lower case, with the dot)."""
    return {ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}


def collect_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand files, folders and ``.txt`` lists into image paths (module docstring); DataError for a missing
    input, an empty result, or two images with the same file stem (their outputs would collide)."""
    suffixes = image_suffixes()
    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
        elif path.is_file() and path.suffix.lower() == LIST_SUFFIX:
            lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            found += [(path.parent / line) if not Path(line).is_absolute() else Path(line) for line in lines]
        elif path.is_file():
            found.append(path)
        else:
            raise DataError(f"{path}: no such image, folder or list")
    if not found:
        raise DataError(f"no images found in {', '.join(str(i) for i in inputs)} (extensions PIL opens: "
                        f"{', '.join(sorted(suffixes)[:8])}, ...)")
    stems: dict[str, Path] = {}
    for path in found:
        if path.stem in stems and stems[path.stem] != path:
            raise DataError(f"{path}: same file name as {stems[path.stem]}; outputs are named by it, predict "
                            f"them into different folders")
        stems[path.stem] = path
    return list(stems.values())


def read_image(path: Path) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB; DataError naming the file when PIL cannot read it."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {str(exc)[:160]})") from None


def find_stage_checkpoint(source: str | Path, stage: str) -> tuple[Path, dict[str, Any] | None]:
    """The checkpoint of ``stage`` (segmenter | classifier) and its stage manifest, from a run folder, a
    stage folder or a checkpoint file (its folder's manifest is read when there is one)."""
    path = Path(source).expanduser()
    if path.is_file():
        manifest_file = path.parent / MANIFEST
        return path, (read_json(manifest_file) if manifest_file.is_file() else None)
    for folder in (path, path / stage):
        manifest_file = folder / MANIFEST
        if manifest_file.is_file():
            manifest = read_json(manifest_file)
            if manifest.get("stage") == stage and manifest.get("checkpoint"):
                checkpoint = Path(manifest["checkpoint"])
                if not checkpoint.is_file():  # a moved run folder: the checkpoint sits beside its manifest
                    checkpoint = folder / checkpoint.name
                if not checkpoint.is_file():
                    raise DataError(f"{manifest_file}: names checkpoint {manifest['checkpoint']}, not found")
                return checkpoint, manifest
    raise DataError(f"{path}: neither a {stage} checkpoint nor a folder with a completed {stage} stage "
                    f"({path / stage / MANIFEST} missing)")


def normalisation(manifest: dict[str, Any] | None, stage: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The input mean/std the model was trained with (from the stage manifest's config); ImageNet's when the
    checkpoint comes without a manifest."""
    config = (manifest or {}).get("config") or {}
    norm = ((config.get("segmenter") or {}).get("train_transform") if stage == "segmenter"
            else (config.get("data") or {}).get("normalise")) or {}
    if "mean" in norm and "std" in norm:
        return tuple(float(v) for v in norm["mean"]), tuple(float(v) for v in norm["std"])
    log.warning("predict: no stage manifest beside the checkpoint; normalising with ImageNet mean/std")
    return IMAGENET_MEAN, IMAGENET_STD


def pick_device(device: str) -> torch.device:
    """``auto``: the GPU when one is present, else the CPU; or an explicit torch device string."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"--device {device!r}: {exc}") from None


@dataclass
class Loaded:
    path: Path
    image: np.ndarray


@dataclass
class Outcome:
    """What a prediction run did: written outputs per image and the images that failed (with why)."""

    written: dict[str, list[str]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)


def size_batches(paths: Sequence[Path], batch_size: int, outcome: Outcome, progress: bool) -> Iterator[list[Loaded]]:
    """Read the images in order and yield batches of equal-size images (at most ``batch_size``); unreadable
    images are logged, recorded in ``outcome.failed`` and skipped."""
    pending: dict[tuple[int, int], list[Loaded]] = {}
    for path in tqdm(paths, desc="predict", unit="img", disable=not progress):
        try:
            image = read_image(path)
        except DataError as exc:
            log.error("%s", exc)
            print(f"error: {exc}")
            outcome.failed[str(path)] = str(exc)
            continue
        bucket = pending.setdefault(image.shape[:2], [])
        bucket.append(Loaded(path, image))
        if len(bucket) >= batch_size:
            yield pending.pop(image.shape[:2])
    yield from (bucket for bucket in pending.values() if bucket)


def to_batch(items: Sequence[Loaded], mean: Sequence[float], std: Sequence[float], device: torch.device
             ) -> torch.Tensor:
    arrays = [np.transpose(normalise(item.image, tuple(mean), tuple(std)), (2, 0, 1)) for item in items]
    return torch.from_numpy(np.stack(arrays)).float().to(device)


# ------------------------------------------------------------------------------------------- segmenter


@dataclass(frozen=True)
class MaskSettings:
    """Test-time options of :func:`predict_masks` (those of ``segmenter.eval``)."""

    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    fusion: str = "max"
    crf: CRFParams | None = None
    batch_size: int = 1
    save_probs: bool = False
    alpha: float = 0.5

    def __post_init__(self) -> None:
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ConfigError(f"--scales must be positive numbers, got {list(self.scales)}")
        if self.fusion not in ("max", "mean"):
            raise ConfigError(f"--fusion must be max or mean, got {self.fusion!r}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")


def crf_settings(preset: str | None) -> CRFParams | None:
    """``None`` (no CRF) or the named preset (``deeplab_test`` is the segmenter's, spec §7)."""
    return None if not preset else crf_params_from_config(str(preset), prefix="--crf")


def predict_masks(source: str | Path, images: Sequence[str | Path], out_dir: str | Path,
                  settings: MaskSettings = MaskSettings(), device: str = "auto", progress: bool = True) -> Outcome:
    """Segment ``images`` with the segmenter of ``source`` into ``out_dir`` (module docstring)."""
    from vwl_lightning.evaluation.multiscale import predict_probs
    from vwl_lightning.stages.train_segmenter import load_segmenter

    paths = collect_images(images)
    checkpoint, manifest = find_stage_checkpoint(source, "segmenter")
    module = load_segmenter(checkpoint).to(pick_device(device)).eval()
    mean, std = normalisation(manifest, "segmenter")
    names = list(module.hparams.class_names or [str(i) for i in range(module.hparams.num_classes)])
    out = Path(out_dir)
    outcome = Outcome()
    run_device = next(module.parameters()).device
    for batch in size_batches(paths, settings.batch_size, outcome, progress):
        probs = predict_probs(module, to_batch(batch, mean, std, run_device), settings.scales, settings.flip,
                              settings.fusion).float().cpu().numpy()
        for item, p in zip(batch, probs, strict=True):
            if settings.crf is not None:
                p = crf_from_probs(item.image, p, settings.crf)
            label = p.argmax(axis=0).astype(np.uint8)
            stem = item.path.stem
            files = [write_label_png(out / f"{stem}.png", label),
                     save_png(mask_overlay(item.image, label, names, settings.alpha), out / f"{stem}_overlay.png")]
            if settings.save_probs:
                files.append(_save_probs(out / f"{stem}_probs.npz", p, names))
            outcome.written[str(item.path)] = [str(f) for f in files]
    write_legend(out, names)
    write_manifest(out, "predict", checkpoint=str(checkpoint), model="segmenter", class_names=names,
                   mean=list(mean), std=list(std), scales=list(settings.scales), flip=settings.flip,
                   fusion=settings.fusion, crf=None if settings.crf is None else dataclasses.asdict(settings.crf),
                   images=len(paths), written=outcome.written, failed=outcome.failed)
    return outcome


def _save_probs(path: Path, probs: np.ndarray, names: Sequence[str]) -> Path:
    from vwl_lightning.utils.io import atomic_path

    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, probs=probs.astype(np.float16), class_names=np.asarray(names))
    return path


# -------------------------------------------------------------------------------------------------- CAMs


@dataclass(frozen=True)
class CamSettings:
    """Options of :func:`predict_cams` (those of the ``cam`` stage, plus the label source)."""

    scales: tuple[float, ...] = (1.0, 0.5, 1.5, 2.0)
    flip: bool = True
    flip_fusion: str = "max"
    bg_score: float = 0.13
    label_threshold: float = 0.5
    batch_size: int = 1

    def __post_init__(self) -> None:
        if not self.scales or any(s <= 0 for s in self.scales):
            raise ConfigError(f"--scales must be positive numbers, got {list(self.scales)}")
        if self.flip_fusion not in ("max", "sum"):
            raise ConfigError(f"--flip-fusion must be max or sum, got {self.flip_fusion!r}")
        if not 0 < self.label_threshold < 1:
            raise ConfigError(f"--label-threshold must lie in (0, 1), got {self.label_threshold}")


def parse_labels(labels: str | Path | Sequence[str] | None, class_names: Sequence[str]
                 ) -> dict[str, list[int]] | list[int] | None:
    """Given image labels as 1-based class indices: ``None`` (predict them), a list of class names for every
    image, or a JSON file ``{"<image stem>": ["cat", "dog"], ...}``.  Unknown names raise ConfigError."""
    if labels is None:
        return None
    index = {name: i for i, name in enumerate(class_names) if i > 0}

    def lookup(names: Sequence[str], where: str) -> list[int]:
        unknown = [n for n in names if n not in index]
        if unknown:
            raise ConfigError(f"{where}: unknown class {unknown[0]!r}; classes are {', '.join(index)}")
        return sorted({index[n] for n in names})

    if isinstance(labels, (str, Path)) and str(labels).endswith(".json"):
        table = read_json(labels)
        if not isinstance(table, dict):
            raise DataError(f"{labels}: expected a JSON object of image stem -> list of class names")
        return {str(k): lookup(list(v), f"{labels} [{k}]") for k, v in table.items()}
    return lookup([labels] if isinstance(labels, str) else list(labels), "--labels")


def predict_cams(source: str | Path, images: Sequence[str | Path], out_dir: str | Path,
                 settings: CamSettings = CamSettings(), labels: str | Path | Sequence[str] | None = None,
                 device: str = "auto", progress: bool = True) -> Outcome:
    """CAMs of ``images`` from the classifier of ``source`` into ``out_dir`` (module docstring)."""
    from vwl_lightning.modules.classifier import load_classifier

    paths = collect_images(images)
    checkpoint, manifest = find_stage_checkpoint(source, "classifier")
    module = load_classifier(checkpoint).to(pick_device(device)).eval()
    net = module.model
    mean, std = normalisation(manifest, "classifier")
    names = list(module.hparams.class_names or [str(i) for i in range(module.hparams.num_classes + 1)])
    given = parse_labels(labels, names)
    out = Path(out_dir)
    outcome, chosen = Outcome(), {}
    run_device = next(module.parameters()).device
    for batch in size_batches(paths, settings.batch_size, outcome, progress):
        if isinstance(given, dict):
            missing = [item.path.stem for item in batch if item.path.stem not in given]
            for stem in missing:
                outcome.failed[stem] = f"{labels}: no labels for image {stem!r}"
                print(f"error: {labels}: no labels for image {stem!r}")
            batch = [item for item in batch if item.path.stem in given]
            if not batch:
                continue
        tensor = to_batch(batch, mean, std, run_device)
        try:
            with torch.inference_mode():
                # image scores only to predict labels (pooling needs feature maps >= its finest pyramid level)
                scores = (torch.sigmoid(net(tensor).logits.float()).cpu().numpy() if given is None
                          else np.full((len(batch), len(names) - 1), np.nan))
                high, low = multiscale_cams(net.cam, tensor, settings.scales, settings.flip, settings.flip_fusion,
                                            stride4_shape(*tensor.shape[-2:]))
        except ValueError as exc:  # an image too small for the network: name it, go on with the others
            for item in batch:
                message = f"{item.path}: {exc}"
                print(f"error: {message}")
                outcome.failed[str(item.path)] = message
            continue
        for i, item in enumerate(batch):
            if given is None:
                keys1 = [int(c) + 1 for c in np.flatnonzero(scores[i] >= settings.label_threshold)]
                keys1 = keys1 or [int(scores[i].argmax()) + 1]
            else:
                keys1 = given[item.path.stem] if isinstance(given, dict) else list(given)
            index = torch.tensor([k - 1 for k in keys1], device=high.device)
            high_i = keep_labelled(high[i], index).float().cpu().numpy()
            low_i = keep_labelled(low[i], index).float().cpu().numpy()
            seed = cams_to_label(high_i, np.asarray(keys1), settings.bg_score)
            stem = item.path.stem
            files = [save_cam_file(out / f"{stem}.npz", np.asarray(keys1), high_i, low_i, dtype=np.float32),
                     write_label_png(out / f"{stem}_seed.png", seed),
                     save_png(grid([cam_tiles(item.image, high_i, keys1, names, seed)]), out / f"{stem}_cams.png")]
            outcome.written[str(item.path)] = [str(f) for f in files]
            chosen[stem] = {"classes": [names[k] for k in keys1],
                            "scores": None if given is not None else
                            {names[c + 1]: round(float(v), 4) for c, v in enumerate(scores[i])}}
    write_legend(out, names)
    write_manifest(out, "predict", checkpoint=str(checkpoint), model="classifier", class_names=names,
                   mean=list(mean), std=list(std), scales=list(settings.scales), flip=settings.flip,
                   flip_fusion=settings.flip_fusion, bg_score=settings.bg_score,
                   labels="predicted" if given is None else "given", label_threshold=settings.label_threshold,
                   images=len(paths), labels_used=chosen, written=outcome.written, failed=outcome.failed)
    return outcome


def legend_colours(class_names: Sequence[str]) -> dict[str, list[int]]:
    """Class name → its RGB palette colour (for a legend written beside the masks)."""
    colours = colour_mask(np.arange(len(class_names), dtype=np.uint8)[None])[0]
    return {name: [int(v) for v in colours[i]] for i, name in enumerate(class_names)}


def write_legend(out_dir: Path, class_names: Sequence[str]) -> Path:
    """``<out_dir>/legend.json``: class name → RGB of the palette masks."""
    return write_json_atomic(out_dir / "legend.json", legend_colours(class_names))
