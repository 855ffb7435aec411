"""Pre- and post-processing shared by every segmenter, built from MONAI transforms.

CT -> :func:`to_working_grid` (RAS orientation, working spacing) -> segmenter-specific work ->
:func:`clean_labels` (the liver component where the liver lies, holes filled, tumour inside liver) ->
:func:`to_input_grid` (back onto the CT's exact grid and affine).
"""

from __future__ import annotations

from typing import Optional, Sequence

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage
from monai.data import MetaTensor
from monai.transforms import FillHoles, Spacing

from .volume import Volume

LIVER, TUMOUR = 1, 2
UNSURE = 255
"""Training labels only: a voxel whose label is not trusted (self-training's confidence filter); the
loss ignores it."""
BODY_HU = -500.0
"""Voxels above this are inside the body (air and lung are below)."""


def to_working_grid(ct: Volume, spacing: Sequence[float]) -> MetaTensor:
    """Move a CT onto the working grid: reoriented to RAS, resampled to ``spacing`` (MONAI transforms).

    Args:
        ct: CT in HU, array shape (I, J, K).
        spacing: working voxel size in mm along R, A, S.

    Returns:
        MetaTensor of shape (1, X, Y, Z), float32 HU; its ``affine`` maps (x, y, z) to RAS mm.
    """
    # Memory and time (issues 12, 13): the flips and axis swaps of the reorientation to RAS are numpy
    # views of the CT's own array, so the one float32 copy is the only full-resolution array made
    # (a float32 copy, then its reoriented copy, as before, doubled it). Same axis codes as MONAI's
    # Orientation (nibabel's io_orientation), same resulting affine.
    affine = np.asarray(ct.affine, dtype=np.float64)
    orientation = nib.orientations.io_orientation(affine)
    array = np.ascontiguousarray(nib.orientations.apply_orientation(np.asarray(ct.array), orientation), dtype=np.float32)
    affine = affine @ nib.orientations.inv_ornt_aff(orientation, np.asarray(ct.array).shape)
    image = MetaTensor(torch.from_numpy(array[None]), affine=torch.as_tensor(affine))
    return Spacing(pixdim=tuple(spacing), mode="bilinear", padding_mode="border", dtype=torch.float32)(image)


def to_input_grid(labels: np.ndarray, working_affine: np.ndarray, ct: Volume) -> np.ndarray:
    """Resample a labelmap from the working grid onto the CT's own grid and affine.

    Each class mask is interpolated linearly and thresholded at 0.5, which gives smoother edges than
    nearest-neighbour at native resolution. Only the block of the CT grid that covers the mask's
    bounding box is computed: at 512x512x300 that is seconds instead of minutes, in a few hundred MB.
    (MONAI's own inverse builds a full-resolution sampling grid: 5 GB at that size.)

    Args:
        labels: uint8 (X, Y, Z) labelmap, 0/1/2, on the working grid.
        working_affine: 4x4 voxel-to-RAS matrix of the working grid.
        ct: the CT whose grid the result must lie on.

    Returns:
        uint8 labelmap of shape (I, J, K).
    """
    # input voxel index -> working voxel index
    ct_to_working = np.linalg.inv(np.asarray(working_affine, dtype=np.float64)) @ ct.affine
    result = np.zeros(ct.array.shape, dtype=np.uint8)
    for label, mask in ((LIVER, labels >= LIVER), (TUMOUR, labels == TUMOUR)):
        block = _block_covering(mask, ct_to_working, ct.array.shape)
        if block is None:
            continue
        start, stop = block
        resampled = ndimage.affine_transform(
            mask.astype(np.float32),
            ct_to_working[:3, :3],
            offset=ct_to_working[:3, :3] @ start + ct_to_working[:3, 3],
            output_shape=tuple(stop - start),
            order=1,
            # The working grid's last sample may lie inside the CT's last slice: beyond it the mask goes
            # on as it ends, instead of fading to 0 and losing that slice.
            mode="nearest",
            output=np.float32,
        )
        region = tuple(slice(a, b) for a, b in zip(start, stop))
        result[region][resampled >= 0.5] = label
    return result


def _block_covering(mask: np.ndarray, ct_to_working: np.ndarray, ct_shape: Sequence[int]):
    """Start/stop indices (CT grid) of the box holding every CT voxel that can sample ``mask``."""
    if not mask.any():
        return None
    nonzero = np.nonzero(mask)
    low = np.array([ax.min() for ax in nonzero]) - 1.0
    high = np.array([ax.max() for ax in nonzero]) + 1.0
    corners = np.array(np.meshgrid(*zip(low, high), indexing="ij")).reshape(3, -1)
    working_to_ct = np.linalg.inv(ct_to_working)
    in_ct = working_to_ct[:3, :3] @ corners + working_to_ct[:3, 3:4]
    start = np.clip(np.floor(in_ct.min(axis=1)).astype(int) - 1, 0, ct_shape)
    stop = np.clip(np.ceil(in_ct.max(axis=1)).astype(int) + 2, 0, ct_shape)
    if np.any(stop <= start):
        return None
    return start, stop


def clean_labels(labels: np.ndarray, region: Optional[np.ndarray] = None) -> np.ndarray:
    """Post-processing shared by all segmenters.

    Keeps one connected piece of liver -- the one with most voxels in ``region`` (where the liver may
    be, :func:`LiverSegLib.anatomy.liver_region`), or the largest without a region or when no piece
    reaches it -- the tumours touching it (a tumour never bridges the liver to a neighbour organ
    wrongly labelled liver), and fills the holes of that organ (vessels and lesions the segmenter
    missed are part of it).

    Args:
        labels: uint8 (X, Y, Z) with values 0/1/2.
        region: optional bool (X, Y, Z) mask of where the liver may be.

    Returns:
        uint8 (X, Y, Z) labelmap, same shape.
    """
    liver = labels == LIVER if (labels == LIVER).any() else labels >= LIVER
    if not liver.any():
        return np.zeros_like(labels, dtype=np.uint8)
    pieces, count = ndimage.label(liver)  # 6-connected, as MONAI's KeepLargestConnectedComponent(connectivity=1)
    index = np.arange(1, count + 1)
    score = ndimage.sum_labels(np.ones(pieces.shape, np.int32), pieces, index)
    if region is not None:
        in_region = ndimage.sum_labels(region, pieces, index)
        if in_region.max() > 0:
            score = in_region
    organ = pieces == index[int(np.argmax(score))]
    tumours, _ = ndimage.label(labels == TUMOUR)
    touching = np.unique(tumours[ndimage.binary_dilation(organ) & (tumours > 0)])
    organ |= np.isin(tumours, touching)
    organ = np.asarray(FillHoles(applied_labels=[1])(torch.from_numpy(organ[None]).to(torch.uint8))[0], dtype=bool)
    cleaned = organ.astype(np.uint8)
    cleaned[organ & (labels == TUMOUR)] = TUMOUR
    return cleaned
