"""DICOM SEG out: a labelmap as a DICOM Segmentation object over the CT series it was segmented from.

Made with highdicom, as MONAI Label and TotalSegmentator make theirs: a BINARY segmentation with one
segment per entry of :data:`mrml.SEGMENTS` (label n -> segment number n, with the codes and colours of the
``.seg.nrrd`` segments), in the source's study and frame of reference, each frame naming the source slice
it lies on, so PACS viewers, OHIF and Slicer's DICOM module show it over the CT.

A frame can only name a source slice whose pixels it shares: the labelmap must lie on the grid
:func:`dicom.read_series` built from these very files without resampling, which is checked slice by slice.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from . import __version__
from .dicom import POSITION_TOLERANCE_MM, slice_files
from .errors import LiverSegError
from .mrml import SEGMENTS, SegmentSpec
from .volume import LPS_TO_RAS, Volume, atomic_output

ALGORITHM_NAME = "LiverSeg"
# After the scanner's own series (numbered from 1 up), where viewers list derived series.
SERIES_NUMBER = 1000
# Type 1 in the Enhanced General Equipment module; software has no serial number, so a placeholder.
DEVICE_SERIAL_NUMBER = "0"
FIX = "write .seg.nrrd or .nii.gz instead"


def save_dicom_seg(labels: Volume, path: str | os.PathLike, series_folder: Path, method: str) -> Path:
    """Write ``labels`` (0/1/2, on the grid :func:`dicom.read_series` read from ``series_folder``) as a DICOM
    SEG referring to that series, atomically.

    Raises:
        LiverSegError: the series cannot be read, the labelmap is not on its slices' pixels (a gantry tilt
            resampled in-plane, a multi-frame file), its headers lack what a SEG copies, or the write failed.
    """
    # Headers only: the SEG copies the source's identifiers and geometry, never its pixels. Forced: GDCM has
    # read these files as DICOM already, some without the preamble pydicom otherwise insists on.
    sources = [pydicom.dcmread(file, stop_before_pixels=True, force=True) for file in slice_files(series_folder)]
    _check_on_source_slices(labels, sources, series_folder)
    segmentation = _segmentation(labels, sources, method, series_folder)
    with atomic_output(path) as temp:
        segmentation.save_as(temp)
    return Path(path)


def _check_on_source_slices(labels: Volume, sources: Sequence[pydicom.Dataset], folder: Path) -> None:
    """Each slice k of the labelmap must be the pixel grid of source file k: same size, same first pixel."""
    columns, rows, depth = labels.array.shape
    if len(sources) != depth:
        raise LiverSegError(f"{folder}: {len(sources)} file(s) for {depth} slices (a multi-frame image); a DICOM SEG "
                            f"here needs one file per slice, {FIX}")
    lps = LPS_TO_RAS @ labels.affine
    for k, source in enumerate(sources):
        first_pixel = lps[:3, 3] + k * lps[:3, 2]
        off = np.abs(np.asarray(source.ImagePositionPatient, dtype=float) - first_pixel).max()
        if (source.Rows, source.Columns) != (rows, columns) or off > POSITION_TOLERANCE_MM:
            raise LiverSegError(
                f"{folder}: the segmented grid is not the pixel grid of {Path(source.filename).name} (the slices "
                f"were shifted in-plane for a gantry tilt); DICOM SEG frames must lie on their source slices, {FIX}")


def _segmentation(labels: Volume, sources: Sequence[pydicom.Dataset], method: str,
                  folder: Path) -> hd.seg.Segmentation:
    # One family for every method: each is a model fitted to data (EM's mixture, the networks' weights).
    algorithm = hd.AlgorithmIdentificationSequence(
        name=ALGORITHM_NAME, family=codes.cid7162.ArtificialIntelligence, version=__version__,
        parameters={"method": method})
    try:
        return hd.seg.Segmentation(
            source_images=sources,
            # Frames (k), rows (j), columns (i); the label values are the segment numbers.
            pixel_array=np.ascontiguousarray(labels.array.transpose(2, 1, 0)),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[_segment_description(spec, algorithm) for spec in SEGMENTS],
            series_instance_uid=hd.UID(),
            series_number=SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=ALGORITHM_NAME,
            manufacturer_model_name=f"{ALGORITHM_NAME} {method}",
            software_versions=__version__,
            device_serial_number=DEVICE_SERIAL_NUMBER,
            series_description=f"{ALGORITHM_NAME} {method}: liver and liver tumour",
            content_label="LIVERSEG",
            content_description=f"Liver and liver tumour segmented by {ALGORITHM_NAME} {__version__} ({method})",
            # highdicom keeps every frame of an empty labelmap anyway, with a warning on stderr.
            omit_empty_frames=bool(labels.array.any()),
        )
    except (AttributeError, ValueError) as error:  # how highdicom refuses source headers it cannot use
        raise LiverSegError(f"{folder}: the series' headers do not allow a DICOM SEG ({error}); {FIX}") from error


def _segment_description(spec: SegmentSpec, algorithm: hd.AlgorithmIdentificationSequence) -> hd.seg.SegmentDescription:
    category, kind, region = _terminology_codes(spec.terminology)
    return hd.seg.SegmentDescription(
        segment_number=spec.label,
        segment_label=spec.name,
        segmented_property_category=category,
        segmented_property_type=kind,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        anatomic_regions=[region] if region else None,
        display_color=hd.color.CIELabColor.from_rgb(*spec.rgb),
    )


def _terminology_codes(terminology: str) -> tuple[Optional[hd.sr.CodedConcept], ...]:
    """Category, type and anatomic region of a Slicer terminology entry, whose fields are context~category~
    type~type modifier~region context~region~region modifier, each code scheme^value^meaning (Slicer's "SCT"
    is DICOM's designator for SNOMED CT). LiverSeg's entries have no modifiers."""
    fields = terminology.split("~")
    return _code(fields[1]), _code(fields[2]), _code(fields[5])


def _code(text: str) -> Optional[hd.sr.CodedConcept]:
    scheme, value, meaning = text.split("^")
    return hd.sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning) if value else None
