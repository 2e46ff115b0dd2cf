"""Pseudo-label method ``confident``: IRN's confident seeds with an uncertain 255 band (spec §6, §10.2).

The input of IRN's affinity training; also usable directly as a pseudo mask with an ignore band.
"""

from __future__ import annotations

import numpy as np

from vwl_lightning.errors import ConfigError
from vwl_lightning.pseudo.dense_crf import CRF_PRESETS, CRFParams, crf_from_labels, keys_lookup


def confident_region_labels(image: np.ndarray, high_res: np.ndarray, keys: np.ndarray,
                            fg_thres: float = 0.30, bg_thres: float = 0.05,
                            params: CRFParams | None = None, gt_prob: float = 0.7,
                            ignore_index: int = 255) -> np.ndarray:
    """IRN's ``cam_to_ir_label`` (spec §6): confident foreground / background with an uncertain band.

    ``fg = keys[labelCRF(argmax [fg_thres, cams])]`` and ``bg = keys[labelCRF(argmax [bg_thres, cams])]``
    (label CRF over the ``K+1`` compact indices, :func:`crf_from_labels`, preset ``irn_label`` by default);
    the result starts from ``fg``, is ``ignore_index`` where ``fg == 0``, and ``0`` where ``fg == 0`` and
    ``bg == 0`` (IRN writes ``conf[bg_conf + fg_conf == 0] = 0``, i.e. both maps background).
    Returns ``(H, W)`` uint8 with values in ``{0, keys, ignore_index}``.
    """
    if not bg_thres < fg_thres:
        raise ConfigError(f"bg_thres ({bg_thres}) must be below fg_thres ({fg_thres})")
    params = CRF_PRESETS["irn_label"] if params is None else params
    cams, lookup = keys_lookup(keys, high_res)
    n_labels = cams.shape[0] + 1
    maps = []
    for thres in (fg_thres, bg_thres):
        padded = np.concatenate([np.full((1, *cams.shape[1:]), thres, dtype=np.float32), cams], axis=0)
        index = crf_from_labels(image, np.argmax(padded, axis=0), n_labels, params, gt_prob)
        maps.append(lookup[index])
    fg_map, bg_map = maps
    out = fg_map.copy()
    out[fg_map == 0] = ignore_index
    out[(fg_map == 0) & (bg_map == 0)] = 0
    return out
