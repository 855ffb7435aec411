"""PNG previews a person can look at: axial and coronal CT slices with the segmentation outlined."""

from __future__ import annotations

import os
from typing import Optional

import nibabel as nib
import numpy as np

from .preprocessing import LIVER, TUMOUR
from .volume import Volume, atomic_output

LIVER_RGB = (221 / 255, 130 / 255, 101 / 255)
TUMOUR_RGB = (0.2, 0.9, 0.3)
REFERENCE_RGB = (0.3, 0.6, 1.0)
WINDOW_HU = (-160.0, 240.0)


def _to_ras(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Reorient an (I, J, K) array to the nearest RAS axis order by flips/permutes (no resampling)."""
    return nib.orientations.apply_orientation(np.asarray(array), nib.orientations.io_orientation(affine))


def save_preview(
    ct: Volume,
    labels: np.ndarray,
    path: str | os.PathLike,
    reference: Optional[np.ndarray] = None,
    title: str = "",
) -> None:
    """Write a PNG with an axial and a coronal slice through the liver's centre, outlines over the CT.

    Args:
        ct: the CT (I, J, K) in HU.
        labels: labelmap (I, J, K) on the CT's grid (0/1/2).
        path: the PNG to write (atomically).
        reference: optional reference labelmap, outlined in blue for comparison.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = _to_ras(ct.array, ct.affine)
    prediction = _to_ras(labels, ct.affine)
    truth = _to_ras(reference, ct.affine) if reference is not None else None
    ras_spacing = _ras_spacing(ct)
    shown = truth if truth is not None and (truth >= LIVER).any() else prediction
    focus = shown >= LIVER if (shown >= LIVER).any() else image > -500
    centre = np.round(np.argwhere(focus).mean(axis=0)).astype(int)

    fig, axes = plt.subplots(1, 2, figsize=(11, 5.5))
    views = (
        ("axial", lambda a: a[:, :, centre[2]], ras_spacing[1] / ras_spacing[0]),
        ("coronal", lambda a: a[:, centre[1], :], ras_spacing[2] / ras_spacing[0]),
    )
    for ax, (name, take, aspect) in zip(axes, views):
        # Radiological convention: patient's right on the viewer's left, so flip x.
        ax.imshow(take(image).T[:, ::-1], cmap="gray", vmin=WINDOW_HU[0], vmax=WINDOW_HU[1], origin="lower", aspect=aspect)
        for mask, colour in ((take(prediction) >= LIVER, LIVER_RGB), (take(prediction) == TUMOUR, TUMOUR_RGB)):
            if mask.any():
                ax.contour(mask.T[:, ::-1].astype(float), levels=[0.5], colors=[colour], linewidths=1.2, origin="lower")
        if truth is not None and (take(truth) >= LIVER).any():
            ax.contour((take(truth) >= LIVER).T[:, ::-1].astype(float), levels=[0.5], colors=[REFERENCE_RGB],
                       linewidths=1.0, linestyles="dashed", origin="lower")
        ax.set_title(f"{name} (R on the left)")
        ax.axis("off")
    legend = "liver (orange), tumour (green)" + (", reference (blue dashed)" if truth is not None else "")
    fig.suptitle(f"{title}\n{legend}" if title else legend)
    fig.tight_layout()
    with atomic_output(path) as temp:
        fig.savefig(temp, dpi=80, format="png")
    plt.close(fig)


def _ras_spacing(ct: Volume) -> np.ndarray:
    """Voxel size along R, A, S after :func:`_to_ras`."""
    ornt = nib.orientations.io_orientation(ct.affine)
    spacing = np.empty(3)
    spacing[ornt[:, 0].astype(int)] = ct.spacing
    return spacing
