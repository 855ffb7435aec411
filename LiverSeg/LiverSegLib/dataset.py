"""Medical Segmentation Decathlon (Task03_Liver) datasets: ``dataset.json`` plus image/label NIfTI pairs.

Every entry is checked before any work starts -- files exist and read, image and label grids agree,
labels lie in {0, 1, 2}, or 255 for voxels a training label leaves out (``preprocessing.UNSURE``), no case
is listed twice (in one list or across ``training`` and ``validation``: the same file, a copy of it, or two
files with the same case id) -- and all problems are reported together, so one run tells a user everything
to fix.

Entries may name files outside the dataset folder (absolute or ``../`` paths, as the fold datasets of
``scripts/train_models.py`` do); they are read where they are, and a one-line note on stderr says how many.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Hashable, List, NamedTuple, Optional, Tuple

import nibabel as nib
import numpy as np

from .errors import LiverSegError
from .preprocessing import UNSURE
from .volume import Volume, load_ct, load_volume

AFFINE_TOLERANCE_MM = 1e-3

SECTIONS = ("training", "validation")
"""The labelled lists of ``dataset.json``: MSD's ``training`` and LiverSeg's optional fixed ``validation``."""


@dataclass(frozen=True)
class Case:
    """One dataset entry: a CT and (for training cases) its labelmap."""

    name: str
    image_path: Path
    label_path: Optional[Path]


class _Entry(NamedTuple):
    """A well-formed entry of ``dataset.json`` and where it is listed (``training[3]``), for messages."""

    where: str
    case: Case


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
        ValueError: ``section`` is not one of :data:`SECTIONS` (a caller's mistake, not the dataset's).
    """
    if section not in SECTIONS:
        raise ValueError(f"section must be one of {SECTIONS}, not {section!r}")
    folder = Path(folder)
    manifest = folder / "dataset.json"
    if not manifest.is_file():
        raise LiverSegError(f"{folder}: no dataset.json; give a folder in the MSD Task03 layout (dataset.json, imagesTr/, labelsTr/)")
    try:
        spec = json.loads(manifest.read_text())
        entries = spec["training"] if section == "training" else spec.get(section, [])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # AttributeError: not a JSON object
        raise LiverSegError(f"{manifest}: not a valid MSD dataset.json ({exc}); it needs a 'training' list of image/label pairs") from exc

    listed, problems = _entries(folder, section, entries)
    for entry in listed:
        problems.extend(f"{entry.case.name}: {p}" for p in _problems_of(entry.case, check_voxels))
    # A case in both lists leaks as surely as one listed twice: compare all the lists, in file order.
    problems.extend(_duplicate_problems(
        [e for s in SECTIONS for e in (listed if s == section else _entries(folder, s, spec.get(s, []))[0])]
    ))
    if not entries and section == "training":
        problems.append("the 'training' list is empty")
    if problems:
        raise LiverSegError(f"{manifest}: {len(problems)} problem(s): " + "; ".join(problems))
    _note_outside(folder, manifest, section, [entry.case for entry in listed])
    return [entry.case for entry in listed]


def _entries(folder: Path, section: str, items: Any) -> Tuple[List[_Entry], List[str]]:
    """The well-formed entries of one list of ``dataset.json``, and a problem for each other one."""
    if not isinstance(items, list):
        return [], [f"{section}: expected a list of image/label pairs, got {items!r}"]
    entries, problems = [], []
    for index, item in enumerate(items):
        where = f"{section}[{index}]"
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) and item[k] for k in ("image", "label")):
            problems.append(f"{where}: needs both 'image' and 'label', got {item!r}")
            continue
        entries.append(_Entry(where, Case(case_name(Path(item["image"])), folder / item["image"], folder / item["label"])))
    return entries, problems


def _duplicate_problems(entries: List[_Entry]) -> List[str]:
    """One problem per group of entries that are one case: the same image file (by resolved path, so links
    and ``./`` spellings count), a copy of it (same sha256), or two files with the same case id.

    Case ids name previews, report rows and the training/validation split, so two different files with one
    id are refused rather than renamed: a generated id would change with the order of ``dataset.json`` and
    would not say which file a row is about. Ids are compared case-insensitively, as previews named after
    them would clash on macOS and Windows. Each step keeps the first entry of a group, so an entry is
    reported once, for its first reason.
    """
    same_file, entries = _groups(entries, lambda e: e.case.image_path.resolve())
    digests = _digests(entries)
    same_content, entries = _groups(entries, lambda e: digests.get(e.where))
    same_id, _ = _groups(entries, lambda e: e.case.name.casefold())
    return (
        [f"{', '.join(e.where for e in group)} are the same file {group[0].case.image_path.resolve()}: list each case once"
         for group in same_file]
        + [f"{_list(group)} have the same content (sha256 {digests[group[0].where][:12]}...): one case copied under "
           "another name; remove the copies" for group in same_content]
        + [f"{_list(group)} have the same case id '{group[0].case.name}' (it names previews, report rows and the "
           "split): rename the files apart" for group in same_id]
    )


def _groups(entries: List[_Entry], key: Callable[[_Entry], Optional[Hashable]]) -> Tuple[List[List[_Entry]], List[_Entry]]:
    """The groups of two or more entries with the same ``key`` (``None`` joins no group), and the entries
    with the first entry of each group standing for it."""
    by_key: Dict[Hashable, List[_Entry]] = {}
    for entry in entries:
        value = key(entry)
        by_key.setdefault(object() if value is None else value, []).append(entry)
    return [group for group in by_key.values() if len(group) > 1], [group[0] for group in by_key.values()]


def _digests(entries: List[_Entry]) -> Dict[str, str]:
    """sha256 of each existing image file (by ``where``) whose size another one shares.

    Hashing reads whole CTs, slow for a big dataset; files of different sizes cannot be copies, so only
    files of equal size are hashed, and most datasets hash none.
    """
    by_size: Dict[int, List[_Entry]] = {}
    for entry in entries:
        if entry.case.image_path.is_file():
            by_size.setdefault(entry.case.image_path.stat().st_size, []).append(entry)
    return {e.where: file_sha256(e.case.image_path) for group in by_size.values() if len(group) > 1 for e in group}


def file_sha256(path: Path) -> str:
    """The sha256 of a file's content (hex), read in 1 MiB blocks: a CT may be gigabytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _list(group: List[_Entry]) -> str:
    return ", ".join(f"{entry.where} ({entry.case.image_path})" for entry in group)


def _note_outside(folder: Path, manifest: Path, section: str, cases: List[Case]) -> None:
    """Say on stderr how many cases name files outside ``folder``: allowed (fold datasets point at shared
    data), but a user should see that the dataset is not self-contained."""
    outside = sum(any(not _inside(folder, path) for path in (case.image_path, case.label_path)) for case in cases)
    if outside:
        print(f"liverseg: note: {manifest}: {outside} of {len(cases)} '{section}' entries name files outside its "
              "folder (absolute or ../ paths), read where they are", file=sys.stderr)


def _inside(folder: Path, path: Optional[Path]) -> bool:
    """Whether ``path`` lies in ``folder`` as written (``..`` resolved, links not: a link inside the folder
    is the folder's own layout)."""
    return path is None or Path(os.path.normpath(os.path.abspath(path))).is_relative_to(os.path.normpath(os.path.abspath(folder)))


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
