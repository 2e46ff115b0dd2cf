"""Run identity: a stage is reused only when its
fingerprint matches; a changed key is refused naming it (or redone with ``recompute``); a redone upstream
redoes what follows; an interrupted stage never resumes under other settings; a stage run alone takes the
data settings recorded in the folder it is given."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from conftest import compose_config
from vwl_lightning.data.source import resolve_data
from vwl_lightning.errors import ConfigError
from vwl_lightning.stages.evaluate_seeds import evaluate_seeds, sweep_scores
from vwl_lightning.stages.identity import (
    IDENTITY,
    NOT_IDENTITY,
    check_stage_folder,
    differences,
    fingerprint_of,
    stage_identity,
    stage_settings,
)
from vwl_lightning.stages.pipeline import inherit_for_single_stage, run
from vwl_lightning.utils.manifest import read_manifest

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = [
    "debug=tiny", "cam.scales=[1.0]", "cam.flip=false",
    "seeds.sweep={start: 0.05, stop: 0.5, step: 0.05}", "check_masks=true",
]
FIRST = ["pipeline=[classifier,cams,seeds,pseudo]"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> SimpleNamespace:
    """Classifier → CAMs → seeds → pseudo masks once, with the default settings (gamma 2, learned codebook)."""
    run_dir = tmp_path_factory.mktemp("identity") / "run"
    headline = run(compose_config([*TINY, *FIRST], run_dir, cache_dir))
    return SimpleNamespace(run_dir=run_dir, headline=headline, cache=cache_dir)


def copy_of(first_run: SimpleNamespace, where: Path) -> Path:
    shutil.copytree(first_run.run_dir, where)
    return where


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_fingerprint_covers_the_keys_and_upstream_not_paths(make_config) -> None:
    cfg = make_config()
    base = stage_identity("seeds", cfg)
    assert base["settings"]["seeds.bg_score"] == 0.13 and "seeds.out_dir" not in base["settings"]
    assert "data.source.cache_dir" not in base["settings"]
    assert base["fingerprint"] == fingerprint_of("seeds", base["settings"], base["upstream"])
    assert base["fingerprint"] != stage_identity("seeds", make_config("seeds.bg_score=0.2"))["fingerprint"]
    moved = make_config("seeds.out_dir=/elsewhere", "paths.cache_dir=/other/cache")
    assert stage_identity("seeds", moved)["fingerprint"] == base["fingerprint"]  # where, not what
    other_upstream = {"cams": {"location": "x", "fingerprint": "0123"}}
    assert fingerprint_of("seeds", base["settings"], other_upstream) != base["fingerprint"]
    cams = stage_identity("cams", make_config())
    assert cams["settings"]["cam.resize"] == "pil_bicubic"  # the multi-scale rescale changes the CAMs
    assert stage_identity("cams", make_config("cam.resize=tensor_bicubic"))["fingerprint"] != cams["fingerprint"]
    classifier = stage_settings("classifier", make_config("model.pool.gamma=4"))
    assert classifier["model.pool.gamma"] == 4 and "model.checkpoint_every_n_steps" not in classifier
    assert differences({"a": 1, "b": 2}, {"a": 1, "b": 3, "c": 0}) == ["b=2 (now 3)", "c=\"<unset>\" (now 0)"]


def test_irn_settings_count_only_when_the_pseudo_stage_runs_irn(make_config) -> None:
    crf = stage_identity("pseudo", make_config())
    assert not any(k.startswith("irn.") for k in crf["settings"]) and set(crf["upstream"]) == {"cams"}
    assert stage_identity("pseudo", make_config("irn.walk.beta=5"))["fingerprint"] == crf["fingerprint"]
    irn = stage_identity("pseudo", make_config("pseudo.mode=irn", "irn=synthetic"))
    assert irn["settings"]["irn.walk.beta"] == 10.0 and irn["settings"]["irn.radius"] == 10
    assert "irn.out_dir" not in irn["settings"] and "irn.classifier_dir" not in irn["settings"]
    assert set(irn["upstream"]) == {"cams", "classifier"}  # the frozen trunk is the classifier's
    beta = stage_identity("pseudo", make_config("pseudo.mode=irn", "irn=synthetic", "irn.walk.beta=5"))
    assert beta["fingerprint"] != irn["fingerprint"]
    scratch = stage_identity("pseudo", make_config("pseudo.mode=irn", "irn=synthetic", "irn.backbone_source=scratch"))
    assert set(scratch["upstream"]) == {"cams"}
    default = stage_identity("pseudo", make_config("pseudo.mode=irn"))   # the ImageNet EfficientNet-Lite0 trunk
    assert default["settings"]["irn.backbone_source"] == "imagenet"
    assert default["settings"]["irn.backbone.name"] == "tf_efficientnet_lite0" and set(default["upstream"]) == {"cams"}


def test_every_setting_counts_but_the_listed_ones(make_config) -> None:
    """The fingerprint is made of the stage's whole config groups: a key nobody listed (cam.fold_batchnorm,
    trainer.limit_train_batches, model.backbone.input_scale) changes it at any value; the keys of NOT_IDENTITY
    (worker counts, progress display, devices) never do."""
    plain = {stage: stage_identity(stage, make_config()) for stage in ("classifier", "cams")}
    assert plain["cams"]["settings"]["cam.fold_batchnorm"] is False
    for stage, override in (("cams", "cam.fold_batchnorm=true"), ("classifier", "trainer.limit_train_batches=0.5"),
                            ("classifier", "model.backbone.input_scale=2.0"), ("classifier", "seed=2"),
                            ("classifier", "model.scheduler.power=1.0")):
        assert stage_identity(stage, make_config(override))["fingerprint"] != plain[stage]["fingerprint"], override
    for stage, override in (("cams", "cam.num_workers=1"), ("classifier", "trainer.enable_progress_bar=true"),
                            ("classifier", "trainer.devices=2"), ("classifier", "data.num_workers=3"),
                            ("classifier", "model.checkpoint_every_n_steps=5")):
        assert stage_identity(stage, make_config(override))["fingerprint"] == plain[stage]["fingerprint"], override
    assert not any(key.startswith(NOT_IDENTITY) for key in plain["classifier"]["settings"])


def test_a_folder_of_an_older_fingerprint_version_is_refused_in_one_line(make_config, tmp_path: Path) -> None:
    """A stage folder whose identity.json has no version (or another) is refused naming the version, never
    compared key by key; recompute clears it."""
    identity = stage_identity("seeds", make_config())
    folder = tmp_path / "seeds"
    folder.mkdir()
    old = {k: v for k, v in identity.items() if k != "version"}
    (folder / "identity.json").write_text(json.dumps({**old, "fingerprint": "0123456789abcdef"}))
    (folder / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"stage seeds there was recorded by an older vwl_lightning \(fingerprint "
                                          r"version 1, now 2\); use a new run folder, or add recompute=\[seeds\]"):
        check_stage_folder("seeds", folder, identity, recompute=False)
    assert check_stage_folder("seeds", folder, identity, recompute=["seeds"]) == "redo"
    assert not (folder / "metrics.json").exists()
    assert json.loads((folder / "identity.json").read_text())["version"] == 2


def test_changed_override_is_refused_then_a_redone_upstream_redoes_the_seeds(first_run: SimpleNamespace,
                                                                            tmp_path: Path) -> None:
    """(1) gamma=4 in the same folder: refused, one line naming the key and both values,
    nothing touched. (2) classifier/ and cams/ deleted, re-run with model/codebook=none: the seeds are redone
    because their upstream changed, and results.json equals a fresh evaluation of the current CAMs."""
    run_dir = copy_of(first_run, tmp_path / "run")
    before = mtimes(run_dir)
    with pytest.raises(ConfigError, match=r"classifier there was made with model\.pool\.gamma=2\.0 \(now 4\); "
                                          r"use a new run folder .* recompute=true"):
        run(compose_config([*TINY, *FIRST, "model.pool.gamma=4"], run_dir, first_run.cache))
    assert mtimes(run_dir) == before
    old_seeds = read_manifest(run_dir / "seeds")
    shutil.rmtree(run_dir / "classifier")
    shutil.rmtree(run_dir / "cams")
    cfg = compose_config([*TINY, "pipeline=[classifier,cams,seeds]", "model/codebook=none"], run_dir,
                         first_run.cache)
    headline = run(cfg)
    seeds = read_manifest(run_dir / "seeds")
    assert seeds["finished_at"] >= old_seeds["finished_at"] and seeds["fingerprint"] != old_seeds["fingerprint"]
    assert seeds["upstream"]["cams"]["fingerprint"] == read_manifest(run_dir / "cams")["fingerprint"]
    data = resolve_data(OmegaConf.to_container(cfg.data.source, resolve=True))
    fresh = evaluate_seeds(run_dir / "cams", data.layout, "train", tmp_path / "fresh",
                           class_names=list(data.meta.class_names), bg_scores=sweep_scores(cfg.seeds.sweep),
                           configured_score=0.13, progress=False)
    assert headline["cam_seed_miou_configured"] == pytest.approx(fresh["miou_at_configured"], abs=1e-12)
    assert headline["cam_seed_miou_best"] == pytest.approx(fresh["best_miou"], abs=1e-12)
    assert headline["cam_seed_miou_configured"] != first_run.headline["cam_seed_miou_configured"]
    on_disk = json.loads((run_dir / "results.json").read_text())
    assert on_disk["fingerprints"] == {n: read_manifest(run_dir / n)["fingerprint"]
                                       for n in ("classifier", "cams", "seeds")}
    # the pseudo stage, not run here, still records the old CAMs: the next full run redoes it by itself
    pseudo = read_manifest(run_dir / "pseudo")
    assert pseudo["upstream"]["cams"]["fingerprint"] != seeds["upstream"]["cams"]["fingerprint"]


def test_recompute_redoes_a_stage_whose_settings_changed(first_run: SimpleNamespace, tmp_path: Path) -> None:
    run_dir = copy_of(first_run, tmp_path / "run")
    seeds_only = [*TINY, "pipeline=[classifier,cams,seeds]", "seeds.bg_score=0.25"]
    with pytest.raises(ConfigError, match=r"seeds there was made with seeds\.bg_score=0\.13 \(now 0\.25\)"):
        run(compose_config(seeds_only, run_dir, first_run.cache))
    classifier_before = mtimes(run_dir / "classifier")
    headline = run(compose_config([*seeds_only, "recompute=true"], run_dir, first_run.cache))
    assert mtimes(run_dir / "classifier") == classifier_before  # matching stages are not redone
    seeds = read_manifest(run_dir / "seeds")
    assert seeds["metrics"]["configured_bg_score"] == 0.25 == headline["cam_seed_configured_bg_score"]
    assert json.loads((run_dir / "seeds" / IDENTITY).read_text())["settings"]["seeds.bg_score"] == 0.25
    # recompute=[seeds] redoes a matching stage too
    again = run(compose_config([*seeds_only, "recompute=[seeds]"], run_dir, first_run.cache))
    assert read_manifest(run_dir / "seeds")["finished_at"] >= seeds["finished_at"]
    assert again["cam_seed_miou_configured"] == headline["cam_seed_miou_configured"]
    with pytest.raises(ConfigError, match=r"recompute=\['seedz'\]: unknown stage"):
        run(compose_config([*seeds_only, "recompute=[seedz]"], run_dir, first_run.cache))


def test_interrupted_crf_then_another_bg_score_never_mixes_masks(first_run: SimpleNamespace, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the pipeline: CRF stage redone and interrupted after 2 masks with bg_score 0.15,
    then bg_score=0.40: refused naming the key; with recompute every mask is made under 0.40."""
    import vwl_lightning.stages.make_pseudo_masks as pseudo_stage

    run_dir = copy_of(first_run, tmp_path / "run")
    real = pseudo_stage.make_one_pseudo_label
    made = {"n": 0}

    def die_after_two(job):
        if made["n"] == 2:
            raise KeyboardInterrupt
        made["n"] += 1
        return real(job)

    monkeypatch.setattr(pseudo_stage, "make_one_pseudo_label", die_after_two)
    with pytest.raises(KeyboardInterrupt):
        run(compose_config([*TINY, *FIRST, "recompute=[pseudo]"], run_dir, first_run.cache))
    monkeypatch.setattr(pseudo_stage, "make_one_pseudo_label", real)
    masks = run_dir / "pseudo" / "masks"
    assert len(list(masks.glob("*.png"))) == 2 and read_manifest(run_dir / "pseudo") is None
    changed = [*TINY, *FIRST, "pseudo.bg_score=0.40"]
    with pytest.raises(ConfigError, match=r"pseudo there was made with pseudo\.bg_score=0\.15 \(now 0\.4\)"):
        run(compose_config(changed, run_dir, first_run.cache))
    run(compose_config([*changed, "recompute=true"], run_dir, first_run.cache))
    manifest = read_manifest(run_dir / "pseudo")
    assert manifest["bg_score"] == 0.40 and manifest["counts"]["written"] == manifest["counts"]["images"] == 48
    assert manifest["settings"]["pseudo.bg_score"] == 0.40


def test_a_stage_run_alone_takes_the_data_settings_of_its_input(first_run: SimpleNamespace, tmp_path: Path) -> None:
    """`stage=cams cam.classifier_dir=<tiny run>/classifier` with the default data config takes the 48-image
    data settings the classifier recorded (not the default 1,600-image data set), and a contradicting
    command-line override is refused naming the key."""
    classifier = first_run.run_dir / "classifier"
    cfg = compose_config(["stage=cams", f"cam.classifier_dir={classifier}"], tmp_path / "alone",
                         first_run.cache)
    assert cfg.data.source.generator.num_train == 1600
    inherit_for_single_stage(cfg, "cams", overrides={"stage", "cam.classifier_dir"})
    assert cfg.data.source.generator.num_train == 48 and cfg.data.source.generator.image_size == 64
    assert cfg.data.eval_size == 64 and cfg.data.batch_size == 8  # every data.* key the classifier recorded
    contradicting = compose_config(["stage=cams", f"cam.classifier_dir={classifier}",
                                    "data.source.generator.num_train=96"], tmp_path / "alone", first_run.cache)
    with pytest.raises(ConfigError, match=r"data\.source\.generator\.num_train=96 contradicts .*classifier, made "
                                          r"with data\.source\.generator\.num_train=48"):
        inherit_for_single_stage(contradicting, "cams", overrides={"data.source.generator.num_train"})
    # the segmenter alone on another run's pseudo masks: backbone_init follows pseudo -> cams -> classifier
    seg = compose_config(["stage=segmenter", f"segmenter.pseudo_dir={first_run.run_dir}/pseudo"],
                         tmp_path / "seg", first_run.cache)
    assert not Path(str(seg.segmenter.backbone_init)).exists()
    inherit_for_single_stage(seg, "segmenter", overrides={"stage", "segmenter.pseudo_dir"})
    assert seg.segmenter.backbone_init == str(classifier)
    assert seg.data.source.generator.num_train == 48
