"""Fully connected CRF (Krähenbühl & Koltun) with ``pydensecrf`` for CAM refinement and test-time
post-processing (spec §6 and §7).

Energy: ``E(x) = sum_i U_i(x_i) + sum_{i<j} mu(x_i, x_j) [w_g k_g(p_i, p_j) + w_b k_b(p_i, p_j, I_i, I_j)]``
with Potts ``mu``, ``k_g = exp(-|p_i-p_j|^2 / 2 sxy_g^2)`` (Gaussian, ``compat = w_g``) and
``k_b = exp(-|p_i-p_j|^2 / 2 sxy_b^2 - |I_i-I_j|^2 / 2 srgb^2)`` (bilateral, ``compat = w_b``), solved by
``iterations`` rounds of mean-field inference.  Four parameter sets are used in the VWL/IRN/DeepLab code;
:data:`CRF_PRESETS` holds them by name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from vwl_lightning.errors import ConfigError


@dataclass(frozen=True)
class CRFParams:
    """Dense-CRF settings: mean-field iterations, Gaussian (sxy, compat), bilateral (sxy, srgb, compat)."""

    iterations: int = 10
    gaussian_sxy: float = 1.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 64.0
    bilateral_srgb: float = 3.0
    bilateral_compat: float = 4.0

    def __post_init__(self) -> None:
        validate_crf_params(self)


def validate_crf_params(params: CRFParams, prefix: str = "crf") -> CRFParams:
    """ConfigError naming the field unless iterations >= 1, every sxy/srgb > 0 and every compat >= 0."""
    if not isinstance(params.iterations, (int, np.integer)) or isinstance(params.iterations, bool) \
            or params.iterations < 1:
        raise ConfigError(f"{prefix}.iterations: need an integer >= 1, got {params.iterations!r}")
    for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
        value = getattr(params, name)
        if not isinstance(value, (int, float, np.number)) or not np.isfinite(value) or value <= 0:
            raise ConfigError(f"{prefix}.{name}: need a number > 0, got {value!r}")
    for name in ("gaussian_compat", "bilateral_compat"):
        value = getattr(params, name)
        if not isinstance(value, (int, float, np.number)) or not np.isfinite(value) or value < 0:
            raise ConfigError(f"{prefix}.{name}: need a number >= 0, got {value!r}")
    return params


CRF_PRESETS: dict[str, CRFParams] = {
    # spec §6, v2/crf.py (CAM + CRF evaluation): iter 10, Gaussian sxy 1 compat 3,
    # bilateral sxy 64 srgb 3 compat 4
    "vwl_cam": CRFParams(10, 1.0, 3.0, 64.0, 3.0, 4.0),
    # spec §6, IRN crf_inference_label (IR-label building; used with unary_from_labels, gt_prob 0.7)
    "irn_label": CRFParams(10, 3.0, 3.0, 50.0, 5.0, 10.0),
    # spec §7, deeplab-pytorch test: iter 10, pos_xy 1, pos_w 3, bi_xy 67, bi_rgb 3, bi_w 4
    "deeplab_test": CRFParams(10, 1.0, 3.0, 67.0, 3.0, 4.0),
    # spec §7, the alternative the author gave for AFA: iter 10, pos_xy 3, pos_w 3, bi_xy 64, bi_rgb 5, bi_w 4
    "afa_alt": CRFParams(10, 3.0, 3.0, 64.0, 5.0, 4.0),
}


def crf_params_from_config(spec: CRFParams | str | Mapping[str, Any] | None, default: str = "vwl_cam",
                           prefix: str = "crf") -> CRFParams:
    """Build :class:`CRFParams` from a preset name, a mapping (optional ``preset`` plus field overrides) or
    None (the ``default`` preset).  Unknown presets or fields raise ConfigError naming them."""
    if isinstance(spec, CRFParams):
        return validate_crf_params(spec, prefix)
    if spec is None:
        spec = default
    if isinstance(spec, str):
        if spec not in CRF_PRESETS:
            raise ConfigError(f"{prefix}.preset: unknown CRF preset '{spec}'; "
                              f"choose from {sorted(CRF_PRESETS)}")
        return CRF_PRESETS[spec]
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{prefix}: expected a preset name or a mapping, got {type(spec).__name__}")
    values = dict(spec)
    base = crf_params_from_config(values.pop("preset", default), default, prefix)
    fields = {f.name for f in dataclasses.fields(CRFParams)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}: unknown CRF setting; expected one of {sorted(fields)}")
    try:
        return dataclasses.replace(base, **values)
    except ConfigError as exc:  # re-raise with the caller's prefix
        raise ConfigError(str(exc).replace("crf.", f"{prefix}.", 1)) from None


def _check_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"CRF image must be (H, W, 3) uint8, got {img.dtype} of shape {img.shape}")
    if img.shape[:2] != tuple(shape):
        raise ValueError(f"CRF image size {img.shape[:2]} differs from the label/probability size {shape}")
    return np.array(img, dtype=np.uint8, order="C", copy=True)  # pydensecrf needs a writable C array


def _run_crf(image: np.ndarray, unary: np.ndarray, n_labels: int, params: CRFParams) -> np.ndarray:
    """Mean-field inference with the unary ``(n_labels, H*W)`` float32; returns ``(n_labels, H, W)`` Q."""
    import pydensecrf.densecrf as dcrf

    validate_crf_params(params)
    height, width = image.shape[:2]
    crf = dcrf.DenseCRF2D(width, height, n_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary, dtype=np.float32))
    crf.addPairwiseGaussian(sxy=float(params.gaussian_sxy), compat=float(params.gaussian_compat))
    crf.addPairwiseBilateral(sxy=float(params.bilateral_sxy), srgb=float(params.bilateral_srgb),
                             rgbim=image, compat=float(params.bilateral_compat))
    q = crf.inference(int(params.iterations))
    return np.asarray(q, dtype=np.float32).reshape(n_labels, height, width)


def crf_from_probs(image: np.ndarray, probs: np.ndarray, params: CRFParams, clip: float = 1e-5) -> np.ndarray:
    """Refine class probabilities ``probs`` (C, H, W) on ``image`` (H, W, 3 uint8).

    Unary ``U = -log(clip(probs, clip, 1))`` (``pydensecrf.utils.unary_from_softmax``); returns the
    mean-field marginals ``(C, H, W)`` float32 (each pixel sums to 1).
    """
    from pydensecrf.utils import unary_from_softmax

    p = np.asarray(probs, dtype=np.float32)
    if p.ndim != 3:
        raise ValueError(f"probs must be (C, H, W), got shape {p.shape}")
    img = _check_image(image, p.shape[1:])
    if p.shape[0] == 1:
        return np.ones_like(p)
    return _run_crf(img, unary_from_softmax(np.ascontiguousarray(p), clip=clip), p.shape[0], params)


def crf_from_labels(image: np.ndarray, labels: np.ndarray, n_labels: int, params: CRFParams,
                    gt_prob: float = 0.7) -> np.ndarray:
    """IRN's label CRF (spec §6, ``crf_inference_label``): refine a hard map ``labels`` (H, W) in 0..n-1.

    Unary from ``pydensecrf.utils.unary_from_labels(..., zero_unsure=False)``: ``-log(gt_prob)`` for the
    given label and ``-log((1 - gt_prob) / (n - 1))`` for the others.  Returns the argmax ``(H, W)`` int64.
    """
    from pydensecrf.utils import unary_from_labels

    if not 0.0 < gt_prob < 1.0:
        raise ConfigError(f"crf.gt_prob: need a value in (0, 1), got {gt_prob!r}")
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"labels must be (H, W), got shape {lab.shape}")
    if lab.size and (lab.min() < 0 or lab.max() >= n_labels):
        raise ValueError(f"labels must lie in 0..{n_labels - 1}, got {lab.min()}..{lab.max()}")
    img = _check_image(image, lab.shape)
    if n_labels == 1:
        return np.zeros(lab.shape, dtype=np.int64)
    unary = unary_from_labels(np.ascontiguousarray(lab, dtype=np.int64), n_labels, gt_prob=gt_prob,
                              zero_unsure=False)
    return np.argmax(_run_crf(img, unary, n_labels, params), axis=0)


def keys_lookup(keys: np.ndarray, high_res: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ``(K, H, W)`` CAMs as float32 and the compact-index -> label lookup ``[0, *keys]``."""
    cams = np.asarray(high_res, dtype=np.float32)
    keys_arr = np.asarray(keys, dtype=np.int64).reshape(-1)
    if cams.ndim != 3 or cams.shape[0] != keys_arr.shape[0]:
        raise ValueError(f"high_res shape {cams.shape} does not match {keys_arr.shape[0]} keys")
    return cams, np.concatenate([[0], keys_arr]).astype(np.uint8)
