"""The pipeline: classifier → CAMs → seed evaluation → pseudo masks (CRF, or IRN with ``pseudo.mode=irn``:
``stages/irn.py``) → segmenter (trained on the pseudo masks, evaluated on val without and with CRF), each
stage in its own folder under ``run_dir`` with a manifest (written last).

Running again in the same ``run_dir`` skips the stages that are complete *and were made with the current
settings* (their fingerprint, :mod:`vwl_lightning.stages.identity`) and resumes the one that was interrupted;
a stage made with other settings is refused with one line naming the keys, or redone with
``recompute=true`` / ``recompute=[stage,...]`` (and so is every stage after it). ``stage=<name>`` runs one
stage alone, reading the folder of the stage before it (``cam.classifier_dir``, ``seeds.cam_dir``,
``pseudo.cam_dir``, ``segmenter.pseudo_dir``) and taking the data settings recorded there.

Before anything runs, :func:`~vwl_lightning.stages.config_checks.validate_config` checks the values of the
keys the stages read, and (before the classifier) every mask of the used splits is checked once per data set
(:func:`~vwl_lightning.data.check_layout.check_masks_before_training`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from vwl_lightning.cam.files import cam_path, cams_to_label, load_cam_file
from vwl_lightning.data.label_png import read_label_png
from vwl_lightning.data.source import ResolvedData, resolve_data
from vwl_lightning.errors import ConfigError, DataError
from vwl_lightning.evaluation.reports import TIMINGS, write_results
from vwl_lightning.stages.config_checks import validate_config
from vwl_lightning.stages.evaluate_seeds import evaluate_seeds, sweep_scores
from vwl_lightning.stages.identity import (
    check_stage_folder,
    classifier_of_pseudo,
    inherit_data_settings,
    is_current,
    record_in_manifest,
    stage_identity,
)
from vwl_lightning.tracking.pictures import CAM_GRID, write_cam_grid
from vwl_lightning.tracking.wandb_runs import finish_active_run, log_cam_grid, track_stage
from vwl_lightning.utils.distributed import barrier, is_main, is_sharded, on_zero, start_ranks
from vwl_lightning.utils.io import read_json, write_json_atomic
from vwl_lightning.utils.manifest import read_manifest, write_manifest

log = logging.getLogger(__name__)


def run_classifier(cfg: DictConfig, data: ResolvedData) -> dict[str, Any]:
    from vwl_lightning.stages.train_classifier import train_classifier

    checkpoint = train_classifier(cfg)
    print(f"classifier checkpoint: {checkpoint}")
    return {"checkpoint": str(checkpoint)}


def run_cams(cfg: DictConfig, data: ResolvedData) -> dict[str, Any]:
    from vwl_lightning.stages.make_cams import make_cams

    out_dir = make_cams(cfg, data)
    print(f"CAM files: {out_dir}")
    if rank_zero_only.rank == 0 and int(cfg.cam.get("overlay_images", 0)) > 0:
        grid_path = out_dir / CAM_GRID
        if not grid_path.is_file():
            write_cam_grid(out_dir, data, str(cfg.cam.split), int(cfg.cam.overlay_images), float(cfg.seeds.bg_score),
                           grid_path)
            print(f"CAM overlays: {grid_path}")
        log_cam_grid(cfg, out_dir, grid_path)
    return {"cam_dir": str(out_dir)}


def run_seeds(cfg: DictConfig, data: ResolvedData) -> dict[str, Any]:
    s = cfg.seeds
    out_dir = Path(str(s.out_dir))
    done = read_manifest(out_dir)
    if done is not None:
        return done["metrics"]
    metrics = evaluate_seeds(s.cam_dir, data.layout, s.split, out_dir, class_names=list(data.meta.class_names),
                             bg_scores=sweep_scores(s.sweep), configured_score=float(s.bg_score),
                             dataset=data.meta.name, progress=bool(cfg.trainer.enable_progress_bar))
    summary = {k: metrics[k] for k in ("best_bg_score", "best_miou", "miou_at_configured", "best_at_sweep_edge")
               if k in metrics}
    summary["configured_bg_score"] = float(s.bg_score)
    if not is_main():  # DDP: the same numbers on every rank; rank 0 writes and reports them
        return summary
    write_manifest(out_dir, "seeds", cam_dir=str(s.cam_dir), split=s.split, metrics=summary)
    track_stage(cfg, "seeds", out_dir, metrics, data, s.split,
                seed=lambda i: cams_to_label(load_cam_file(cam_path(s.cam_dir, i)).high_res,
                                             load_cam_file(cam_path(s.cam_dir, i)).keys, float(s.bg_score)))
    print(f"CAM seeds ({s.split}): mIoU {100 * summary['miou_at_configured']:.2f} % at bg {s.bg_score}, best "
          f"{100 * summary['best_miou']:.2f} % at bg {summary['best_bg_score']:.2f} -> {out_dir / 'metrics.md'}")
    return summary


def run_pseudo(cfg: DictConfig, data: ResolvedData) -> dict[str, Any]:
    from vwl_lightning.pseudo.dense_crf import crf_params_from_config
    from vwl_lightning.stages.make_pseudo_masks import make_pseudo_labels

    p = cfg.pseudo
    out_dir = Path(str(p.out_dir))
    done = read_manifest(out_dir)
    if done is None and str(p.mode) == "irn":
        from vwl_lightning.stages.irn import run_irn

        done = run_irn(cfg, data)
        metrics = done.get("metrics") or {}
        if "miou" in metrics and is_main():
            print(f"pseudo masks (irn, {p.split}): mIoU {100 * metrics['miou']:.2f} % -> {out_dir}")
        report = out_dir / "metrics.json"
        track_stage(cfg, "pseudo", out_dir, read_json(report) if report.is_file() else {}, data, p.split,
                    pseudo=lambda i: read_label_png(Path(done["mask_dir"]) / f"{i}.png"))
    elif done is None:
        params = crf_params_from_config({"preset": str(p.crf_preset), **OmegaConf.to_container(p.crf, resolve=True)},
                                        prefix="pseudo.crf")
        done = make_pseudo_labels(
            p.cam_dir, data.layout, p.split, out_dir, bg_score=float(p.bg_score), crf_params=params,
            mode=str(p.mode), fg_thres=float(p.fg_thres), bg_thres=float(p.bg_thres), gt_prob=float(p.gt_prob),
            num_workers=int(p.num_workers), class_names=list(data.meta.class_names), evaluate=bool(p.evaluate),
            dataset=data.meta.name, progress=bool(cfg.trainer.enable_progress_bar))
        metrics = done.get("metrics") or {}
        if "miou" in metrics and is_main():
            print(f"pseudo masks ({p.split}): mIoU {100 * metrics['miou']:.2f} % -> {out_dir}")
        report = out_dir / "metrics.json"
        track_stage(cfg, "pseudo", out_dir, read_json(report) if report.is_file() else {}, data, p.split,
                    pseudo=lambda i: read_label_png(Path(done["mask_dir"]) / f"{i}.png"))
    return {"mask_dir": done["mask_dir"], "metrics": done.get("metrics")}


def run_segmenter(cfg: DictConfig, data: ResolvedData) -> dict[str, Any]:
    from vwl_lightning.stages.train_segmenter import train_segmenter

    finished = is_complete("segmenter", cfg)
    summary = train_segmenter(cfg, data)
    if not finished:
        seg_dir = stage_dir("segmenter", cfg)
        for variant in ("eval", "eval_crf"):
            report = seg_dir / variant / "metrics.json"
            if report.is_file():
                track_stage(cfg, "segmenter", seg_dir, read_json(report), data, str(cfg.segmenter.eval.split),
                            prefix=f"segmenter/{variant}", finish=variant == "eval_crf" or not
                            (seg_dir / "eval_crf" / "metrics.json").is_file(),
                            prediction=lambda i, v=variant: read_label_png(seg_dir / v / "predictions" / f"{i}.png"))
    finish_active_run()
    crf = summary.get("miou_crf")
    print(f"segmenter ({cfg.segmenter.eval.split}): mIoU {100 * summary['miou']:.2f} %"
          + (f", with CRF {100 * crf:.2f} %" if crf is not None else "") + f" -> {summary['stage_dir']}")
    return summary


STAGES: dict[str, Callable[[DictConfig, ResolvedData], dict[str, Any]]] = {
    "classifier": run_classifier,
    "cams": run_cams,
    "seeds": run_seeds,
    "pseudo": run_pseudo,
    "segmenter": run_segmenter,
}
PIPELINE = ("classifier", "cams", "seeds", "pseudo", "segmenter")
SHARDED_STAGES = ("seeds", "pseudo")  # no Lightning trainer: under DDP every rank takes a share of the images


def record_time(run_dir: Path, stage: str, seconds: float) -> None:
    path = run_dir / TIMINGS
    timings = read_json(path) if path.is_file() else {}
    timings[stage] = round(seconds, 2)
    write_json_atomic(path, timings)


def forced_stages(recompute: Any, names: tuple[str, ...]) -> set[str]:
    """Stages that ``recompute=[...]`` names, and every stage after the first of them in ``names``."""
    if isinstance(recompute, bool) or recompute is None:
        return set()
    listed = [str(recompute)] if isinstance(recompute, str) else [str(n) for n in recompute]
    unknown = [n for n in listed if n not in STAGES]
    if unknown:
        raise ConfigError(f"recompute={listed}: unknown stage(s) {unknown}; use true or names among "
                          f"{', '.join(STAGES)}")
    hits = [names.index(n) for n in listed if n in names]
    return set(names[min(hits):]) if hits else set()


def check_data_once(cfg: DictConfig, data: ResolvedData, names: tuple[str, ...]) -> None:
    """Before the classifier trains: the cheap mask check of the splits the stages use (cached per data set)."""
    from vwl_lightning.data.check_layout import check_masks_before_training

    if "classifier" not in names or not bool(cfg.get("check_masks", True)) or rank_zero_only.rank != 0:
        return
    if is_current(stage_dir("classifier", cfg), stage_identity("classifier", cfg)):
        return
    splits = [str(cfg.data.train_split), str(cfg.data.val_split), str(cfg.data.seed_split)]
    checked = check_masks_before_training(data.layout, data.meta.num_classes, splits,
                                          cache_dir=cfg.paths.get("cache_dir"))
    if checked:
        log.info("data: %d masks of %s checked (values, sizes)", checked, ", ".join(dict.fromkeys(splits)))


def _same_path(a: Any, b: Any) -> bool:
    return Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()


def check_settings(cfg: DictConfig, names: tuple[str, ...]) -> None:
    """Refuse, before any work, settings that cannot work together (one line naming the key):

    * a stage's input folder that neither exists nor is made earlier in this run (``cam.classifier_dir`` /
      ``cam.checkpoint``, ``seeds.cam_dir``, ``pseudo.cam_dir``, ``segmenter.pseudo_dir``,
      ``segmenter.backbone_init``);
    * ``segmenter.backbone_init`` = the classifier this run trains, with a segmenter trunk (``name``,
      ``model_kwargs``) other than the classifier's (``model.backbone``): the copy would fail after training.
    """
    made = {"classifier": Path(str(cfg.run_dir)) / "classifier", "cams": Path(str(cfg.cam.out_dir)),
            "pseudo": Path(str(cfg.pseudo.out_dir))}

    def needs(stage: str, key: str, value: Any, producer: str, hint: str) -> None:
        if stage not in names or value is None:
            return
        path = Path(str(value)).expanduser()
        later = producer in names and names.index(producer) < names.index(stage) and _same_path(path, made[producer])
        if not later and not (path.is_file() or (path / "manifest.json").is_file()
                              or (path.is_dir() and producer in ("cams", "pseudo") and any(path.iterdir()))):
            raise DataError(f"{key}={path}: no completed {producer} stage there and this run does not make it "
                            f"({hint})")

    c = cfg.cam
    if "cams" in names and c.get("checkpoint") and not Path(str(c.checkpoint)).expanduser().is_file():
        raise DataError(f"cam.checkpoint={c.checkpoint}: classifier checkpoint not found")
    if not c.get("checkpoint"):
        needs("cams", "cam.classifier_dir", c.classifier_dir, "classifier", "train it first or set cam.checkpoint")
    needs("seeds", "seeds.cam_dir", cfg.seeds.cam_dir, "cams", "point it at a CAM folder")
    needs("pseudo", "pseudo.cam_dir", cfg.pseudo.cam_dir, "cams", "point it at a CAM folder")
    needs("segmenter", "segmenter.pseudo_dir", cfg.segmenter.pseudo_dir, "pseudo",
          "point it at a pseudo stage folder or a folder of <image id>.png masks")
    init = cfg.segmenter.get("backbone_init")
    needs("segmenter", "segmenter.backbone_init", init, "classifier",
          "point it at a classifier folder or checkpoint, or set segmenter.backbone_init=null")
    if "segmenter" in names and init and "classifier" in names and _same_path(init, made["classifier"]):
        seg = OmegaConf.to_container(cfg.segmenter.backbone, resolve=True)
        own = OmegaConf.to_container(cfg.model.backbone, resolve=True)
        for key in ("name", "model_kwargs"):
            a, b = seg.get(key), own.get(key)
            if (a or None) != (b or None):
                raise ConfigError(f"segmenter.backbone.{key}={a} differs from model.backbone.{key}={b}, but "
                                  f"segmenter.backbone_init copies this run's classifier trunk; make them equal "
                                  f"or set segmenter.backbone_init=null")


def run_stages(cfg: DictConfig, names: tuple[str, ...]) -> dict[str, Any]:
    """Run ``names`` in order; return each stage's summary, with its fingerprint under ``fingerprints``."""
    check_settings(cfg, names)
    start_ranks(OmegaConf.to_container(cfg.trainer, resolve=True))  # DDP: every rank runs every stage from here
    recompute = cfg.get("recompute", False)
    recompute = OmegaConf.to_container(recompute) if OmegaConf.is_list(recompute) else recompute
    forced = forced_stages(recompute, names)
    data = resolve_data(OmegaConf.to_container(cfg.data.source, resolve=True))
    run_dir = Path(str(cfg.run_dir))
    run_dir.mkdir(parents=True, exist_ok=True)
    check_data_once(cfg, data, names)
    results: dict[str, Any] = {"fingerprints": {}}
    for name in names:
        identity = stage_identity(name, cfg)
        folder = stage_dir(name, cfg)
        if name in SHARDED_STAGES and rank_zero_only.rank != 0 and not is_sharded():
            # a rank launched later (by the segmenter's trainer) finds these stages done by rank 0 before
            # the launch: wait for the manifest under this fingerprint (a stale one about to be cleared
            # does not count)
            wait_for_manifest(name, cfg, identity)
        if is_sharded():  # DDP: rank 0 checks and prepares the folder, then every rank goes on with its verdict
            state = on_zero(partial(check_stage_folder, name, folder, identity, recompute, force=name in forced))
        else:
            state = check_stage_folder(name, folder, identity, recompute, force=name in forced,
                                       write=rank_zero_only.rank == 0)
        finished = state == "match" and is_complete(name, cfg)
        log.info("stage %s: %s (fingerprint %s, run dir %s)", name,
                 "complete with these settings, skipping" if finished else "starting", identity["fingerprint"],
                 run_dir)
        start = time.perf_counter()
        results[name] = STAGES[name](cfg, data)
        if rank_zero_only.rank == 0:
            record_in_manifest(folder, identity)
            if not finished:  # a skipped stage keeps the time of the run that did it
                record_time(run_dir, name, time.perf_counter() - start)
        barrier()  # DDP: the next stage reads this one's manifest on every rank
        results["fingerprints"][name] = identity["fingerprint"]
    return results


def wait_for_manifest(name: str, cfg: DictConfig, identity: dict[str, Any] | None = None) -> None:
    """Poll (on a shared file system) until rank 0 has completed stage ``name`` (with ``identity``)."""
    timeout = float(cfg.get("rank_wait_timeout_s", 86400))
    deadline = time.monotonic() + timeout
    while not (is_current(stage_dir(name, cfg), identity) if identity is not None else is_complete(name, cfg)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"stage {name}: rank {rank_zero_only.rank} waited {timeout:.0f} s for rank 0 to "
                               f"write {stage_dir(name, cfg) / 'manifest.json'} (rank_wait_timeout_s)")
        time.sleep(2.0)


def stage_dir(name: str, cfg: DictConfig) -> Path:
    """The folder a stage writes (its manifest marks it complete)."""
    folders = {"classifier": Path(str(cfg.run_dir)) / "classifier", "cams": Path(str(cfg.cam.out_dir)),
               "seeds": Path(str(cfg.seeds.out_dir)), "pseudo": Path(str(cfg.pseudo.out_dir)),
               "segmenter": Path(str(cfg.segmenter.out_dir))}
    return folders[name]


def is_complete(name: str, cfg: DictConfig) -> bool:
    return read_manifest(stage_dir(name, cfg)) is not None


# the input folder of a stage run alone, whose recorded data settings it takes
ALONE_INPUT = {"cams": "cam.classifier_dir", "seeds": "seeds.cam_dir", "pseudo": "pseudo.cam_dir",
               "segmenter": "segmenter.pseudo_dir"}


def command_line_overrides() -> set[str]:
    """The keys set on the command line (Hydra's task overrides); empty outside a Hydra run."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set()
    keys = set()
    for override in HydraConfig.get().overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        keys.add(key)
    return keys


def inherit_for_single_stage(cfg: DictConfig, stage: str, overrides: set[str]) -> None:
    """A stage run alone takes the ``data.*`` settings recorded in its input folder (a contradicting
    command-line override is refused); the segmenter without a classifier folder of its own takes the one
    behind its pseudo masks for ``backbone_init``."""
    source = OmegaConf.select(cfg, ALONE_INPUT[stage], default=None)
    if stage == "cams" and cfg.cam.get("checkpoint"):
        source = None
    if source:
        inherit_data_settings(cfg, str(source), overrides)
    if stage == "segmenter" and Path(str(cfg.segmenter.pseudo_dir)).is_dir():
        init = cfg.segmenter.get("backbone_init")
        if init and not Path(str(init)).exists() and "segmenter.backbone_init" not in overrides:
            found = classifier_of_pseudo(str(cfg.segmenter.pseudo_dir))
            if found is None:
                raise ConfigError(f"segmenter.backbone_init={init}: no classifier there, and none recorded behind "
                                  f"segmenter.pseudo_dir={cfg.segmenter.pseudo_dir}; set segmenter.backbone_init to "
                                  f"a classifier folder, or segmenter.backbone_init=null to train from scratch")
            log.info("segmenter: backbone_init from the classifier behind the pseudo masks: %s", found)
            OmegaConf.update(cfg, "segmenter.backbone_init", str(found), force_add=True)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Entry for ``stage=pipeline`` or one stage name."""
    validate_config(cfg)
    stage = str(cfg.stage)
    if stage == "pipeline":
        names = tuple(str(n) for n in cfg.get("pipeline", PIPELINE))
        unknown = [n for n in names if n not in STAGES]
        if unknown or not names:
            raise ConfigError(f"pipeline must list stages among {', '.join(STAGES)}; got {list(names)}")
        results = run_stages(cfg, names)
        if rank_zero_only.rank != 0:
            return {}
        headline = write_results(Path(str(cfg.run_dir)), results, names, PIPELINE)
        report = Path(str(cfg.run_dir)) / "results.md"
        print(report.read_text())
        print(f"results: {report}")
        return headline
    if stage not in STAGES:
        raise ConfigError(f"stage must be pipeline or one of {', '.join(STAGES)}; got {stage!r}")
    if stage in ALONE_INPUT:
        inherit_for_single_stage(cfg, stage, command_line_overrides())
    return run_stages(cfg, (stage,))[stage]
