"""The CAM stage (spec §5): fusion rules against hand-worked and NumPy values, the stage's files and manifest
on the embedded benchmark, resume after a crash, DDP sharding, bad input, and the background sweep."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from conftest import TINY, compose_config, wait_for
from vwl_lightning.cam import writer as cam_writer
from vwl_lightning.cam.files import CAM_MANIFEST, cam_path, load_cam_file, save_cam_file
from vwl_lightning.cam.fusion import multiscale_cams
from vwl_lightning.cam.inputs import CamInputs
from vwl_lightning.data.label_png import read_label_png, write_label_png
from vwl_lightning.data.source import ResolvedData, resolve_data
from vwl_lightning.errors import ConfigError, DataError
from vwl_lightning.modules.cam_predictor import CamPredictor
from vwl_lightning.modules.classifier import load_classifier
from vwl_lightning.stages.evaluate_seeds import evaluate_seeds
from vwl_lightning.stages.make_cams import make_cams
from vwl_lightning.stages.train_classifier import train_classifier

DDP_SCRIPT = Path(__file__).parents[1] / "scripts" / "ddp_cams.py"
EPS = 1e-5

# a narrow backbone keeps the 1-epoch classifier and the CAM runs to seconds on 2 cores
MODEL = ["trainer.limit_val_batches=0"]
# the configured scales and flip fusion (spec §5), in fp32: the files are compared with an fp32 reference
SCALES = [1.0, 0.5, 1.5, 2.0]
CAMS = [f"cam.scales={SCALES}", "cam.precision=32-true"]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Any:
    """Run this module's (tiny) networks on one thread: on a shared 2-core machine, two OpenMP threads wait on
    each other at every operator and small forward passes get 100x slower; results do not depend on it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------------------------------------
# fusion rules: a hand-worked example and a NumPy reference


class DiffCam(torch.nn.Module):
    """A deterministic, mirror-sensitive 'classifier': for channel 0's horizontal forward difference
    ``d`` (0 in the last column), class 1 = ReLU(d), class 2 = ReLU(-d), class 3 = 0.5 everywhere."""

    def cam(self, images: torch.Tensor) -> torch.Tensor:
        d = F.pad(images[:, :1, :, 1:] - images[:, :1, :, :-1], (0, 1))
        return torch.cat([torch.relu(d), torch.relu(-d), torch.full_like(d, 0.5)], dim=1)


def predict(model: torch.nn.Module, images: torch.Tensor, keys: list[list[int]], scales: list[float],
            fusion: str, channels_last: bool = False) -> list[dict[str, Any]]:
    """Run the stage's own ``CamPredictor.predict_step`` on one batch."""
    predictor = CamPredictor(model, scales, True, fusion, channels_last, "tensor_bicubic")  # type: ignore[arg-type]
    batch = {"image": images, "keys": [torch.tensor(k) for k in keys], "id": [str(i) for i in range(len(keys))]}
    with torch.inference_mode():
        return predictor.predict_step(batch, 0)


@pytest.mark.parametrize("fusion", ["max", "sum"])
def test_flip_fusion_and_normalisation_hand_worked(fusion: str) -> None:
    image = torch.zeros(1, 3, 2, 4)
    image[0, 0] = torch.tensor([[0.0, 1, 3, 2], [4, 4, 1, 0]])
    # by hand, row 0: d = [1, 2, -1, 0]; the mirror row [2, 3, 1, 0] has d = [1, -2, -1, 0], which mirrored back
    # gives class 1 [0, 0, 0, 1] and class 2 [0, 1, 2, 0]; row 1 likewise
    if fusion == "max":
        class1 = [[1, 2, 0, 1], [0, 0, 3, 1]]
        class2 = [[0, 1, 2, 0], [0, 3, 1, 0]]
    else:
        class1 = [[1, 2, 0, 1], [0, 0, 3, 1]]
        class2 = [[0, 1, 3, 0], [0, 3, 1, 0]]
    out = predict(DiffCam(), image, [[0, 1]], [1.0], fusion)[0]
    np.testing.assert_array_equal(out["keys"], [1, 2])  # class 3 is not labelled: dropped
    expected = np.array([class1, class2], dtype=np.float32) / (3 + EPS)  # both maxima are 3
    np.testing.assert_allclose(out["high_res"], expected, rtol=0, atol=1e-7)
    # stride-4 map of a 2x4 image: 1x1, the bilinear (align_corners=False) mean of the central 2x2 block
    centre = np.array([np.mean(np.asarray(c)[:, 1:3]) for c in (class1, class2)], dtype=np.float32)
    assert out["cam"].shape == (2, 1, 1)
    np.testing.assert_allclose(out["cam"][:, 0, 0], centre / (centre + EPS), rtol=0, atol=1e-7)


def cubic(x: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys' cubic convolution kernel (a = -0.75, as torch's bicubic)."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def resize_matrix(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """``(n_out, n_in)`` 1-D interpolation matrix, half-pixel centres (align_corners=False), edges clamped."""
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) * n_in / n_out - 0.5
        if mode == "bilinear":
            src = max(src, 0.0)
            lo = int(math.floor(src))
            hi = min(lo + 1, n_in - 1)
            m[i, lo] += 1 - (src - lo)
            m[i, hi] += src - lo
        else:
            base = math.floor(src)
            for tap in range(-1, 3):
                m[i, min(max(base + tap, 0), n_in - 1)] += cubic(np.array(src - (base + tap)))
    return m


def resize(x: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """Separable resize of ``(..., H, W)``."""
    mh, mw = resize_matrix(x.shape[-2], size[0], mode), resize_matrix(x.shape[-1], size[1], mode)
    return np.einsum("oh,...hw,pw->...op", mh, x, mw)


WEIGHTS = np.array([[0.7, -0.2, 0.1], [-0.3, 0.9, 0.4], [0.2, 0.3, -0.8]], dtype=np.float32)
RAMP = np.array([1.5, -1.0, 0.5], dtype=np.float32)


class MixCam(torch.nn.Module):
    """ReLU(1x1 conv + RAMP * horizontal forward difference of channel 0): 3 classes, not mirror-symmetric."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1, bias=False)
        self.conv.weight.data = torch.from_numpy(WEIGHTS)[..., None, None]

    def cam(self, images: torch.Tensor) -> torch.Tensor:
        d = F.pad(images[:, :1, :, 1:] - images[:, :1, :, :-1], (0, 1))
        return torch.relu(self.conv(images) + torch.from_numpy(RAMP)[None, :, None, None] * d)


def numpy_cam(x: np.ndarray) -> np.ndarray:
    d = np.zeros_like(x[:, 0])
    d[..., :-1] = x[:, 0, :, 1:] - x[:, 0, :, :-1]
    return np.maximum(np.einsum("oc,bchw->bohw", WEIGHTS, x) + RAMP[None, :, None, None] * d[:, None], 0)


def numpy_multiscale(x: np.ndarray, scales: list[float], fusion: str) -> tuple[np.ndarray, np.ndarray]:
    """Spec §5 in NumPy: per scale, bicubic resize, CAM of image and mirror, fuse, bilinear back, sum."""
    h, w = x.shape[-2:]
    low_size = (math.ceil(h / 4), math.ceil(w / 4))
    high = np.zeros((x.shape[0], 3, h, w))
    low = np.zeros((x.shape[0], 3, *low_size))
    for s in scales:
        scaled = x if s == 1.0 else resize(x, (round(h * s), round(w * s)), "bicubic")
        plain, mirrored = numpy_cam(scaled), numpy_cam(scaled[..., ::-1])[..., ::-1]
        fused = np.maximum(plain, mirrored) if fusion == "max" else plain + mirrored
        high += resize(fused, (h, w), "bilinear")
        low += resize(fused, low_size, "bilinear")
    return high, low


@pytest.mark.parametrize("fusion", ["max", "sum"])
def test_multiscale_fusion_matches_numpy(fusion: str) -> None:
    rng = np.random.default_rng(3)
    images = rng.normal(size=(2, 3, 6, 10)).astype(np.float32)
    images[:, 0] += np.linspace(-1, 2, 10, dtype=np.float32)  # an asymmetric ramp: the mirror image differs
    high_ref, low_ref = numpy_multiscale(images.astype(np.float64), SCALES, fusion)

    with torch.inference_mode():
        high, low = multiscale_cams(MixCam().cam, torch.from_numpy(images), tuple(SCALES), True, fusion, (2, 3))
        one_scale, _ = multiscale_cams(MixCam().cam, torch.from_numpy(images), (1.0,), True, fusion, (2, 3))
    np.testing.assert_allclose(high.numpy(), high_ref, rtol=1e-5, atol=1e-5)  # un-normalised: a sum over scales
    np.testing.assert_allclose(low.numpy(), low_ref, rtol=1e-5, atol=1e-5)
    assert not np.allclose(high.numpy(), one_scale.numpy() * len(SCALES), atol=1e-2)  # the scales do matter

    keys = [[0, 2], [1]]
    for channels_last in (False, True):
        outs = predict(MixCam(), torch.from_numpy(images), keys, SCALES, fusion, channels_last)
        for i, out in enumerate(outs):
            np.testing.assert_array_equal(out["keys"], np.array(keys[i]) + 1)
            for name, ref in (("high_res", high_ref), ("cam", low_ref)):
                kept = ref[i, keys[i]]
                expected = kept / (kept.reshape(len(keys[i]), -1).max(axis=1)[:, None, None] + EPS)
                np.testing.assert_allclose(out[name], expected, rtol=0, atol=1e-5)
            assert out["cam"].shape[1:] == (2, 3)


@pytest.mark.parametrize("size", [(6, 10), (7, 9), (64, 64), (65, 33), (1, 5)])
def test_stride4_size_is_ceil_quarter(size: tuple[int, int]) -> None:
    images = torch.rand(1, 3, *size)
    out = predict(MixCam(), images, [[0, 1, 2]], [1.0, 0.5], "max")[0]
    assert out["high_res"].shape == (3, *size)
    assert out["cam"].shape == (3, math.ceil(size[0] / 4), math.ceil(size[1] / 4))


# ----------------------------------------------------------------------------------------------------------
# the stage on the embedded benchmark (tiny): one classifier, one reference CAM folder per module


@dataclass
class Stage:
    root: Path
    cache: Path
    overrides: list[str]
    checkpoint: Path
    cam_dir: Path
    data: ResolvedData

    def config(self, out_dir: Path, *extra: str) -> DictConfig:
        """The CAM stage config writing into ``out_dir``."""
        return compose_config([*self.overrides, f"cam.out_dir={out_dir}", *extra], self.root / "run", self.cache)

    @property
    def ids(self) -> list[str]:
        return self.data.layout.split_ids("train")


@pytest.fixture(scope="module")
def stage(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Stage:
    root = tmp_path_factory.mktemp("cam_stage")
    cfg = compose_config([TINY, *MODEL], root / "run", cache_dir)
    checkpoint = train_classifier(cfg)
    overrides = [TINY, *CAMS, f"cam.checkpoint={checkpoint}"]
    cfg = compose_config([*overrides, f"cam.out_dir={root / 'cams'}"], root / "run", cache_dir)
    data = resolve_data(OmegaConf.to_container(cfg.data.source, resolve=True))
    return Stage(root, cache_dir, overrides, checkpoint, make_cams(cfg, data), data)


def pil_input(path: Path, scale: float) -> torch.Tensor:
    """The official input at ``scale`` (spec §5.1), written out here: PIL bicubic on the uint8 image to
    (round(sH), round(sW)) (scale 1 untouched), then ImageNet normalisation → (1, 3, h, w)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if scale != 1.0:
            im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
        x = np.asarray(im, dtype=np.float32) / 255.0
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None]


def reference_cams(stage: Stage, ids: list[str], fusion: str = "max",
                   resize: str = "pil_bicubic") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A plain per-image loop, one forward pass per scale and per mirror image, float32: id → the raw
    (un-normalised) labelled channels ``(high, low)``. ``resize``: the official PIL inputs (:func:`pil_input`)
    or the normalised image resized by ``F.interpolate(bicubic)``."""
    model = load_classifier(stage.checkpoint).model.eval()
    layout = stage.data.layout
    dataset = CamInputs(layout, ids, layout.image_labels(ids, stage.data.meta.num_classes))
    out = {}
    with torch.inference_mode():
        for item in dataset:
            image = item["image"][None]
            h, w = image.shape[-2:]
            high = low = 0.0
            for s in SCALES:
                if resize == "pil_bicubic":
                    x = pil_input(layout.image_path(item["id"]), s)
                else:
                    x = image if s == 1.0 else F.interpolate(image, size=(round(h * s), round(w * s)), mode="bicubic")
                plain, mirrored = model.cam(x), model.cam(x.flip(-1)).flip(-1)
                fused = torch.maximum(plain, mirrored) if fusion == "max" else plain + mirrored
                high = high + F.interpolate(fused, size=(h, w), mode="bilinear")
                low = low + F.interpolate(fused, size=(math.ceil(h / 4), math.ceil(w / 4)), mode="bilinear")
            keys = item["keys"]
            out[item["id"]] = tuple(a[0, keys].numpy() for a in (high, low))
    return out


def normalised(raw: np.ndarray) -> np.ndarray:
    return raw / (raw.reshape(len(raw), -1).max(axis=1)[:, None, None] + EPS)


def mtimes(folder: Path) -> dict[str, int]:
    """Modification times of the CAM files (not of ``.tmp-*`` leftovers) by name."""
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.npz") if not p.name.startswith(".")}


def test_stage_writes_one_complete_file_per_image_and_manifest(stage: Stage) -> None:
    ids = stage.ids
    labels = stage.data.layout.image_labels(ids, stage.data.meta.num_classes)
    assert sorted(Path(name).stem for name in mtimes(stage.cam_dir)) == sorted(ids)
    assert not list(stage.cam_dir.glob(".tmp-*"))
    reference = reference_cams(stage, ids)
    peaks = []
    for image_id in ids:
        record = load_cam_file(cam_path(stage.cam_dir, image_id), stage.data.meta.num_classes)
        assert record.keys.tolist() == labels[image_id]
        assert record.high_res.dtype == np.float16 and record.cam.dtype == np.float16
        assert record.high_res.shape == (len(labels[image_id]), 64, 64)
        assert record.cam.shape == (len(labels[image_id]), 16, 16)
        assert record.high_res.min() >= 0 and record.high_res.max() <= 1
        peaks += record.high_res.reshape(len(record.keys), -1).max(axis=1).astype(np.float64).tolist()
        high_ref, low_ref = reference[image_id]
        np.testing.assert_allclose(record.high_res, normalised(high_ref), rtol=0, atol=2e-3)
        np.testing.assert_allclose(record.cam, normalised(low_ref), rtol=0, atol=2e-3)
        # each channel peaks at max / (max + 1e-5): 1 unless the class barely fires (0 if it never does)
        raw = high_ref.reshape(len(record.keys), -1).max(axis=1)
        np.testing.assert_allclose(record.high_res.reshape(len(raw), -1).max(axis=1), raw / (raw + EPS),
                                   rtol=0, atol=1e-3)
    assert np.mean(np.asarray(peaks) > 0.99) > 0.5  # most labelled classes do fire after one epoch

    manifest = json.loads((stage.cam_dir / CAM_MANIFEST).read_text())
    assert manifest["checkpoint"] == str(stage.checkpoint)
    assert manifest["checkpoint_sha256"] == hashlib.sha256(stage.checkpoint.read_bytes()).hexdigest()
    assert (manifest["dataset"], manifest["split"], manifest["data_root"]) == (
        "synthetic", "train", str(stage.data.layout.root))
    assert manifest["scales"] == SCALES and manifest["flip"] is True and manifest["flip_fusion"] == "max"
    assert manifest["resize"] == "pil_bicubic"
    assert manifest["dtype"] == "float16" and manifest["status"] == "complete"
    assert manifest["counts"] == {"images": 48, "written_this_run": 48}
    assert manifest["class_names"] == list(stage.data.meta.class_names)


@pytest.mark.parametrize("resize", ["pil_bicubic", "tensor_bicubic"])
def test_float32_option_and_a_finished_folder_is_left_alone(resize: str, stage: Stage, tmp_path: Path) -> None:
    options = ("cam.dtype=float32", "cam.flip_fusion=sum", f"cam.resize={resize}")
    out = make_cams(stage.config(tmp_path / "cams32", *options), stage.data)
    manifest = json.loads((out / CAM_MANIFEST).read_text())
    assert (manifest["dtype"], manifest["flip_fusion"], manifest["resize"], manifest["counts"]["written_this_run"]
            ) == ("float32", "sum", resize, 48)
    reference = reference_cams(stage, stage.ids[:8], fusion="sum", resize=resize)
    other = reference_cams(stage, stage.ids[:8], fusion="sum",
                           resize="tensor_bicubic" if resize == "pil_bicubic" else "pil_bicubic")
    gaps = []
    for image_id, (high_ref, low_ref) in reference.items():
        record = load_cam_file(cam_path(out, image_id))
        assert record.high_res.dtype == np.float32 and record.cam.dtype == np.float32
        np.testing.assert_allclose(record.high_res, normalised(high_ref), rtol=0, atol=1e-5)
        np.testing.assert_allclose(record.cam, normalised(low_ref), rtol=0, atol=1e-5)
        gaps.append(np.abs(record.high_res - normalised(other[image_id][0])).max())
    assert max(gaps) > 1e-3  # the two rescaling rules give measurably different CAMs: the switch matters
    before = mtimes(out)
    make_cams(stage.config(out, *options), stage.data)
    assert mtimes(out) == before
    assert json.loads((out / CAM_MANIFEST).read_text())["counts"]["written_this_run"] == 0


class WriteSpy:
    """Wraps ``save_cam_file`` in the stage module: records ids, optionally 'dies' at the n-th write leaving
    a half-written temporary file behind, as a killed process would."""

    def __init__(self, die_at: int | None = None) -> None:
        self.ids: list[str] = []
        self.die_at = die_at

    def __call__(self, path: Path, *args: Any, **kwargs: Any) -> Path:
        if self.die_at is not None and len(self.ids) + 1 == self.die_at:
            (path.parent / f".tmp-{path.stem}-killed.npz").write_bytes(b"PK\x03\x04 half a zip")
            raise RuntimeError("simulated kill")
        self.ids.append(path.stem)
        return save_cam_file(path, *args, **kwargs)


def test_rerun_after_damage_redoes_only_the_damaged_files(stage: Stage, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "cams"
    shutil.copytree(stage.cam_dir, out)
    ids = stage.ids
    for image_id in ids[:3]:
        cam_path(out, image_id).unlink()
    truncated = cam_path(out, ids[3])
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    corrupt = cam_path(out, ids[4])
    payload = bytearray(corrupt.read_bytes())
    payload[100:400] = bytes(300)  # zeroed bytes inside the zip: CRC mismatch
    corrupt.write_bytes(bytes(payload))
    record = load_cam_file(cam_path(out, ids[5]))
    np.savez(cam_path(out, ids[5]), keys=record.keys, high_res=record.high_res, cam=record.high_res)  # bad cam size
    (out / f".tmp-{ids[6]}-abcd.npz").write_bytes(b"partial")
    damaged = set(ids[:6])
    before = {k: v for k, v in mtimes(out).items() if Path(k).stem not in damaged}

    spy = WriteSpy()
    monkeypatch.setattr(cam_writer, "save_cam_file", spy)
    make_cams(stage.config(out), stage.data)
    assert sorted(spy.ids) == sorted(damaged)
    assert not list(out.glob(".tmp-*"))
    after = mtimes(out)
    assert len(after) == 48 and all(after[k] == v for k, v in before.items())
    manifest = json.loads((out / CAM_MANIFEST).read_text())
    assert manifest["counts"] == {"images": 48, "written_this_run": 6} and manifest["status"] == "complete"
    for image_id in damaged:
        redone, original = load_cam_file(cam_path(out, image_id)), load_cam_file(cam_path(stage.cam_dir, image_id))
        np.testing.assert_array_equal(redone.keys, original.keys)
        np.testing.assert_allclose(redone.high_res, original.high_res, rtol=0, atol=1e-3)


def test_killed_run_resumes_where_it_stopped(stage: Stage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "cams"
    monkeypatch.setattr(cam_writer, "save_cam_file", WriteSpy(die_at=11))  # dies in the 2nd batch of 8
    with pytest.raises(RuntimeError, match="simulated kill"):
        make_cams(stage.config(out), stage.data)
    assert len(mtimes(out)) == 10 and len(list(out.glob(".tmp-*"))) == 1
    assert json.loads((out / CAM_MANIFEST).read_text())["status"] == "running"
    first = mtimes(out)

    spy = WriteSpy()
    monkeypatch.setattr(cam_writer, "save_cam_file", spy)
    make_cams(stage.config(out), stage.data)
    assert len(spy.ids) == 38 and not set(spy.ids) & {Path(k).stem for k in first}
    assert not list(out.glob(".tmp-*"))
    after = mtimes(out)
    assert len(after) == 48 and all(after[k] == v for k, v in first.items())
    manifest = json.loads((out / CAM_MANIFEST).read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["written_this_run"] == 38


def test_really_killed_run_leaves_no_partial_file_and_resumes(stage: Stage, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "cams"
    log, written = tmp_path / "ddp_cams.log", tmp_path / "written_rank0.txt"
    with open(log, "w") as stderr:  # the script pauses 0.5 s after each batch, so the kill lands mid-run
        proc = subprocess.Popen([sys.executable, str(DDP_SCRIPT), str(tmp_path), str(stage.cache), "--trainer=cpu",
                                 "--sleep=0.5", *stage.overrides], stdout=subprocess.DEVNULL, stderr=stderr)
        try:  # once its log of written ids holds 2 batches of 8, kill it (SIGKILL)
            wait_for(lambda: written.is_file() and len(written.read_text().split()) >= 16, proc, log,
                     what="16 CAM files written")
        finally:
            proc.kill()
            proc.wait()
    survivors = mtimes(out)
    assert 16 <= len(survivors) < 48
    for name in survivors:  # every file under a final name is complete
        load_cam_file(out / name, stage.data.meta.num_classes)
    assert json.loads((out / CAM_MANIFEST).read_text())["status"] == "running"

    spy = WriteSpy()
    monkeypatch.setattr(cam_writer, "save_cam_file", spy)
    make_cams(stage.config(out), stage.data)
    assert sorted(spy.ids) == sorted(set(stage.ids) - {Path(n).stem for n in survivors})
    after = mtimes(out)
    assert len(after) == 48 and all(after[k] == v for k, v in survivors.items())
    assert not list(out.glob(".tmp-*"))
    assert json.loads((out / CAM_MANIFEST).read_text())["counts"]["written_this_run"] == 48 - len(survivors)


def seed_report(cam_dir: Path, stage: Stage, out: Path, scores: list[float], configured: float) -> dict[str, Any]:
    return evaluate_seeds(cam_dir, stage.data.layout, "train", out, class_names=list(stage.data.meta.class_names),
                          bg_scores=scores, configured_score=configured, dataset="synthetic", progress=False)


def test_ddp_writes_every_image_once_and_matches_one_process(stage: Stage, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(DDP_SCRIPT), str(tmp_path), str(stage.cache), *stage.overrides],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    per_rank = [(tmp_path / f"written_rank{r}.txt").read_text().split() for r in (0, 1)]
    assert per_rank[0] and per_rank[1]
    written = per_rank[0] + per_rank[1]
    assert len(written) == len(set(written)) == 48 and set(written) == set(stage.ids)
    ddp_dir = tmp_path / "cams"
    manifest = json.loads((ddp_dir / CAM_MANIFEST).read_text())
    assert manifest["status"] == "complete" and manifest["counts"] == {"images": 48, "written_this_run": 48}
    worst = 0.0
    for image_id in stage.ids:
        a, b = load_cam_file(cam_path(ddp_dir, image_id)), load_cam_file(cam_path(stage.cam_dir, image_id))
        np.testing.assert_array_equal(a.keys, b.keys)
        worst = max(worst, float(np.abs(a.high_res.astype(np.float32) - b.high_res).max()))
    assert worst <= 1e-3
    scores = [0.05, 0.10, 0.13, 0.20, 0.30]
    single = seed_report(stage.cam_dir, stage, tmp_path / "seeds1", scores, 0.13)
    ddp = seed_report(ddp_dir, stage, tmp_path / "seeds2", scores, 0.13)
    assert ddp["miou_at_configured"] == single["miou_at_configured"]
    assert ddp["curve"] == single["curve"]


# ----------------------------------------------------------------------------------------------------------
# bad input: DataError naming the file


def test_missing_checkpoint_is_named(stage: Stage, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.ckpt"
    with pytest.raises(DataError, match=rf"{missing}: classifier checkpoint not found"):
        make_cams(stage.config(tmp_path / "cams", f"cam.checkpoint={missing}"), stage.data)
    empty = tmp_path / "classifier"
    empty.mkdir()
    with pytest.raises(DataError, match=rf"{empty}: no completed classifier stage"):
        make_cams(stage.config(tmp_path / "cams", "cam.checkpoint=null", f"cam.classifier_dir={empty}"), stage.data)


def test_bad_resize_is_named_before_any_work(stage: Stage, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cam.resize must be 'pil_bicubic' .* got 'lanczos'"):
        make_cams(stage.config(tmp_path / "cams", "cam.resize=lanczos"), stage.data)
    assert not (tmp_path / "cams").exists()


@pytest.mark.parametrize("kind", ["state_dict", "text"])
def test_foreign_checkpoint_is_named(kind: str, stage: Stage, tmp_path: Path) -> None:
    path = tmp_path / "foreign.ckpt"
    if kind == "state_dict":
        torch.save({"state_dict": {"layer.weight": torch.randn(4, 3)}, "epoch": 3}, path)
    else:
        path.write_text("this is not a checkpoint\n")
    with pytest.raises(DataError, match=rf"{path}: not a vwl_lightning classifier checkpoint"):
        make_cams(stage.config(tmp_path / "cams", f"cam.checkpoint={path}"), stage.data)
    assert not (tmp_path / "cams" / CAM_MANIFEST).exists()


@pytest.mark.parametrize(("key", "value"), [("checkpoint_sha256", "0" * 64), ("dataset", "voc"),
                                            ("data_root", "/elsewhere/VOC2012"), ("scales", [1.0]),
                                            ("resize", "tensor_bicubic")])
def test_cam_folder_of_another_checkpoint_or_data_set_is_refused(key: str, value: Any, stage: Stage,
                                                                  tmp_path: Path) -> None:
    out = tmp_path / "cams"
    shutil.copytree(stage.cam_dir, out)
    manifest_path = out / CAM_MANIFEST
    manifest = json.loads(manifest_path.read_text())
    manifest[key] = value
    manifest_path.write_text(json.dumps(manifest))
    cam_path(out, stage.ids[0]).unlink()  # there is work to do, yet nothing may be written
    before = mtimes(out)
    with pytest.raises(DataError, match=rf"{manifest_path}: .*{key}="):
        make_cams(stage.config(out), stage.data)
    assert mtimes(out) == before and json.loads(manifest_path.read_text()) == manifest


def test_corrupt_cam_file_during_seed_evaluation_is_named(stage: Stage, tmp_path: Path) -> None:
    out = tmp_path / "cams"
    shutil.copytree(stage.cam_dir, out)
    bad = cam_path(out, stage.ids[7])
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(DataError, match=rf"{bad}: cannot read CAM file"):
        seed_report(out, stage, tmp_path / "seeds", [0.13], 0.13)


@pytest.mark.parametrize("defect", ["size", "values"])
def test_bad_ground_truth_is_named(defect: str, stage: Stage, tmp_path: Path) -> None:
    layout = stage.data.layout
    masks = tmp_path / "masks"
    shutil.copytree(layout.root / layout.mask_dir, masks)
    victim = masks / f"{stage.ids[5]}.png"
    mask = read_label_png(victim)
    if defect == "size":
        write_label_png(victim, mask[:40, :50])
        message = r"ground-truth size 50x40 differs from the prediction's 64x64"
    else:
        mask[3, 3] = 42
        write_label_png(victim, mask)
        message = r"ground-truth values \[42\] are outside 0..8 and 255"
    moved = dataclasses.replace(layout, mask_dir=str(masks))  # an absolute mask_dir replaces root/mask_dir
    with pytest.raises(DataError, match=rf"{victim}: {message}"):
        evaluate_seeds(stage.cam_dir, moved, "train", tmp_path / "seeds", bg_scores=[0.13],
                       class_names=list(stage.data.meta.class_names), progress=False)


# ----------------------------------------------------------------------------------------------------------
# the background sweep


def numpy_miou(stage: Stage, score: float) -> float:
    """Seed mIoU at one background score, straight from the files (float32 comparison, ties to background)."""
    c = stage.data.meta.num_classes
    conf = np.zeros((c, c), dtype=np.int64)
    for image_id in stage.ids:
        record = load_cam_file(cam_path(stage.cam_dir, image_id))
        cams = record.high_res.astype(np.float32)
        pred = np.where(cams.max(axis=0) > np.float32(score), record.keys[cams.argmax(axis=0)], 0)
        gt = read_label_png(stage.data.layout.mask_path(image_id)).astype(np.int64)
        valid = gt != 255
        conf += np.bincount(gt[valid] * c + pred[valid], minlength=c * c).reshape(c, c)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    return float(np.mean(tp[union > 0] / union[union > 0]))


def test_background_sweep_equals_separate_runs(stage: Stage, tmp_path: Path) -> None:
    scores = [round(0.05 * k, 2) for k in range(1, 13)]
    swept = seed_report(stage.cam_dir, stage, tmp_path / "sweep", scores, 0.13)
    curve = {c["bg_score"]: c["miou"] for c in swept["curve"]}
    assert sorted(curve) == sorted([*scores, 0.13])
    for score in [*scores, 0.13]:
        alone = seed_report(stage.cam_dir, stage, tmp_path / f"at{score}", [score], score)
        assert alone["miou_at_configured"] == curve[score] == alone["miou"]
        assert curve[score] == pytest.approx(numpy_miou(stage, score), abs=1e-12)
    assert swept["miou_at_configured"] == curve[0.13]
    assert swept["best_miou"] == max(curve.values())


def test_bf16_stage_stays_close_to_fp32(stage: Stage, tmp_path: Path) -> None:
    """``cam.precision=bf16-mixed`` (what ``auto`` picks on a CPU with AVX-512 BF16) on the same checkpoint:
    normalised CAMs within bf16 rounding of the fp32 files and the same per-pixel argmax almost everywhere."""
    out = tmp_path / "bf16"
    make_cams(stage.config(out, "cam.precision=bf16-mixed"), stage.data)
    differences, agree, total = [], 0, 0
    for image_id in stage.ids:
        a = load_cam_file(cam_path(stage.cam_dir, image_id)).high_res.astype(np.float32)
        b = load_cam_file(cam_path(out, image_id)).high_res.astype(np.float32)
        differences.append(np.abs(a - b).ravel())
        agree += int((a.argmax(0) == b.argmax(0)).sum())
        total += a[0].size
    difference = np.concatenate(differences)
    print(f"bf16 vs fp32: mean |diff| {difference.mean():.4f}, 99th pct {np.percentile(difference, 99):.4f}, "
          f"argmax agreement {agree / total:.4f}")
    # bf16 changes the numbers (8-bit mantissa); the tiny 1-epoch model's faint maps amplify it after
    # normalisation, so the bound is on the bulk of the pixels, not the worst one
    assert 0.0 < difference.mean() < 0.02 and np.percentile(difference, 99) < 0.1
    assert agree / total > 0.95


def test_folded_batchnorms_give_the_same_cam_files_and_are_recorded(stage: Stage, tmp_path: Path) -> None:
    """``cam.fold_batchnorm=true`` (fp32): the files equal the unfolded stage's to float16 rounding; the
    manifest says so, and a folder made without folding is refused rather than mixed."""
    out = make_cams(stage.config(tmp_path / "folded", "cam.fold_batchnorm=true"), stage.data)
    manifest = json.loads((out / CAM_MANIFEST).read_text())
    assert manifest["fold_batchnorm"] is True
    assert "fold_batchnorm" not in json.loads((stage.cam_dir / CAM_MANIFEST).read_text())
    for image_id in stage.ids:
        a = load_cam_file(cam_path(stage.cam_dir, image_id)).high_res.astype(np.float32)
        b = load_cam_file(cam_path(out, image_id)).high_res.astype(np.float32)
        np.testing.assert_allclose(b, a, rtol=0, atol=2e-3)   # float16 files: 1e-3 steps near 1
    mixed = tmp_path / "mixed"
    shutil.copytree(stage.cam_dir, mixed)
    cam_path(mixed, stage.ids[0]).unlink()
    with pytest.raises(DataError, match="fold_batchnorm"):
        make_cams(stage.config(mixed, "cam.fold_batchnorm=true"), stage.data)
