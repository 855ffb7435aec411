"""Medical Segmentation Decathlon (Task03_Liver) datasets: ``dataset.json`` plus image/label NIfTI pairs.

Every entry is checked before any work starts -- files exist and read, image and label grids agree,
labels lie in {0, 1, 2}, or 255 for voxels a training label leaves out (``preprocessing.UNSURE``) -- and all problems are reported together, so one run tells a user everything
to fix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import nibabel as nib
import numpy as np

from .errors import LiverSegError
from .preprocessing import UNSURE
from .volume import Volume, load_ct, load_volume

AFFINE_TOLERANCE_MM = 1e-3


@dataclass(frozen=True)
class Case:
    """One dataset entry: a CT and (for training cases) its labelmap."""

    name: str
    image_path: Path
    label_path: Optional[Path]


def case_name(path: Path) -> str:
    """'imagesTr/liver_3.nii.gz' -> 'liver_3'."""
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def load_msd_dataset(folder: str | Path, check_voxels: bool = True, section: str = "training") -> List[Case]:
    """Read and validate a list of image/label pairs of an MSD-layout dataset.

    Args:
        folder: the folder holding ``dataset.json``.
        check_voxels: also read every label to check its values (slower; off for a quick listing).
        section: the list to read: ``training`` (MSD's), or ``validation``, LiverSeg's optional
            extension naming fixed held-out pairs (an empty list when absent).

    Returns:
        the labelled cases, in the order of ``dataset.json``.

    Raises:
        LiverSegError: listing every problem found.
    """
    folder = Path(folder)
    manifest = folder / "dataset.json"
    if not manifest.is_file():
        raise LiverSegError(f"{folder}: no dataset.json; give a folder in the MSD Task03 layout (dataset.json, imagesTr/, labelsTr/)")
    try:
        spec = json.loads(manifest.read_text())
        entries = spec["training"] if section == "training" else spec.get(section, [])
    except (ValueError, KeyError, TypeError) as exc:
        raise LiverSegError(f"{manifest}: not a valid MSD dataset.json ({exc}); it needs a 'training' list of image/label pairs") from exc

    cases, problems = [], []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry.get("image") or not entry.get("label"):
            problems.append(f"{section}[{index}]: needs both 'image' and 'label', got {entry!r}")
            continue
        case = Case(case_name(Path(entry["image"])), folder / entry["image"], folder / entry["label"])
        problems.extend(f"{case.name}: {p}" for p in _problems_of(case, check_voxels))
        cases.append(case)
    if not entries and section == "training":
        problems.append("the 'training' list is empty")
    if problems:
        raise LiverSegError(f"{manifest}: {len(problems)} problem(s): " + "; ".join(problems))
    return cases


def _problems_of(case: Case, check_voxels: bool) -> List[str]:
    missing = [str(p) for p in (case.image_path, case.label_path) if not p.is_file()]
    if missing:
        return [f"missing file {m}" for m in missing]
    try:
        image, label = nib.load(str(case.image_path)), nib.load(str(case.label_path))
    except Exception as exc:
        return [f"unreadable ({exc})"]
    problems = []
    if image.shape[:3] != label.shape[:3]:
        problems.append(f"label shape {label.shape} differs from image shape {image.shape}")
    elif not np.allclose(image.affine, label.affine, atol=AFFINE_TOLERANCE_MM):
        problems.append("label affine differs from image affine (the label would not overlay the CT)")
    if check_voxels and not problems:
        try:
            values = np.unique(np.asanyarray(label.dataobj))
        except Exception as exc:
            return [f"label unreadable ({exc})"]
        unexpected = sorted(set(values.tolist()) - {0, 1, 2, UNSURE})
        if unexpected:
            problems.append(f"label values {unexpected[:5]} outside {{0 background, 1 liver, 2 tumour, {UNSURE} unsure}}")
    return problems


def read_case(case: Case) -> Tuple[Volume, Volume]:
    """Load a case's CT (checked to be a CT in HU) and its labelmap (uint8) on the same grid."""
    ct = load_ct(case.image_path)
    if case.label_path is None:
        raise LiverSegError(f"{case.name}: has no label")
    label = load_volume(case.label_path)
    return ct, Volume(np.asarray(label.array).astype(np.uint8), ct.affine)
