"""One DICOM series read as a careful viewer reads it: every slice where its header says, or a clear refusal.

SimpleITK's series reader (GDCM) sorts the files and builds a regular, orthogonal grid whatever the slices
say, with at most a library warning: a re-sent (duplicated) slice, a missing slice or a tilted gantry gave a
wrong affine and wrong volumes silently. Here the header of every file is read and the grid is checked
against each slice's ImagePositionPatient (IPP) and ImageOrientationPatient (IOP):

- exact duplicates (same position, same pixels: a PACS re-send) are dropped, with a note on stderr;
- conflicting duplicates (same position, other pixels) are refused: nothing tells which one is right;
- a missing slice and uneven spacing are refused. A regular grid would need slices interpolated from their
  neighbours -- tissue nobody scanned, segmented and counted in the liver volume -- and a missing file is a
  transfer fault the user can repair by sending the series again;
- a tilted gantry (slices stepping obliquely to their own plane, whether the tilt is written in the IOP or
  in the positions) is resampled in-plane onto an orthogonal grid, as dcm2niix's tilt correction and
  Slicer's acquisition geometry regularization do. Each slice is only shifted within its own plane, so every
  voxel still comes from the slice acquired at its height; the sheared affine that would avoid resampling
  fits neither a NIfTI qform nor a Slicer scalar volume, which assume orthogonal axes.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .errors import LiverSegError
from .volume import LPS_TO_RAS, Volume, from_simpleitk

# How far a slice may lie from the grid LiverSeg writes: a tenth of the thinnest CT slices, above the
# rounding of positions written with two decimals, far below anything that changes a volume.
POSITION_TOLERANCE_MM = 0.05
# CT gantries tilt by at most about 30 degrees; a steeper oblique step is a header whose IOP disagrees with
# the positions, and either may be the wrong one.
MAX_TILT_DEGREES = 30.0
# IOP is written as text with a few decimals; slices of one stack share it to this precision.
ORIENTATION_TOLERANCE = 1e-4


@dataclass(frozen=True)
class _Header:
    """What one file says about where its pixels are."""

    file: Path
    position: np.ndarray  # IPP: the centre of the first pixel, LPS mm
    orientation: np.ndarray  # IOP as rows: direction of increasing column index i, then of row index j
    pixel_spacing: tuple[float, float]  # mm between columns (along i), between rows (along j)
    size: tuple[int, int]  # columns, rows


@dataclass(frozen=True)
class _Frame:
    """The in-plane geometry all slices of the stack share."""

    axes: np.ndarray  # 3x3, columns: direction of i, of j, and the slice normal (i x j), LPS
    pixel_spacing: np.ndarray  # (along i, along j), mm
    size: tuple[int, int]


@dataclass(frozen=True)
class _Grid:
    """The regular grid written, and how each slice is placed on it."""

    affine_lps: np.ndarray  # 4x4 voxel to LPS mm
    size: tuple[int, int]  # in-plane size, larger than the slices' when a tilt is resampled
    sample_offsets: np.ndarray | None  # per slice, (i, j) in the slice sampled at output (0, 0); None: no shift
    tilt_degrees: float


def read_series(folder: Path) -> Volume:
    """Read the one DICOM series in ``folder`` onto a grid that places every slice at its IPP.

    Raises:
        LiverSegError: no series or several, slices that cannot be placed on one regular grid (missing,
            unevenly spaced, conflicting duplicates, mixed orientations), or a tilt beyond a gantry's.
    """
    files = _series_files(folder)
    if len(files) == 1:
        # An enhanced multi-frame image, whose per-frame geometry GDCM reads itself, or a lone slice, which
        # check_ct then refuses as not 3D.
        return from_simpleitk(sitk.ReadImage(files[0]))
    groups, grid = _place_slices(files, folder)
    return Volume(_read_pixels(groups, grid, folder), LPS_TO_RAS @ grid.affine_lps)


def slice_files(folder: Path) -> list[Path]:
    """The file each slice k of :func:`read_series`'s volume is read from, in k order, for writers that refer
    to the source images (a DICOM SEG names the source slice of each frame). A dropped duplicate is not
    listed; a lone multi-frame file is listed once, its frames being the slices.

    Raises:
        LiverSegError: what :func:`read_series` refuses.
    """
    files = _series_files(folder)
    if len(files) == 1:
        return [Path(files[0])]
    groups, _ = _place_slices(files, folder)
    return [group[0].file for group in groups]


def _place_slices(files: list[str], folder: Path) -> tuple[list[list[_Header]], _Grid]:
    """The slices' headers in k order (those at one position grouped, the one read first) and their grid."""
    headers = [_read_header(Path(file)) for file in files]
    frame = _common_frame(headers, folder)
    groups = _group_by_position(headers, frame, folder)
    return groups, _plan_grid(np.array([group[0].position for group in groups]), frame, folder)


def _series_files(folder: Path) -> list[str]:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise LiverSegError(f"{folder}: no DICOM series in this folder; point to the folder that holds the .dcm files")
    if len(series) > 1:
        described = "; ".join(_describe_series(folder, series_id) for series_id in series)
        raise LiverSegError(f"{folder}: holds {len(series)} DICOM series ({described}); put one series per folder")
    return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0]))


def _describe_series(folder: Path, series_id: str) -> str:
    """A series as a person can find it in a viewer: UID, description and number of files. GDCM's series id
    is the SeriesInstanceUID, empty for files without one."""
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id)
    header = _header_reader(files[0])
    description = header.GetMetaData("0008|103e").strip() if header.HasMetaDataKey("0008|103e") else ""
    return f"SeriesInstanceUID {series_id or '(none)'} \"{description or 'no description'}\" ({len(files)} files)"


def _header_reader(file: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    reader.ReadImageInformation()
    return reader


def _read_header(file: Path) -> _Header:
    reader = _header_reader(str(file))
    position = _numbers(reader, file, "0020|0032", "ImagePositionPatient", 3)
    orientation = _numbers(reader, file, "0020|0037", "ImageOrientationPatient", 6).reshape(2, 3)
    size = reader.GetSize()
    if len(size) == 3 and size[2] != 1:
        raise LiverSegError(f"{file}: a multi-frame image ({size[2]} frames) among single slices; "
                            "put it in a folder of its own")
    return _Header(file, position, orientation, tuple(reader.GetSpacing()[:2]), tuple(size[:2]))


def _numbers(reader: sitk.ImageFileReader, file: Path, tag: str, name: str, count: int) -> np.ndarray:
    text = reader.GetMetaData(tag) if reader.HasMetaDataKey(tag) else ""
    try:
        values = np.array([float(value) for value in text.split("\\")])
    except ValueError:
        values = np.array([])
    if values.size != count or not np.isfinite(values).all():
        raise LiverSegError(
            f"{file}: no valid {name} ({tag.replace('|', ',')}), so its slice cannot be placed in the patient; "
            "export the series as CT images with their geometry (not screenshots or secondary captures)"
        )
    return values


def _common_frame(headers: list[_Header], folder: Path) -> _Frame:
    """The orientation, pixel spacing and size every slice must share to be one stack."""
    first = headers[0]
    for header in headers[1:]:
        if header.size != first.size or not np.allclose(header.pixel_spacing, first.pixel_spacing, atol=1e-3):
            raise LiverSegError(
                f"{folder}: {first.file.name} and {header.file.name} differ in size or pixel spacing "
                f"({first.size} at {first.pixel_spacing} mm, {header.size} at {header.pixel_spacing} mm); "
                "the folder mixes images of different stacks, keep one series per folder")
        if np.abs(header.orientation - first.orientation).max() > ORIENTATION_TOLERANCE:
            raise LiverSegError(
                f"{folder}: {first.file.name} and {header.file.name} have different ImageOrientationPatient "
                f"({_text(first.orientation.ravel())} and {_text(header.orientation.ravel())}); the folder mixes "
                "stacks (a scout or a reformat?), keep the slices of one stack per folder")
    row, column = first.orientation / np.linalg.norm(first.orientation, axis=1, keepdims=True)
    if abs(float(row @ column)) > 1e-3:
        raise LiverSegError(f"{folder}: ImageOrientationPatient {_text(first.orientation.ravel())} is not two "
                            "perpendicular directions; the header is damaged, re-export the series")
    return _Frame(np.column_stack([row, column, np.cross(row, column)]), np.array(first.pixel_spacing), first.size)


def _group_by_position(headers: list[_Header], frame: _Frame, folder: Path) -> list[list[_Header]]:
    """Slices sorted along the normal (as GDCM sorts them), those at one position grouped together."""
    normal = frame.axes[:, 2]
    ordered = sorted(headers, key=lambda header: float(header.position @ normal))
    groups = [[ordered[0]]]
    for header in ordered[1:]:
        step = header.position - groups[-1][0].position
        if float(step @ normal) > POSITION_TOLERANCE_MM:
            groups.append([header])
        elif np.linalg.norm(step) <= POSITION_TOLERANCE_MM:
            groups[-1].append(header)
        else:
            raise LiverSegError(
                f"{folder}: {groups[-1][0].file.name} and {header.file.name} lie in one plane at different "
                f"positions ({_text(groups[-1][0].position)} and {_text(header.position)} mm); not one stack of "
                "slices, keep one series per folder")
    if len(groups) == 1:
        raise LiverSegError(f"{folder}: all {len(headers)} files are one slice at {_text(ordered[0].position)} mm; "
                            "LiverSeg needs a 3D series, export all its slices")
    return groups


def _plan_grid(positions: np.ndarray, frame: _Frame, folder: Path) -> _Grid:
    """The orthogonal grid through the slice positions, or a refusal when none places every slice."""
    offsets = (positions - positions[0]) @ frame.axes  # per slice: mm along i, along j, along the normal
    heights, in_plane = offsets[:, 2], offsets[:, :2]
    spacing = heights[-1] / (len(heights) - 1)
    if np.abs(heights - spacing * np.arange(len(heights))).max() > POSITION_TOLERANCE_MM:
        raise LiverSegError(_irregular_heights(heights, positions, folder))
    slope = in_plane[-1] / heights[-1]  # in-plane mm per mm along the normal: the shear of a gantry tilt
    if np.abs(in_plane - np.outer(heights, slope)).max() > POSITION_TOLERANCE_MM:
        raise LiverSegError(f"{folder}: the slice positions (ImagePositionPatient) do not lie on a straight line "
                            "through the stack; the headers are inconsistent, re-export the series")
    tilt = float(np.degrees(np.arctan(np.linalg.norm(slope))))
    if tilt > MAX_TILT_DEGREES:
        raise LiverSegError(
            f"{folder}: the slices step at {tilt:.0f} degrees to their own plane, more than any gantry tilt: "
            "ImageOrientationPatient disagrees with ImagePositionPatient; re-export the series from the scanner")
    affine = np.eye(4)
    affine[:3, :3] = frame.axes @ np.diag([*frame.pixel_spacing, spacing])
    shifts = in_plane / frame.pixel_spacing  # per slice, in pixels
    low = shifts.min(axis=0)
    if np.abs(in_plane[-1]).max() <= POSITION_TOLERANCE_MM:
        affine[:3, 3] = positions[0]
        return _Grid(affine, frame.size, None, 0.0)
    # A tilt: the grid starts where the most shifted slice starts and widens to hold every slice whole.
    affine[:3, 3] = positions[0] + frame.axes[:, :2] @ (low * frame.pixel_spacing)
    widening = np.ceil(shifts.max(axis=0) - low - POSITION_TOLERANCE_MM / frame.pixel_spacing).astype(int)
    size = (frame.size[0] + int(widening[0]), frame.size[1] + int(widening[1]))
    # Shifts within the tolerance of whole pixels are whole: the header does not resolve less, and a shift of
    # -0.00001 pixel would put a slice's first column outside the grid.
    offsets = low - shifts
    whole = np.round(offsets)
    offsets = np.where(np.abs(offsets - whole) * frame.pixel_spacing <= POSITION_TOLERANCE_MM, whole, offsets)
    return _Grid(affine, size, offsets, tilt)


def _irregular_heights(heights: np.ndarray, positions: np.ndarray, folder: Path) -> str:
    """Name what is wrong with the spacing: slices missing from a regular series, or no regular spacing."""
    steps = np.diff(heights)
    spacing = float(np.median(steps))
    multiples = np.round(steps / spacing)
    on_the_grid = np.abs(steps - multiples * spacing).max() <= max(POSITION_TOLERANCE_MM, 0.05 * spacing)
    if on_the_grid and multiples.min() >= 1 and multiples.max() > 1:
        gap = int(np.argmax(multiples > 1))
        missing = int((multiples - 1).sum())
        return (f"{folder}: {missing} slice(s) missing, the first between {_text(positions[gap])} and "
                f"{_text(positions[gap + 1])} mm (a {steps[gap]:g} mm gap in a series spaced {spacing:g} mm); the "
                "series is incomplete, send or export it again (LiverSeg does not invent slices)")
    return (f"{folder}: the slices are unevenly spaced ({steps.min():g} to {steps.max():g} mm apart along the slice "
            "normal); LiverSeg needs a regular grid: resample the series to one spacing (Slicer's acquisition "
            "geometry regularization, dcm2niix) and give that")


def _read_pixels(groups: list[list[_Header]], grid: _Grid, folder: Path) -> np.ndarray:
    """The voxel array (i, j, k), one slice per group: duplicates compared and dropped, tilts shifted."""
    array: np.ndarray | None = None
    dropped = []
    for k, group in enumerate(groups):
        pixels = _read_slice(group[0].file)
        for other in group[1:]:
            if not np.array_equal(_read_slice(other.file), pixels):
                raise LiverSegError(
                    f"{folder}: {group[0].file.name} and {other.file.name} are two different slices at one position "
                    f"({_text(group[0].position)} mm); keep the right one (or send the series again) and retry")
            dropped.append(f"{other.file.name} (= {group[0].file.name})")
        if grid.sample_offsets is not None:
            pixels = _shift_in_plane(pixels, grid.sample_offsets[k], grid.size)
        if array is None:
            array = np.empty((*grid.size, len(groups)), dtype=pixels.dtype)
        elif not np.can_cast(pixels.dtype, array.dtype):  # a slice with another rescale slope
            array = array.astype(np.result_type(array.dtype, pixels.dtype))
        array[:, :, k] = pixels
    if dropped:
        shown = ", ".join(dropped[:3]) + (f" and {len(dropped) - 3} more" if len(dropped) > 3 else "")
        _note(f"{folder}: dropped {len(dropped)} duplicate slice(s), same position and pixels as another file "
              f"(a re-send): {shown}")
    if grid.sample_offsets is not None:
        _note(f"{folder}: the slices are sheared by a {grid.tilt_degrees:.1f} degree gantry tilt (or an "
              "ImageOrientationPatient tilted against the slice positions); each slice was shifted within its "
              "plane onto an orthogonal grid (linear interpolation, as dcm2niix and Slicer do)")
    return array


def _read_slice(file: Path) -> np.ndarray:
    """One slice as (i, j), rescaled to HU by GDCM as the series reader does."""
    return sitk.GetArrayFromImage(sitk.ReadImage(str(file)))[0].T


def _shift_in_plane(pixels: np.ndarray, offset: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Output (i, j) takes the slice's value at (i, j) + offset, by linear interpolation; outside the slice the
    slice's lowest value (air, or the scanner's own padding)."""
    shifted = ndimage.affine_transform(pixels.astype(np.float32), np.ones(2), offset=offset, output_shape=size,
                                       order=1, cval=float(pixels.min()))
    return np.rint(shifted).astype(pixels.dtype) if pixels.dtype.kind in "iu" else shifted.astype(pixels.dtype)


def _text(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{value:g}" for value in values) + ")"


def _note(message: str) -> None:
    """A repair the user should know of: on stderr, where the CLI's errors go, and never silent."""
    print(f"liverseg: note: {message}", file=sys.stderr)
