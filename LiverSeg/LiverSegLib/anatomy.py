"""Where the liver may be: the body, the lung bases, the right upper abdomen (body-relative priors).

Shared by the EM segmenter (which fits its mixture there) and the post-processing of every segmenter
(:func:`LiverSegLib.preprocessing.clean_labels` keeps the liver piece lying there, not the largest
one: a weak network's largest piece may be a pelvic blob, and "most superior" alone would pick the
heart in a chest-abdomen CT). Arrays are on a RAS working grid: axis 0 grows towards the patient's
right, axis 2 towards the head.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .errors import LiverSegError
from .preprocessing import BODY_HU

BELOW_LUNG_MM = 60.0
"""The liver dome rises this far above the lowest slice that still has much lung."""
LIVER_HEIGHT_MM = 260.0
"""The liver's extent below the dome is well within this (a large liver is ~20-22 cm)."""
LUNG_SHARE = 0.15
"""A slice "has much lung" when this share of the body's cross-section is air."""
MIDLINE_MARGIN_MM = 20.0
MIN_CUT_SECTION_MM2 = 2000.0
"""Where a scan without lungs cuts the liver, the organ's cross-section is at least this (20 cm²): the real
partial livers here show 50-215 cm² there; the pieces kept in pelvis-side slabs, 9 cm² tubes."""


def body_mask(hu: np.ndarray, air_hu: float = BODY_HU) -> np.ndarray:
    """The patient: largest component above ``air_hu``, with lungs and bowel gas filled in slice by slice.

    Raises:
        LiverSegError: nothing above ``air_hu``.
    """
    body, count = ndimage.label(hu > air_hu)
    if count == 0:
        raise LiverSegError(f"no body found in the CT (no voxel above {air_hu:.0f} HU); check that the image is an abdominal CT")
    sizes = ndimage.sum_labels(np.ones_like(body), body, index=np.arange(1, count + 1))
    body = body == (1 + int(np.argmax(sizes)))
    for z in range(body.shape[2]):  # per slice: the lungs and gas are holes in 2D but may touch the ends in 3D
        body[:, :, z] = ndimage.binary_fill_holes(body[:, :, z])
    return body


def liver_region(hu: np.ndarray, body: np.ndarray, spacing: np.ndarray, air_hu: float = BODY_HU) -> np.ndarray:
    """Where the liver may be: the right half of the body (to 2 cm past the midline), from
    ``BELOW_LUNG_MM`` above the lung bases down ``LIVER_HEIGHT_MM``; without lungs in the field of view
    (an abdomen-pelvis scan), the top ``LIVER_HEIGHT_MM`` of it.

    Args:
        hu: (X, Y, Z) CT in HU on a RAS grid (values at or below ``air_hu`` count as air).
        body: :func:`body_mask` of it.
        spacing: voxel size in mm along X, Y, Z.
        air_hu: below this is air or lung.
    """
    x_centre = np.average(np.arange(body.shape[0]), weights=body.sum(axis=(1, 2)))
    region = body.copy()
    region[: int(round(x_centre)) - int(round(MIDLINE_MARGIN_MM / spacing[0]))] = False

    lung_slices = np.nonzero(_lung_share(hu, body, air_hu) > LUNG_SHARE)[0]
    body_slices = np.nonzero(body.any(axis=(0, 1)))[0]
    if lung_slices.size:
        top = min(body.shape[2], lung_slices.min() + int(BELOW_LUNG_MM / spacing[2]))
    else:
        top = int(body_slices.max()) + 1 if body_slices.size else body.shape[2]
    bottom = max(0, top - int(LIVER_HEIGHT_MM / spacing[2]))
    region[:, :, top:] = False
    region[:, :, :bottom] = False
    return region


def _lung_share(hu: np.ndarray, body: np.ndarray, air_hu: float) -> np.ndarray:
    """Per axial slice (Z,), the share of the body's cross-section that is air: lung (or bowel gas)."""
    lung = (hu <= air_hu) & body
    return lung.sum(axis=(0, 1)) / np.maximum(body.sum(axis=(0, 1)), 1)


def liver_in_view(organ: np.ndarray, hu: np.ndarray, body: np.ndarray, spacing: np.ndarray,
                  air_hu: float = BODY_HU) -> bool:
    """Whether ``organ`` (the piece a segmenter kept as liver) can be a liver, given what the scan covers.

    The liver hangs under the right hemidiaphragm, whose dome the lung bases surround, so:

    - without lungs in the field of view, the scan lies below the dome and a liver in it is cut by the
      scan's top (an abdomen-pelvis scan), where the organ is wide (``MIN_CUT_SECTION_MM2``); a piece that
      stops short of the top, or meets it as a thin tube, is a bowel loop or muscle of a pelvis-side scan;
    - when lung still fills the scan's lowest slice, the scan ends in the chest and a liver in it is its
      dome: cut by the scan's bottom, with lung above it; a piece reaching both the bottom and the top is
      the heart or the mediastinum of a chest-only scan.

    Arrays are (X, Y, Z) on a RAS working grid (axis 2 towards the head).
    """
    slices = np.nonzero(organ.any(axis=(0, 1)))[0]
    body_slices = np.nonzero(body.any(axis=(0, 1)))[0]
    if slices.size == 0 or body_slices.size == 0:
        return False
    share = _lung_share(hu, body, air_hu)
    touches_top, touches_bottom = slices.max() >= body_slices.max(), slices.min() <= body_slices.min()
    if not (share > LUNG_SHARE).any():
        section_mm2 = float(organ[:, :, body_slices.max()].sum() * spacing[0] * spacing[1])
        return bool(touches_top and section_mm2 >= MIN_CUT_SECTION_MM2)
    if share[body_slices.min()] > LUNG_SHARE:
        return bool(touches_bottom and not touches_top)
    return True
