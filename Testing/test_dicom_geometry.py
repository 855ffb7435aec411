"""Wrong geometry is never silent (issue 13): a DICOM series is placed where its headers say, repaired only
where that invents nothing (an exact duplicate dropped, a gantry tilt shifted in-plane), refused otherwise;
a NIfTI whose affine places no voxel gets the one-line error.

Each series is written here from a phantom with SimpleITK, one file per slice, then given the defect by its
per-file tags (ImagePositionPatient, ImageOrientationPatient) or by adding or removing a file."""

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from LiverSegLib.errors import LiverSegError
from LiverSegLib.phantom import make_phantom
from LiverSegLib.volume import LPS_TO_RAS, Volume, load_ct

REPOSITORY = Path(__file__).resolve().parents[1]
SHAPE, SPACING = (48, 48, 24), (6.0, 6.0, 12.0)
START = np.array([10.0, -20.0, -100.0])  # IPP of the first slice, LPS mm
AXIAL = np.array([[1.0, 0, 0], [0, 1.0, 0]])
# tan(26.6 deg) = 1/2: the slices step one 6 mm pixel sideways per 12 mm along their normal, so the in-plane
# shift that undoes the tilt is a whole pixel and each slice must come back with its pixels unchanged.
TILT = np.arctan(0.5)


@dataclass
class Written:
    """One slice as written: where its header puts it and what it holds."""

    position: np.ndarray  # LPS mm
    pixels: np.ndarray  # (i, j)


@pytest.fixture(scope="module")
def ct() -> Volume:
    return make_phantom(SHAPE, SPACING, seed=3)[0]


def along_normal(count: int, spacing: float = SPACING[2], orientation: np.ndarray = AXIAL) -> np.ndarray:
    """Positions of a regular, untilted stack."""
    normal = np.cross(*orientation)
    return START + np.outer(np.arange(count) * spacing, normal)


def tilted_orientation(angle: float) -> np.ndarray:
    """The IOP of a gantry tilted by ``angle`` about the patient's left-right axis."""
    return np.array([[1.0, 0, 0], [0, np.cos(angle), np.sin(angle)]])


def write_series(ct: Volume, folder: Path, positions: np.ndarray, orientation: np.ndarray = AXIAL,
                 slices: list[int] | None = None, prefix: str = "file") -> list[Written]:
    """Write ct's axial slices ``slices`` (default: all, in order) at ``positions``, one file each. The file
    names are shuffled so that only the headers can put the slices in order."""
    import SimpleITK as sitk

    slices = list(range(len(positions))) if slices is None else slices
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(ct.array.transpose(2, 1, 0))
    image.SetSpacing(tuple(float(s) for s in ct.spacing))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # else the writer makes a new SeriesInstanceUID per slice
    names = np.random.default_rng(0).permutation(len(positions))
    written = []
    for n, (k, position) in enumerate(zip(slices, positions)):
        slice_ = image[:, :, k]
        for tag, value in (("0020|000e", "1.2.826.0.1.3680043.2.1125.13.1"), ("0008|0060", "CT"),
                           ("0020|0013", str(n + 1)), ("0020|0032", "\\".join(f"{x:.6f}" for x in position)),
                           ("0020|0037", "\\".join(f"{x:.6f}" for x in orientation.ravel())),
                           ("0028|1052", "0"), ("0028|1053", "1")):
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{prefix}{names[n]:03d}.dcm"))
        writer.Execute(slice_)
        written.append(Written(np.asarray(position, dtype=float), ct.array[:, :, k]))
    return written


def assert_placed(volume: Volume, written: list[Written]) -> None:
    """Every written slice lies in a plane of the grid, its first pixel on a voxel within 0.1 mm of its IPP,
    and holds its pixels unchanged there: the affine places each slice where its header says."""
    to_index = np.linalg.inv(volume.affine)
    for slice_ in written:
        index = (to_index @ LPS_TO_RAS @ [*slice_.position, 1.0])[:3]
        nearest = np.round(index)
        error_mm = np.linalg.norm(volume.affine[:3, :3] @ (index - nearest))
        assert error_mm < 0.1, f"slice at {slice_.position} lies {error_mm:.2f} mm from the nearest voxel"
        i, j, k = nearest.astype(int)
        rows, columns = slice_.pixels.shape
        np.testing.assert_array_equal(volume.array[i:i + rows, j:j + columns, k], slice_.pixels)


def assert_orthogonal(volume: Volume) -> None:
    gram = volume.affine[:3, :3].T @ volume.affine[:3, :3]
    np.testing.assert_allclose(gram, np.diag(np.diag(gram)), atol=1e-6)


def refusal(folder: Path) -> str:
    with pytest.raises(LiverSegError) as error:
        load_ct(folder)
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(folder)), message
    return message


# --------------------------------------------------------------------------------------------- placed as written


def test_a_clean_series_is_placed_slice_by_slice(tmp_path, ct, capsys):
    written = write_series(ct, tmp_path / "clean", along_normal(SHAPE[2]))
    volume = load_ct(tmp_path / "clean")
    assert volume.array.shape == SHAPE
    np.testing.assert_allclose(volume.spacing, SPACING, atol=1e-6)
    assert_placed(volume, written)
    assert capsys.readouterr().err == "", "a clean series loads without notes"


def test_an_exact_duplicate_is_dropped_with_a_note(tmp_path, ct, capsys):
    positions = along_normal(SHAPE[2])
    write_series(ct, tmp_path / "clean", positions)
    clean = load_ct(tmp_path / "clean")
    # Slice 5 sent twice (a PACS re-send: a new file, its own SOPInstanceUID, the same position and pixels).
    written = write_series(ct, tmp_path / "resent", np.vstack([positions, positions[5]]),
                           slices=[*range(SHAPE[2]), 5])
    capsys.readouterr()
    volume = load_ct(tmp_path / "resent")
    assert volume.array.shape == clean.array.shape == SHAPE
    np.testing.assert_array_equal(volume.array, clean.array)
    np.testing.assert_allclose(volume.affine, clean.affine, atol=1e-6)
    assert_placed(volume, written)
    note = capsys.readouterr().err
    assert "dropped 1 duplicate slice" in note and "same position and pixels" in note, note


def test_a_conflicting_duplicate_is_refused_naming_its_position(tmp_path, ct):
    positions = along_normal(SHAPE[2])
    write_series(ct, tmp_path / "conflict", np.vstack([positions, positions[5]]), slices=[*range(SHAPE[2]), 6])
    message = refusal(tmp_path / "conflict")
    assert "two different slices at one position" in message and "(10, -20, -40) mm" in message, message
    assert "keep the right one" in message, message


# --------------------------------------------------------------------------------------------- gantry tilt


@pytest.mark.parametrize("encoding", ["in the positions", "in the orientation"])
def test_a_tilted_gantry_is_resampled_onto_a_grid_through_every_slice(tmp_path, ct, capsys, encoding):
    """A tilt is written either way by scanners: axial IOP with positions stepping sideways, or a tilted IOP
    with positions stepping along the table (z). Both are the same sheared stack."""
    if encoding == "in the positions":
        orientation = AXIAL
        positions = along_normal(SHAPE[2]) + np.outer(np.arange(SHAPE[2]) * SPACING[1], [0, 1.0, 0])
    else:
        orientation = tilted_orientation(TILT)
        positions = START + np.outer(np.arange(SHAPE[2]) * SPACING[2] / np.cos(TILT), [0, 0, 1.0])
    written = write_series(ct, tmp_path / "tilted", positions, orientation)
    volume = load_ct(tmp_path / "tilted")
    assert_orthogonal(volume)
    assert volume.array.shape == (SHAPE[0], SHAPE[1] + SHAPE[2] - 1, SHAPE[2]), "widened to hold every slice whole"
    np.testing.assert_allclose(volume.spacing, SPACING, atol=1e-4)
    assert_placed(volume, written)
    note = capsys.readouterr().err
    assert "26.6 degree gantry tilt" in note and "shifted within its plane" in note, note


def test_a_tilt_that_is_not_a_whole_pixel_still_places_every_slice_on_a_grid_plane(tmp_path, ct):
    angle = np.deg2rad(7.0)
    positions = START + np.outer(np.arange(SHAPE[2]) * SPACING[2] / np.cos(angle), [0, 0, 1.0])
    write_series(ct, tmp_path / "tilted", positions, tilted_orientation(angle))
    volume = load_ct(tmp_path / "tilted")
    assert_orthogonal(volume)
    index = np.linalg.inv(volume.affine) @ LPS_TO_RAS @ np.c_[positions, np.ones(len(positions))].T
    np.testing.assert_allclose(index[2], np.arange(SHAPE[2]), atol=0.1 / SPACING[2])  # slice k on plane k
    shift_mm = SPACING[2] * np.tan(angle)
    np.testing.assert_allclose(np.diff(index[1]), shift_mm / SPACING[1], atol=1e-3)  # one shift per slice


def test_orientation_far_from_the_positions_is_refused(tmp_path, ct):
    write_series(ct, tmp_path / "steep", along_normal(SHAPE[2], orientation=AXIAL), tilted_orientation(np.deg2rad(60)))
    message = refusal(tmp_path / "steep")
    assert "60 degrees" in message and "ImageOrientationPatient disagrees with ImagePositionPatient" in message


def test_positions_off_a_straight_line_are_refused(tmp_path, ct):
    positions = along_normal(SHAPE[2])
    positions[9, 0] += 3.0  # one slice 3 mm to the side of its neighbours
    write_series(ct, tmp_path / "crooked", positions)
    assert "do not lie on a straight line" in refusal(tmp_path / "crooked")


def test_mixed_orientations_are_refused(tmp_path, ct):
    positions = along_normal(SHAPE[2])
    write_series(ct, tmp_path / "mixed", positions[:12])
    rotated = np.array([[np.cos(0.1), np.sin(0.1), 0], [-np.sin(0.1), np.cos(0.1), 0]])  # 5.7 deg in-plane
    write_series(ct, tmp_path / "mixed", positions[12:], rotated, slices=list(range(12, SHAPE[2])), prefix="b")
    assert "different ImageOrientationPatient" in refusal(tmp_path / "mixed")


# --------------------------------------------------------------------------------------------- spacing


def test_a_missing_slice_is_refused_naming_the_gap(tmp_path, ct):
    positions = along_normal(SHAPE[2])
    keep = [k for k in range(SHAPE[2]) if k != 10]
    write_series(ct, tmp_path / "gap", positions[keep], slices=keep)
    message = refusal(tmp_path / "gap")
    assert "1 slice(s) missing" in message and "(10, -20, 8) and (10, -20, 32) mm" in message, message
    assert "24 mm gap in a series spaced 12 mm" in message and "send or export it again" in message, message


def test_uneven_spacing_is_refused(tmp_path, ct):
    steps = np.where(np.arange(SHAPE[2]) < 12, 12.0, 9.0)
    positions = START + np.outer(np.concatenate([[0], np.cumsum(steps[1:])]), [0, 0, 1.0])
    write_series(ct, tmp_path / "uneven", positions)
    message = refusal(tmp_path / "uneven")
    assert "unevenly spaced (9 to 12 mm apart" in message and "regular grid" in message, message


def test_jitter_within_the_tolerance_is_accepted(tmp_path, ct):
    positions = along_normal(SHAPE[2])
    positions[:, 2] += np.random.default_rng(1).uniform(-0.02, 0.02, SHAPE[2])  # positions rounded by a scanner
    written = write_series(ct, tmp_path / "jitter", positions)
    assert_placed(load_ct(tmp_path / "jitter"), written)


# --------------------------------------------------------------------------------------------- affine of a NIfTI


def write_nifti_with_sform(path: Path, sform: np.ndarray) -> Path:
    """A CT-like NIfTI whose only geometry is ``sform``, written through the header: nibabel refuses to build an
    image from an affine it cannot decompose into a qform."""
    array = np.full((24, 24, 12), -1000, dtype=np.int16)
    array[6:18, 6:18, 3:9] = 60
    header = nib.Nifti1Header()
    header.set_data_shape(array.shape)
    header.set_data_dtype(array.dtype)
    header["qform_code"], header["sform_code"] = 0, 1
    header["srow_x"], header["srow_y"], header["srow_z"] = sform[:3]
    nib.save(nib.Nifti1Image(array, None, header=header), str(path))
    return path


@pytest.mark.parametrize("problem, sform, expected", [
    ("singular", np.diag([1.5, 1.5, 0.0, 1.0]), "is singular"),
    ("nan", np.where(np.eye(4) > 0, np.nan, 0.0), "holds NaN"),
])
def test_an_affine_that_places_no_voxel_is_the_one_line_error(tmp_path, problem, sform, expected):
    ct = write_nifti_with_sform(tmp_path / f"{problem}.nii.gz", sform)
    env = dict(os.environ, PYTHONPATH=str(REPOSITORY / "LiverSeg"))
    result = subprocess.run([sys.executable, "-m", "LiverSegLib.cli", "segment", str(ct), "--method", "em",
                             "-o", str(tmp_path / "liver.nii.gz")], capture_output=True, text=True, env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("liverseg: error:") and expected in lines[0], lines
    assert "fix the header" in lines[0], lines
    assert not (tmp_path / "liver.nii.gz").exists()
