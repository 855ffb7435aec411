"""Per-volume quality figures: Dice of the liver and of the tumour, and lesion detection.

Dice is computed once over the whole volume at the CT's own resolution (never per slice, never
counting background), by MONAI's DiceMetric. "Liver" is the organ -- labels 1 and 2 together, as in the
LiTS/MSD liver evaluation -- and "tumour" is label 2. A class absent from the reference gives NaN
(Dice is undefined there), reported as such rather than as 0 or 1.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from monai.metrics import DiceMetric
from scipy import ndimage

from .preprocessing import LIVER, TUMOUR


def class_masks(labels: np.ndarray) -> torch.Tensor:
    """(I, J, K) labelmap -> (1, 3, I, J, K) one-hot-like masks: background, liver organ, tumour."""
    labels = torch.as_tensor(np.ascontiguousarray(labels))
    organ = labels >= LIVER
    return torch.stack([~organ, organ, labels == TUMOUR])[None]


def dice_scores(prediction: np.ndarray, reference: np.ndarray) -> Dict[str, float]:
    """Per-volume Dice of the liver organ and of the tumour.

    Args:
        prediction: labelmap (I, J, K), values 0/1/2.
        reference: labelmap of the same shape.

    Returns:
        {"dice_liver": float, "dice_tumour": float}; NaN where the reference lacks the class.
    """
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    scores = metric(class_masks(prediction), class_masks(reference))[0]
    return {"dice_liver": float(scores[0]), "dice_tumour": float(scores[1])}


DETECTED_SHARE = 0.2
"""A reference lesion is found when at least this share of its voxels is labelled tumour."""
MIN_LESION_MM = 10.0
"""Lesions are counted from this equivalent-sphere diameter up (smaller ones are scored by Dice only)."""


def lesion_detection(
    prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]
) -> List[Tuple[float, bool]]:
    """Each reference lesion of at least ``MIN_LESION_MM`` (a connected piece of label 2): its
    equivalent-sphere diameter in mm and whether the prediction found it (``DETECTED_SHARE``)."""
    pieces, count = ndimage.label(reference == TUMOUR)
    if count == 0:
        return []
    index = np.arange(1, count + 1)
    voxels = ndimage.sum_labels(np.ones(pieces.shape, np.int32), pieces, index)
    found = ndimage.sum_labels(prediction == TUMOUR, pieces, index)
    diameters = 2.0 * (3.0 * voxels * float(np.prod(spacing)) / (4.0 * np.pi)) ** (1.0 / 3.0)
    return [(float(d), bool(f >= DETECTED_SHARE * v)) for d, f, v in zip(diameters, found, voxels) if d >= MIN_LESION_MM]
