"""Previews a person can look at (PNG, JPEG, ... by suffix): axial and coronal CT slices with the
segmentation outlined in the colours the .seg.nrrd gives its segments."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import nibabel as nib
import numpy as np

from .errors import LiverSegError
from .mrml import SEGMENTS
from .preprocessing import LIVER
from .volume import Volume, atomic_output

REFERENCE_RGB = (0.3, 0.6, 1.0)
WINDOW_HU = (-160.0, 240.0)
# Formats matplotlib writes with its own Agg renderer and Pillow (no LaTeX or Ghostscript), that viewers open.
PREVIEW_FORMATS = ("png", "jpg", "jpeg", "tif", "tiff", "svg", "pdf")


def preview_format(path: str | os.PathLike) -> str:
    """The image format ``path``'s suffix names, so ``preview.jpg`` holds a JPEG, not PNG bytes.

    Raises:
        LiverSegError: the suffix names no format in :data:`PREVIEW_FORMATS`.
    """
    suffix = Path(path).suffix.lower()
    if suffix[1:] not in PREVIEW_FORMATS:
        raise LiverSegError(f"{path}: unknown preview type '{suffix}'; use "
                            + ", ".join(f".{name}" for name in PREVIEW_FORMATS))
    return suffix[1:]


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
    """Write an image with an axial and a coronal slice through the liver's centre, outlines over the CT.

    Args:
        ct: the CT (I, J, K) in HU.
        labels: labelmap (I, J, K) on the CT's grid (0/1/2).
        path: the image to write (atomically), in the format its suffix names (:func:`preview_format`).
        reference: optional reference labelmap, outlined in blue for comparison.
        title: figure title.
    """
    image_format = preview_format(path)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

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
        for segment in SEGMENTS:
            mask = take(prediction) >= segment.label  # labels nest: the liver's outline encloses its tumours
            if mask.any():
                ax.contour(mask.T[:, ::-1].astype(float), levels=[0.5], colors=[segment.color], linewidths=1.2,
                           origin="lower")
        if truth is not None and (take(truth) >= LIVER).any():
            ax.contour((take(truth) >= LIVER).T[:, ::-1].astype(float), levels=[0.5], colors=[REFERENCE_RGB],
                       linewidths=1.0, linestyles="dashed", origin="lower")
        ax.set_title(f"{name} (R on the left)")
        ax.axis("off")
    # Legend entries drawn in the outlines' own colours, so no colour name can disagree with them.
    handles = [Line2D([], [], color=segment.color, label=segment.name) for segment in SEGMENTS]
    if truth is not None:
        handles.append(Line2D([], [], color=REFERENCE_RGB, linestyle="dashed", label="Reference liver"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    try:
        with atomic_output(path) as temp:
            fig.savefig(temp, dpi=80, format=image_format)
    finally:
        plt.close(fig)  # also after a failed write: Slicer keeps running and would keep the figure


def _ras_spacing(ct: Volume) -> np.ndarray:
    """Voxel size along R, A, S after :func:`_to_ras`."""
    ornt = nib.orientations.io_orientation(ct.affine)
    spacing = np.empty(3)
    spacing[ornt[:, 0].astype(int)] = ct.spacing
    return spacing
