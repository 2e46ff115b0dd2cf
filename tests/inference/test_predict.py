"""Predict on your own images (spec §5, §7): segmenter masks and classifier CAMs from a run folder, checked
against a NumPy/torch reference kept here; unreadable images named and skipped; the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fixtures_models import MEAN, NAMES, STD, tiny_run
from vwl_lightning.cam.files import load_cam_file
from vwl_lightning.data.label_png import read_label_png
from vwl_lightning.data.meta import voc_palette
from vwl_lightning.errors import ConfigError, DataError
from vwl_lightning.inference.predict import (
    CamSettings,
    MaskSettings,
    collect_images,
    crf_settings,
    parse_labels,
    predict_cams,
    predict_masks,
)
from vwl_lightning.modules.classifier import load_classifier
from vwl_lightning.predict import main
from vwl_lightning.stages.train_segmenter import load_segmenter
from vwl_lightning.utils.io import read_json

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def run(make_config, tmp_path: Path) -> Path:
    tiny_run(make_config, tmp_path / "run")
    return tmp_path / "run"


def photos(folder: Path) -> dict[str, np.ndarray]:
    """A PNG 40x56, a JPEG 33x47 (odd sizes), a second PNG 40x56 (same size: one batch), a broken file."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    images = {"a": rng.integers(0, 255, (40, 56, 3), dtype=np.uint8),
              "c": rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)}
    for stem, image in images.items():
        Image.fromarray(image).save(folder / f"{stem}.png")
    Image.fromarray(rng.integers(0, 255, (33, 47, 3), dtype=np.uint8)).save(folder / "b.jpg", quality=95)
    with Image.open(folder / "b.jpg") as decoded:  # what PIL reads back (JPEG is lossy)
        images["b"] = np.asarray(decoded.convert("RGB"))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return images


def normalised(image: np.ndarray) -> torch.Tensor:
    x = (image.astype(np.float32) / 255 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1))[None]


def reference_probs(module, image: np.ndarray, flip: bool) -> np.ndarray:
    """softmax(max(logits, flipped-back logits of the mirror)) at scale 1, one image, one forward each."""
    x = normalised(image)
    with torch.no_grad():
        logits = F.interpolate(module.model(x), size=image.shape[:2], mode="bilinear", align_corners=False)
        if flip:
            mirrored = F.interpolate(module.model(x.flip(-1)), size=image.shape[:2], mode="bilinear",
                                     align_corners=False).flip(-1)
            logits = torch.maximum(logits, mirrored)
    return torch.softmax(logits, dim=1)[0].numpy()


def test_masks_match_the_reference_and_a_broken_image_is_skipped(run: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    images = photos(tmp_path / "in")
    outcome = predict_masks(run, [tmp_path / "in"], tmp_path / "out",
                            MaskSettings(flip=True, batch_size=2, save_probs=True), device="cpu", progress=False)
    assert sorted(Path(p).stem for p in outcome.written) == ["a", "b", "c"]
    assert list(outcome.failed) == [str(tmp_path / "in" / "broken.png")]
    assert "broken.png: cannot read image" in capsys.readouterr().out
    module = load_segmenter(run / "segmenter" / "segmenter.ckpt").eval()
    for stem, image in images.items():
        probs = reference_probs(module, image, flip=True)
        saved = np.load(tmp_path / "out" / f"{stem}_probs.npz")
        assert saved["probs"].shape == (len(NAMES), *image.shape[:2])
        np.testing.assert_allclose(saved["probs"].astype(np.float32), probs, atol=2e-3)
        mask = read_label_png(tmp_path / "out" / f"{stem}.png")
        confident = np.sort(probs, axis=0)[-1] - np.sort(probs, axis=0)[-2] > 1e-4  # no near-ties
        assert confident.mean() > 0.9
        np.testing.assert_array_equal(mask[confident], probs.argmax(axis=0)[confident])
        with Image.open(tmp_path / "out" / f"{stem}_overlay.png") as overlay:
            assert overlay.height >= image.shape[0] and overlay.width > image.shape[1]  # the legend strip
            legend = np.asarray(overlay.convert("RGB"))[:, image.shape[1]:]
            for c in np.unique(mask):  # every predicted class has its palette swatch in the legend
                assert (legend == voc_palette()[c]).all(axis=-1).any(), (stem, c)
    manifest = read_json(tmp_path / "out" / "manifest.json")
    assert manifest["mean"] == MEAN and manifest["std"] == STD and manifest["flip"] is True
    assert read_json(tmp_path / "out" / "legend.json")["disc"] == voc_palette()[1].tolist()


def test_crf_option_refines_the_probabilities(run: Path, tmp_path: Path) -> None:
    from vwl_lightning.pseudo.dense_crf import crf_from_probs

    images = photos(tmp_path / "in")
    params = crf_settings("deeplab_test")
    predict_masks(run / "segmenter" / "segmenter.ckpt", [tmp_path / "in" / "a.png"], tmp_path / "out",
                  MaskSettings(crf=params), device="cpu", progress=False)
    module = load_segmenter(run / "segmenter" / "segmenter.ckpt").eval()
    expected = crf_from_probs(images["a"], reference_probs(module, images["a"], flip=False), params).argmax(0)
    agree = (read_label_png(tmp_path / "out" / "a.png") == expected).mean()
    assert agree > 0.99
    with pytest.raises(ConfigError, match="--crf"):
        crf_settings("no_such_preset")


def test_cams_with_given_labels_match_the_reference(run: Path, tmp_path: Path) -> None:
    images = photos(tmp_path / "in")
    predict_cams(run, [tmp_path / "in" / "a.png", tmp_path / "in" / "b.jpg"], tmp_path / "out",
                 CamSettings(scales=(1.0,), flip=False), labels=["triangle", "disc"], device="cpu", progress=False)
    net = load_classifier(run / "classifier" / "classifier.ckpt").model.eval()
    for stem in ("a", "b"):
        record = load_cam_file(tmp_path / "out" / f"{stem}.npz")
        assert record.keys.tolist() == [1, 3]  # 1-based, sorted: disc, triangle
        with torch.no_grad():
            raw = torch.relu(net.classifier(net.backbone(normalised(images[stem]))))
        up = F.interpolate(raw, size=images[stem].shape[:2], mode="bilinear", align_corners=False)[0, [0, 2]]
        expected = (up / (up.flatten(1).max(1).values[:, None, None] + 1e-5)).numpy()
        np.testing.assert_allclose(record.high_res, expected, atol=1e-5)
        seed = read_label_png(tmp_path / "out" / f"{stem}_seed.png")
        stacked = np.concatenate([np.full((1, *expected.shape[1:]), 0.13, np.float32), expected])
        np.testing.assert_array_equal(seed, np.array([0, 1, 3])[stacked.argmax(0)])
        with Image.open(tmp_path / "out" / f"{stem}_cams.png") as grid:  # image + 2 CAMs + seed, side by side
            assert grid.width == 4 * images[stem].shape[1] + 3 * 2


def test_predicted_labels_are_the_classes_above_the_threshold(run: Path, tmp_path: Path) -> None:
    images = photos(tmp_path / "in")
    net = load_classifier(run / "classifier" / "classifier.ckpt").model.eval()
    with torch.no_grad():
        scores = torch.sigmoid(net(normalised(images["a"])).logits)[0].numpy()
    threshold = float(np.sort(scores)[-2]) - 1e-6  # the two best classes pass
    predict_cams(run, [tmp_path / "in" / "a.png"], tmp_path / "out",
                 CamSettings(scales=(1.0, 0.5), flip=True, label_threshold=threshold), device="cpu", progress=False)
    expected = sorted(int(c) + 1 for c in np.argsort(scores)[-2:])
    assert load_cam_file(tmp_path / "out" / "a.npz").keys.tolist() == expected
    used = read_json(tmp_path / "out" / "manifest.json")["labels_used"]["a"]
    assert used["classes"] == [NAMES[k] for k in expected]


def test_bad_inputs_name_what_is_wrong(run: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere: no such image"):
        collect_images([tmp_path / "nowhere"])
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "x" / "same.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "y" / "same.jpg")
    with pytest.raises(DataError, match="same file name"):
        collect_images([tmp_path / "x", tmp_path / "y"])
    (tmp_path / "list.txt").write_text("x/same.png\n\n")
    assert collect_images([tmp_path / "list.txt"]) == [tmp_path / "x" / "same.png"]
    with pytest.raises(ConfigError, match="unknown class 'cat'"):
        parse_labels(["cat"], NAMES)
    with pytest.raises(DataError, match="completed segmenter stage"):
        predict_masks(tmp_path / "x", [tmp_path / "x"], tmp_path / "out", device="cpu")


def test_cli_exit_status_and_summary(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photos(tmp_path / "in")
    assert main([str(run), str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--no-progress",
                 "--device", "cpu"]) == 1  # one image failed
    out = capsys.readouterr().out
    assert "broken.png: cannot read image" in out and "3 images ->" in out and "1 failed" in out
    assert main([str(run), str(tmp_path / "in" / "a.png"), "--out", str(tmp_path / "cams"), "--cams",
                 "--labels", "square", "--scales", "1.0", "--no-progress", "--device", "cpu"]) == 0
    assert load_cam_file(tmp_path / "cams" / "a.npz").keys.tolist() == [2]
    assert main([str(tmp_path / "in"), str(tmp_path / "in"), "--out", str(tmp_path / "o")]) == 2
    assert "completed segmenter stage" in capsys.readouterr().err
