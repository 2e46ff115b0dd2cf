"""Pseudo-label method ``crf``: CAMs + dense CRF -> a full pseudo mask (spec §6, VWL's ``crf.py``).

One pseudo-label method per module in this folder: a function ``(image, high_res, keys, settings) -> mask``
in label space; :mod:`vwl_lightning.stages.make_pseudo_masks` calls it for every image.
"""

from __future__ import annotations

import numpy as np

from vwl_lightning.pseudo.dense_crf import CRFParams, crf_from_probs, keys_lookup


def cam_crf_pseudo_mask(image: np.ndarray, high_res: np.ndarray, keys: np.ndarray, bg_score: float,
                        params: CRFParams) -> np.ndarray:
    """CAM + CRF pseudo mask (spec §6, v2/crf.py).

    Spec §6: "A softmax over [bkgscore 0.15, CAMs] is used as the unary" (``unary_from_softmax``).

    The constant plane ``bg_score`` is stacked in front of the ``K`` CAMs, ``P = softmax`` over that
    channel axis, ``U = -log P`` (``unary_from_softmax``), then the CRF; the argmax index ``i > 0`` maps to
    ``keys[i-1]``.  Returns ``(H, W)`` uint8 in label space.
    """
    cams, lookup = keys_lookup(keys, high_res)
    if cams.shape[0] == 0:
        return np.zeros(cams.shape[1:], dtype=np.uint8)
    stacked = np.concatenate([np.full((1, *cams.shape[1:]), bg_score, dtype=np.float32), cams], axis=0)
    stacked = np.exp(stacked - stacked.max(axis=0, keepdims=True))
    probs = stacked / stacked.sum(axis=0, keepdims=True)
    refined = crf_from_probs(image, probs, params)
    return lookup[np.argmax(refined, axis=0)]
