"""Stage identity: what determines a stage's output, recorded before it runs and checked before it is reused.

A stage's **fingerprint** is the first 16 hex digits of SHA-256 over the JSON (sorted keys) of

* ``settings``: the stage's whole resolved config groups (:data:`STAGE_ROOTS`: the data set, the stage's
  own group, the seed and the trainer where it trains) minus the explicit list :data:`NOT_IDENTITY` of keys
  that change where, how fast or how it is shown, not what (paths, worker counts, checkpoint cadence,
  progress display, the devices a fixed global batch is spread over), and
* ``upstream``: the fingerprint of every stage output it consumes (:data:`UPSTREAM`, found from the input
  folder keys of :data:`INPUT_KEYS`); a checkpoint file given directly is named by its SHA-256, a folder
  without a record by its resolved path.

``<stage_dir>/identity.json`` holds ``{stage, fingerprint, settings, upstream}``; the pipeline writes it
**before** the stage starts and copies the three fields into the stage's ``manifest.json`` when it ends.
A stage counts as complete only when its manifest is complete *and* its identity matches the current one.
When the folder holds a stage made with other settings, :func:`check_stage_folder` decides
(README "Run identity"):

* the stage's own settings differ: refuse with one line naming the differing keys with both values,
  unless ``recompute`` is ``true`` or lists the stage; then the folder is emptied and the stage redone;
* only an upstream fingerprint differs (the upstream was redone): the stage's outputs are stale by
  construction, so the folder is emptied and the stage redone (logged), whatever ``recompute`` says.

Either way a stage never resumes on top of outputs made under other settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vwl_lightning.errors import ConfigError, DataError
from vwl_lightning.utils.io import read_json, write_json_atomic
from vwl_lightning.utils.manifest import read_manifest

log = logging.getLogger(__name__)

IDENTITY = "identity.json"
FINGERPRINT_VERSION = 2  # 2: whole config groups minus NOT_IDENTITY (1: hand-kept key lists)

# the config groups each stage's output depends on: the whole resolved group, minus NOT_IDENTITY
STAGE_ROOTS: dict[str, tuple[str, ...]] = {
    "classifier": ("data", "seed", "model", "trainer"),
    "cams": ("data", "cam"),
    "seeds": ("data", "seeds"),
    "pseudo": ("data", "pseudo"),
    "segmenter": ("data", "seed", "segmenter", "trainer"),
}

# read by a stage only in one of its modes: stage -> (mode key, mode value, extra roots); pseudo.mode=irn trains
# IRN's boundary branch and walks (stages/irn.py), so every IRN setting determines its masks
MODE_KEYS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "pseudo": ("pseudo.mode", "irn", ("irn",)),
}

# keys under STAGE_ROOTS that say where, how fast or how it is shown, not what is computed: paths (the inputs
# are named by their upstream fingerprints instead), worker and batch counts of inference, checkpoint cadence,
# logging and progress display, and the hardware a run is spread over (the global batch is fixed)
NOT_IDENTITY = (
    "data.source.cache_dir", "data.num_workers", "data.pin_memory", "data.eval_batch_size",
    "model.checkpoint_every_n_steps", "model.backbone.data_norm",
    "trainer.accelerator", "trainer.devices", "trainer.num_nodes", "trainer.strategy", "trainer.log_every_n_steps",
    "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.check_val_every_n_epoch",
    "trainer.profiler",
    "cam.classifier_dir", "cam.checkpoint", "cam.out_dir", "cam.batch_size", "cam.num_workers",
    "cam.channels_last", "cam.overlay_images",
    "seeds.cam_dir", "seeds.out_dir",
    "pseudo.cam_dir", "pseudo.out_dir", "pseudo.num_workers",
    "segmenter.pseudo_dir", "segmenter.out_dir", "segmenter.backbone_init", "segmenter.num_workers",
    "segmenter.checkpoint_every_n_steps", "segmenter.eval.crf_workers",
    "irn.cam_dir", "irn.out_dir", "irn.checkpoint", "irn.classifier_dir", "irn.num_workers", "irn.seeds.num_workers",
)

# the folders (or files) a stage consumes, by upstream stage name: config key of the folder
INPUT_KEYS: dict[str, dict[str, str]] = {
    "classifier": {},
    "cams": {"classifier": "cam.classifier_dir"},
    "seeds": {"cams": "seeds.cam_dir"},
    "pseudo": {"cams": "pseudo.cam_dir", "classifier": "irn.classifier_dir"},
    "segmenter": {"pseudo": "segmenter.pseudo_dir", "classifier": "segmenter.backbone_init"},
}

SHOWN_DIFFERENCES = 3


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists stay values)."""
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        if not tree and prefix:
            out[prefix[:-1]] = {}
        return out
    return {prefix[:-1]: tree}


def _excluded(key: str) -> bool:
    return any(key == skip or key.startswith(skip + ".") for skip in NOT_IDENTITY)


def stage_settings(stage: str, cfg: DictConfig) -> dict[str, Any]:
    """The resolved values under :data:`STAGE_ROOTS` ``[stage]`` (and the roots of the stage's current mode),
    flattened to dotted keys, minus :data:`NOT_IDENTITY`."""
    roots = STAGE_ROOTS[stage]
    if stage in MODE_KEYS:
        mode_key, mode, extra = MODE_KEYS[stage]
        if str(OmegaConf.select(cfg, mode_key, default=None)) == mode:
            roots = (*roots, *extra)
    settings: dict[str, Any] = {}
    for root in roots:
        value = OmegaConf.select(cfg, root, default=None)
        if isinstance(value, DictConfig) or OmegaConf.is_list(value):
            value = OmegaConf.to_container(value, resolve=True)
        for leaf, leaf_value in flatten({root: value}).items():
            if not _excluded(leaf):
                settings[leaf] = leaf_value
    return settings


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_identity(folder: str | Path) -> dict[str, Any] | None:
    """``<folder>/identity.json`` as a dict, or None when there is none."""
    path = Path(folder) / IDENTITY
    if not path.is_file():
        return None
    blob = read_json(path)
    if not isinstance(blob, dict) or "fingerprint" not in blob:
        raise DataError(f"{path}: not a stage identity (expected a JSON object with 'fingerprint')")
    return blob


def output_fingerprint(location: str | Path) -> str:
    """The fingerprint of a consumed stage output: a stage folder's recorded fingerprint (complete stages
    only), ``sha256:<digest>`` for a file, ``path:<resolved>`` for a folder with no record."""
    path = Path(str(location)).expanduser()
    if path.is_file():
        return f"sha256:{sha256_file(path)}"
    recorded = read_identity(path) if path.is_dir() else None
    if recorded is not None and read_manifest(path) is not None:
        return str(recorded["fingerprint"])
    return f"path:{path.resolve()}"


def stage_upstream(stage: str, cfg: DictConfig) -> dict[str, dict[str, str]]:
    """``{upstream stage: {"location", "fingerprint"}}`` of what ``stage`` consumes under ``cfg``."""
    upstream: dict[str, dict[str, str]] = {}
    for name, key in INPUT_KEYS[stage].items():
        value = OmegaConf.select(cfg, key, default=None)
        if stage == "cams" and cfg.cam.get("checkpoint"):
            value = cfg.cam.checkpoint
        if stage == "pseudo" and name == "classifier" and not (
                str(cfg.pseudo.mode) == "irn" and str(OmegaConf.select(cfg, "irn.backbone_source")) == "classifier"):
            continue  # IRN's frozen trunk is the classifier's only with irn.backbone_source=classifier
        if value is None or str(value) in ("", "None", "null"):
            continue
        upstream[name] = {"location": str(value), "fingerprint": output_fingerprint(value)}
    return upstream


def fingerprint_of(stage: str, settings: Mapping[str, Any], upstream: Mapping[str, Mapping[str, str]]) -> str:
    blob = {"version": FINGERPRINT_VERSION, "stage": stage, "settings": settings,
            "upstream": {k: v["fingerprint"] for k, v in upstream.items()}}
    text = json.dumps(blob, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def stage_identity(stage: str, cfg: DictConfig) -> dict[str, Any]:
    """``{stage, fingerprint, settings, upstream}`` of ``stage`` under ``cfg`` (module docstring)."""
    settings = stage_settings(stage, cfg)
    upstream = stage_upstream(stage, cfg)
    return {"stage": stage, "version": FINGERPRINT_VERSION, "fingerprint": fingerprint_of(stage, settings, upstream),
            "settings": settings, "upstream": upstream}


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``key: old -> new`` for every key whose value differs (a missing key shows as ``<unset>``)."""
    lines = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, "<unset>"), new.get(key, "<unset>")
        if before != after:
            lines.append(f"{key}={json.dumps(before, default=str)} (now {json.dumps(after, default=str)})")
    return lines


def recompute_requested(recompute: Any, stage: str) -> bool:
    """``recompute``: false | true | a stage name | a list of stage names."""
    if isinstance(recompute, bool):
        return recompute
    if recompute is None:
        return False
    if isinstance(recompute, str):
        return recompute == stage
    if isinstance(recompute, Sequence) or OmegaConf.is_list(recompute):
        return stage in [str(s) for s in recompute]
    raise ConfigError(f"recompute must be true, false or a list of stage names, got {recompute!r}")


def _has_outputs(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def clear_stage_folder(folder: Path) -> None:
    """Remove everything in ``folder`` (the stage is redone from nothing)."""
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def check_stage_folder(stage: str, folder: Path, identity: Mapping[str, Any], recompute: Any,
                       force: bool = False, write: bool = True) -> str:
    """Compare ``folder``'s recorded identity with ``identity`` and prepare it (module docstring).

    Returns ``"match"`` (reuse or resume), ``"fresh"`` (empty folder) or ``"redo"`` (cleared here);
    raises ConfigError naming the differing keys when the stage's own settings differ and no recompute
    was asked for. With ``write`` the current identity is recorded in ``folder`` before returning.
    """
    recorded = read_identity(folder) if folder.is_dir() else None
    state = "fresh"
    if force and _has_outputs(folder):
        log.warning("stage %s: recompute requested, clearing %s", stage, folder)
        state = "redo"
    elif recorded is not None and recorded.get("fingerprint") == identity["fingerprint"]:
        state = "match"
    elif recorded is not None and recorded.get("version") != FINGERPRINT_VERSION and not recompute_requested(
            recompute, stage):
        raise ConfigError(f"{folder}: stage {stage} there was recorded by an older vwl_lightning (fingerprint "
                          f"version {recorded.get('version', 1)}, now {FINGERPRINT_VERSION}); use a new run folder, "
                          f"or add recompute=[{stage}] to redo it here")
    elif recorded is not None:
        own = differences(recorded.get("settings", {}), identity["settings"])
        if own and not recompute_requested(recompute, stage):
            shown = "; ".join(own[:SHOWN_DIFFERENCES]) + (f"; and {len(own) - SHOWN_DIFFERENCES} more"
                                                          if len(own) > SHOWN_DIFFERENCES else "")
            raise ConfigError(
                f"{folder}: stage {stage} there was made with {shown}; use a new run folder (the default "
                f"run_dir differs per override set; or set run_dir=...), or add recompute=true (or "
                f"recompute=[{stage}]) to redo {stage} and the stages after it")
        why = "settings changed: " + "; ".join(own) if own else "an upstream stage was redone: " + "; ".join(
            differences({k: v.get("fingerprint") for k, v in recorded.get("upstream", {}).items()},
                        {k: v["fingerprint"] for k, v in identity["upstream"].items()}))
        log.warning("stage %s: %s; clearing %s and redoing it", stage, why, folder)
        state = "redo"
    elif _has_outputs(folder):
        if not recompute_requested(recompute, stage):
            raise ConfigError(f"{folder}: holds stage {stage} outputs with no recorded settings ({IDENTITY} "
                              f"missing); use a new run folder, or add recompute=[{stage}] to redo it here")
        state = "redo"
    if write:
        if state == "redo":
            clear_stage_folder(folder)
        if state != "match":
            write_json_atomic(folder / IDENTITY, {**identity, "status": "started"})
    return state


def record_in_manifest(folder: Path, identity: Mapping[str, Any]) -> None:
    """Copy ``fingerprint``, ``settings`` and ``upstream`` into the stage's complete manifest."""
    path = folder / "manifest.json"
    manifest = read_manifest(folder)
    if manifest is None or manifest.get("fingerprint") == identity["fingerprint"]:
        return
    manifest.update(fingerprint=identity["fingerprint"], settings=identity["settings"],
                    upstream=identity["upstream"])
    write_json_atomic(path, manifest)


def is_current(folder: Path, identity: Mapping[str, Any]) -> bool:
    """True when ``folder`` holds a complete stage made with ``identity``."""
    recorded = read_identity(folder) if folder.is_dir() else None
    return (recorded is not None and recorded.get("fingerprint") == identity["fingerprint"]
            and read_manifest(folder) is not None)


# ------------------------------------------------------------------------ single stages inherit settings


def recorded_settings(folder: str | Path) -> dict[str, Any] | None:
    """The flattened settings a stage folder was made with: its identity's, else (folders made before
    identities) its manifest's ``config``; None when neither is there."""
    folder = Path(str(folder)).expanduser()
    if not folder.is_dir():
        return None
    recorded = read_identity(folder)
    if recorded is not None:
        return dict(recorded.get("settings", {}))
    manifest = read_manifest(folder)
    if manifest is not None and isinstance(manifest.get("config"), Mapping):
        return {k: v for k, v in flatten(manifest["config"]).items() if not _excluded(k)}
    return None


def _overridden(key: str, overrides: set[str]) -> str | None:
    for override in overrides:
        if key == override or key.startswith(override + ".") or override.startswith(key + "."):
            return override
    return None


def inherit_data_settings(cfg: DictConfig, folder: str | Path, overrides: set[str]) -> list[str]:
    """Set every ``data.*`` key recorded in ``folder`` (the input of a stage run alone) on ``cfg``; a key
    the command line set to another value raises ConfigError naming it. Returns the keys changed."""
    recorded = recorded_settings(folder)
    if recorded is None:
        return []
    changed = []
    for key, value in sorted(recorded.items()):
        if not key.startswith("data.") or _excluded(key):
            continue
        current = OmegaConf.select(cfg, key, default=None)
        if OmegaConf.is_config(current):
            current = OmegaConf.to_container(current, resolve=True)
        if current == value:
            continue
        override = _overridden(key, overrides)
        if override is not None:
            raise ConfigError(f"{key}={json.dumps(current, default=str)} contradicts {folder}, made with "
                              f"{key}={json.dumps(value, default=str)}; drop the override {override}=... or "
                              f"point at a folder made with it")
        OmegaConf.update(cfg, key, value, force_add=True)
        changed.append(key)
    if changed:
        log.info("stage run alone: took %s from %s", ", ".join(changed), folder)
    return changed


def classifier_of_pseudo(pseudo_dir: str | Path) -> Path | None:
    """The classifier folder behind a pseudo-mask folder: pseudo manifest → its CAM folder → the CAM
    manifest's checkpoint → that checkpoint's folder, when it holds a complete classifier stage."""
    pseudo = read_manifest(Path(str(pseudo_dir)))
    if pseudo is None or not pseudo.get("cam_dir"):
        return None
    cams_manifest = Path(str(pseudo["cam_dir"])) / "manifest.json"
    if not cams_manifest.is_file():
        return None
    checkpoint = read_json(cams_manifest).get("checkpoint")
    if not checkpoint:
        return None
    folder = Path(str(checkpoint)).parent
    return folder if read_manifest(folder) is not None else None
