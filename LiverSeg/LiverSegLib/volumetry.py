"""The one definition of LiverSeg's volumes, read by the CLI, the Slicer table, and the evaluation reports.

The liver includes its tumours (labels 1 and 2, as the MSD/LiTS labels count the organ); the parenchyma
is the liver without them (label 1); the tumour is label 2. Kept free of torch and MONAI so the Slicer
side can import it before those are installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

PARENCHYMA_LABEL, TUMOUR_LABEL = 1, 2
"""Label values of the labelmaps LiverSeg reads and writes (0 is background)."""


@dataclass(frozen=True)
class LiverVolumes:
    """Voxel counts of one labelmap and the voxel volume they are measured in."""

    parenchyma_voxels: int
    tumour_voxels: int
    voxel_ml: float

    @property
    def liver_voxels(self) -> int:
        """The liver including its tumours."""
        return self.parenchyma_voxels + self.tumour_voxels

    @property
    def liver_ml(self) -> float:
        """Liver volume in mL, its tumours included."""
        return self.liver_voxels * self.voxel_ml

    @property
    def parenchyma_ml(self) -> float:
        """Liver parenchyma in mL: the liver without its tumours."""
        return self.parenchyma_voxels * self.voxel_ml

    @property
    def tumour_ml(self) -> float:
        """All liver tumours together, in mL."""
        return self.tumour_voxels * self.voxel_ml

    def rows(self) -> Tuple[Tuple[str, float, int], ...]:
        """(title, mL, voxels) of the liver, its parenchyma and its tumours: what a table of them shows."""
        return (
            ("Liver (including tumours)", self.liver_ml, self.liver_voxels),
            ("Liver parenchyma", self.parenchyma_ml, self.parenchyma_voxels),
            ("Liver tumours", self.tumour_ml, self.tumour_voxels),
        )

    def summary(self) -> str:
        """One line for a status bar or a terminal."""
        return f"liver {self.liver_ml:.0f} ml (parenchyma {self.parenchyma_ml:.0f} ml + tumour {self.tumour_ml:.1f} ml)"


def liver_volumes(labels: np.ndarray, voxel_ml: float) -> LiverVolumes:
    """Measure a labelmap (any shape; values 0/1/2, others ignored) whose voxels hold ``voxel_ml`` each."""
    labels = np.asarray(labels)
    return LiverVolumes(int(np.count_nonzero(labels == PARENCHYMA_LABEL)),
                        int(np.count_nonzero(labels == TUMOUR_LABEL)), float(voxel_ml))


def reaches_scan_edge(labels: np.ndarray) -> bool:
    """Whether the liver touches the first or last voxel layer along any axis: the scan cut it (a partial
    liver), so its volume is a lower bound."""
    liver = np.asarray(labels)
    liver = (liver == PARENCHYMA_LABEL) | (liver == TUMOUR_LABEL)
    return any(np.take(liver, index, axis=axis).any() for axis in range(liver.ndim) for index in (0, -1))


def tumour_count(labels: np.ndarray) -> int:
    """The number of separate tumours: connected components of label 2, touching faces (6-connectivity), the
    neighbourhood a radiologist's "separate lesion" is closest to on thick slices."""
    from scipy import ndimage

    return int(ndimage.label(np.asarray(labels) == TUMOUR_LABEL)[1])


PLAUSIBLE_LIVER_ML = (500.0, 4500.0)
"""Adult livers measured on CT lie well inside this range (about 1000-2500 mL, up to ~4000 mL in
hepatomegaly, down to ~600 mL in cirrhosis or after resection): a volume outside it is more likely a
segmentation error (a neighbouring organ taken, the liver half missed) than anatomy, so it is flagged
for a look rather than trusted in a cohort table."""


def quality_flags(labels: np.ndarray, voxel_ml: float) -> List[str]:
    """What a cohort table should warn about for one segmentation, by name: ``no_liver`` (empty labelmap),
    ``partial_liver`` (the liver reaches the scan's edge: its volume is a lower bound) and
    ``implausible_volume`` (the liver outside :data:`PLAUSIBLE_LIVER_ML`)."""
    volumes = liver_volumes(labels, voxel_ml)
    if volumes.liver_voxels == 0:
        return ["no_liver"]
    flags = ["partial_liver"] if reaches_scan_edge(labels) else []
    low, high = PLAUSIBLE_LIVER_ML
    return flags + ([] if low <= volumes.liver_ml <= high else ["implausible_volume"])


def status_line(method: str, labels: np.ndarray, voxel_ml: float) -> str:
    """What one segmentation found, in one line: the volumes, flagged partial, or that no liver was found."""
    volumes = liver_volumes(labels, voxel_ml)
    if volumes.liver_voxels == 0:
        return (f"{method}: no liver found (the labelmap is empty); the scan may not cover the liver, "
                "e.g. a chest-only or pelvis-only CT")
    partial = "; partial: the liver reaches the edge of the scan, so its volume is a lower bound" if reaches_scan_edge(labels) else ""
    return f"{method}: {volumes.summary()}{partial}"
