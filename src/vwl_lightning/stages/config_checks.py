"""Start-up check of the config the pipeline reads: type and range, one line per bad value.

Run by :func:`vwl_lightning.stages.pipeline.run` before any data is touched. Two kinds of check:

* every ``_target_`` node (the classifier, its backbone, pooling, codebook, head, optimiser and schedule, and
  the other stages' networks) is checked by its own class, without building it
  (:func:`~vwl_lightning.utils.instantiate.check_node`: the class's ``check_arguments``; an optimiser is
  built over a dummy parameter, so torch's own checks run). The class holds the check and the default; the
  line names the key (``model.codebook.tau=0: expected a number > 0``);
* the settings that are no object's arguments (data, stage schedules, CAM, seed and pseudo-mask settings)
  against :data:`RULES`. Hydra hands a command-line value over as whatever it parses to (``=abc`` is the
  string ``"abc"``, ``=2.5`` a float), so each rule states the kind it needs: ``int`` (an integer, not a
  bool, not ``2.5``), ``float`` (any real number, not a bool or string), ``choice``, or a list of positive
  numbers. A key absent from the config (another model or data kind) is not checked.

Schedules are stage settings (``model.max_epochs``, ``segmenter.max_steps`` / ``max_epochs``,
``irn.max_epochs``): a ``trainer.max_epochs`` or ``trainer.max_steps`` is refused naming them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vwl_lightning.errors import ConfigError

_MISSING = object()


@dataclass(frozen=True)
class Rule:
    """``key`` must be of ``kind`` (``int`` | ``float`` | ``choice`` | ``positive_list`` | ``int_list``) within
    ``[low, high]`` (None: unbounded) or among ``choices``; ``low_open``: strictly above ``low``."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[str, ...] = ()
    nullable: bool = False


RULES: tuple[Rule, ...] = (
    Rule("seed", "int"),
    Rule("data.batch_size", "int", 1), Rule("data.eval_batch_size", "int", 1), Rule("data.num_workers", "int", 0),
    Rule("data.eval_size", "int", 1),
    Rule("data.source.generator.num_train", "int", 1), Rule("data.source.generator.num_val", "int", 1),
    Rule("data.source.generator.image_size", "int", 8), Rule("data.source.generator.num_classes", "int", 1),
    Rule("data.source.generator.seed", "int"), Rule("data.source.generator.cooccurrence", "float", 0, 1),
    Rule("model.max_epochs", "int", 1), Rule("model.checkpoint_every_n_steps", "int", 1, nullable=True),
    Rule("cam.scales", "positive_list"), Rule("cam.batch_size", "int", 1), Rule("cam.num_workers", "int", 0),
    Rule("cam.flip_fusion", "choice", choices=("max", "sum")),
    Rule("cam.dtype", "choice", choices=("float16", "float32")),
    Rule("seeds.bg_score", "float", 0, 1), Rule("seeds.sweep.start", "float", 0, 1),
    Rule("seeds.sweep.stop", "float", 0, 1), Rule("seeds.sweep.step", "float", 0, 1, low_open=True),
    Rule("pseudo.mode", "choice", choices=("crf", "confident", "irn")), Rule("pseudo.bg_score", "float", 0, 1),
    Rule("pseudo.fg_thres", "float", 0, 1), Rule("pseudo.bg_thres", "float", 0, 1),
    Rule("pseudo.gt_prob", "float", 0, 1), Rule("pseudo.num_workers", "int", 0),
    Rule("segmenter.batch_size", "int", 1), Rule("segmenter.max_epochs", "int", -1),
    Rule("segmenter.max_steps", "int", -1), Rule("segmenter.num_workers", "int", 0),
    Rule("segmenter.checkpoint_every_n_steps", "int", 1, nullable=True),
    Rule("segmenter.eval.scales", "positive_list"),
    Rule("segmenter.eval.batch_size", "int", 1), Rule("segmenter.eval.crf_workers", "int", 0),
    Rule("rank_wait_timeout_s", "float", 0, low_open=True),
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) and math.isfinite(float(value))


def _range_text(rule: Rule) -> str:
    low = "" if rule.low is None else (f"> {rule.low:g}" if rule.low_open else f">= {rule.low:g}")
    high = "" if rule.high is None else f"<= {rule.high:g}"
    return " and ".join(t for t in (low, high) if t)


def _in_range(rule: Rule, value: float) -> bool:
    if rule.low is not None and (value <= rule.low if rule.low_open else value < rule.low):
        return False
    return rule.high is None or value <= rule.high


def check_value(rule: Rule, value: Any) -> str | None:
    """Why ``value`` breaks ``rule`` (one line naming the key), or None."""
    shown = repr(value)
    if value is None and rule.nullable:
        return None
    if rule.kind == "choice":
        return None if str(value) in rule.choices and isinstance(value, str) else (
            f"{rule.key}={shown}: expected one of {', '.join(rule.choices)}")
    if rule.kind in ("positive_list", "int_list"):
        items = value if isinstance(value, Sequence) and not isinstance(value, str) else None
        need_int = rule.kind == "int_list"
        ok = items is not None and len(items) > 0 and all(
            (_is_int(v) if need_int else _is_real(v)) and (v >= (rule.low or 0) if need_int else v > 0) for v in items)
        what = f"integers >= {rule.low:g}" if need_int else "positive numbers"
        return None if ok else f"{rule.key}={shown}: expected a non-empty list of {what}"
    if rule.kind == "int":
        if not _is_int(value):
            return f"{rule.key}={shown}: expected an integer" + (f" {_range_text(rule)}" if _range_text(rule) else "")
    elif not _is_real(value):
        return f"{rule.key}={shown}: expected a number" + (f" {_range_text(rule)}" if _range_text(rule) else "")
    if not _in_range(rule, float(value)):
        return f"{rule.key}={shown}: expected a value {_range_text(rule)}"
    return None


# trainer keys that would set a schedule: the stage settings that do
SCHEDULE_KEYS = {"max_epochs": "model.max_epochs, segmenter.max_epochs and irn.max_epochs",
                 "max_steps": "segmenter.max_steps", "min_epochs": "model.max_epochs",
                 "min_steps": "segmenter.max_steps", "max_time": "the stage schedules (model.max_epochs, ...)"}


def check_schedule_keys(cfg: DictConfig) -> None:
    """``trainer.max_epochs`` and the like set no stage's schedule: refused, naming the keys that do."""
    trainer = OmegaConf.select(cfg, "trainer", default=None)
    for key, where in SCHEDULE_KEYS.items():
        if trainer is not None and key in trainer and trainer.get(key) is not None:
            raise ConfigError(f"trainer.{key}={trainer.get(key)}: each stage has its own schedule; set {where} "
                              "instead")


def validate_config(cfg: DictConfig, rules: Sequence[Rule] = RULES) -> None:
    """ConfigError on the first bad value: a ``_target_`` node its class refuses, a trainer schedule key, or a
    key of ``rules`` whose value is of the wrong kind or out of range."""
    from vwl_lightning.stages.irn import check_irn
    from vwl_lightning.stages.train_classifier import check_classifier
    from vwl_lightning.stages.train_segmenter import check_segmenter

    check_schedule_keys(cfg)
    check_classifier(cfg)
    if OmegaConf.select(cfg, "segmenter", default=None) is not None:
        check_segmenter(cfg)
    if OmegaConf.select(cfg, "pseudo.mode", default=None) == "irn":
        check_irn(cfg)
    for rule in rules:
        try:
            raw = OmegaConf.select(cfg, rule.key, default=_MISSING, throw_on_resolution_failure=True)
        except Exception as exc:  # noqa: BLE001 - an interpolation that cannot resolve: name the key
            raise ConfigError(f"{rule.key}: cannot be resolved ({type(exc).__name__}: {exc})") from None
        if raw is _MISSING:
            continue
        value = OmegaConf.to_container(raw, resolve=True) if OmegaConf.is_config(raw) else raw
        problem = check_value(rule, value)
        if problem:
            raise ConfigError(problem)
    sweep = OmegaConf.select(cfg, "seeds.sweep", default=None)
    if sweep is not None and float(sweep.stop) < float(sweep.start):
        raise ConfigError(f"seeds.sweep: stop {sweep.stop} is below start {sweep.start}")
    mode = OmegaConf.select(cfg, "pseudo.mode", default=None)
    if mode == "confident" and not float(cfg.pseudo.bg_thres) < float(cfg.pseudo.fg_thres):
        raise ConfigError(f"pseudo.bg_thres={cfg.pseudo.bg_thres} must be below pseudo.fg_thres={cfg.pseudo.fg_thres}")
    irn_scale = OmegaConf.select(cfg, "irn.backbone.input_scale", default=1.0)
    if mode == "irn" and irn_scale != 1.0:
        raise ConfigError(f"irn.backbone.input_scale={irn_scale}: IRNet reads its trunk's levels at the image's own "
                          "size; expected 1.0 (irn=synthetic follows model.backbone: use irn=efficientnet_lite0 or "
                          "set irn.backbone.input_scale=1.0)")
