"""The segmentation files LiverSeg writes, by suffix, stated once: ``liverseg segment`` checks each output
against this table before any work, lists it in its help, and writes through it.

Only the standard library is imported here; each writer loads its libraries when it writes, so the parser
that shows the table in its help stays quick to build.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List

from .errors import LiverSegError

if TYPE_CHECKING:
    from .volume import Volume


@dataclass(frozen=True)
class Provenance:
    """Where a segmentation came from, for writers that refer to it (a DICOM SEG names its source slices)."""

    ct: Path  # the input: a NIfTI/NRRD file or a DICOM series folder
    method: str


@dataclass(frozen=True)
class OutputType:
    description: str  # for the help text
    write: Callable[[Volume, Path, Provenance], object]
    needs_dicom: bool = False  # made only over a DICOM series input


def _labelmap(labels: Volume, path: Path, provenance: Provenance) -> Path:
    from .volume import save_volume

    return save_volume(labels, path)


def _slicer_segmentation(labels: Volume, path: Path, provenance: Provenance) -> Path:
    from .mrml import save_segmentation

    return save_segmentation(labels, path)


def _dicom_seg(labels: Volume, path: Path, provenance: Provenance) -> Path:
    from .dicom_seg import save_dicom_seg

    return save_dicom_seg(labels, path, provenance.ct, provenance.method)


LABELMAP = "a uint8 labelmap on the CT's grid"
OUTPUTS: Dict[str, OutputType] = {
    ".nii.gz": OutputType(LABELMAP, _labelmap),
    ".nii": OutputType(LABELMAP, _labelmap),
    ".nrrd": OutputType(LABELMAP, _labelmap),
    ".seg.nrrd": OutputType("a Slicer segmentation with named, coloured, SNOMED CT-coded segments", _slicer_segmentation),
    ".dcm": OutputType("a DICOM SEG over the source series (DICOM input only)", _dicom_seg, needs_dicom=True),
}
"""Suffix (as :func:`volume.suffix_of` gives it) -> what is written and how."""


def output_suffixes() -> str:
    """The suffixes as a sentence lists them: '.nii.gz, .nii, ... or .dcm'."""
    names = list(OUTPUTS)
    return f"{', '.join(names[:-1])} or {names[-1]}"


def describe_outputs() -> str:
    """Each output type with its suffixes, those sharing a description together, for the help text."""
    grouped: Dict[str, List[str]] = {}
    for suffix, output in OUTPUTS.items():
        grouped.setdefault(output.description, []).append(suffix)
    return "; ".join(f"{'/'.join(names)}: {description}" for description, names in grouped.items())


def check_output(path: Path, ct: Path) -> None:
    """Refuse, before any work, an output of unknown type or one this input cannot make.

    Raises:
        LiverSegError: naming the output, the reason and the fix.
    """
    from .volume import suffix_of

    suffix = suffix_of(path)
    if suffix not in OUTPUTS:
        raise LiverSegError(f"{path}: unknown output type '{suffix}'; use {output_suffixes()}")
    if OUTPUTS[suffix].needs_dicom and ct.is_file():  # a missing input is reported as such when it is read
        raise LiverSegError(f"{path}: {suffix} writes {OUTPUTS[suffix].description}, and the input {ct} is a file, not "
                            "a DICOM series folder; segment the DICOM series folder instead, or write .seg.nrrd")


def write_output(labels: Volume, path: Path, provenance: Provenance) -> None:
    """Write ``labels`` (on the CT's grid) in the type ``path``'s suffix names, atomically."""
    from .volume import suffix_of

    OUTPUTS[suffix_of(path)].write(labels, path, provenance)
