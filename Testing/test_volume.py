"""CT reading and labelmap writing keep geometry exactly; bad images are refused with a clear message."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from LiverSegLib.errors import LiverSegError
from LiverSegLib.phantom import make_phantom
from LiverSegLib.volume import Volume, atomic_output, load_ct, load_volume, save_volume


def oblique_lps_affine() -> np.ndarray:
    """A rotated, LPS-flipped grid with anisotropic voxels: the hard case for geometry bugs."""
    angle = np.deg2rad(17)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1, -1, 1]) @ rotation @ np.diag([3.0, 3.0, 5.0])
    affine[:3, 3] = [120.0, -35.5, 40.25]
    return affine


AFFINES = {"ras": None, "oblique_lps": oblique_lps_affine()}


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii", ".nrrd"])
@pytest.mark.parametrize("grid", list(AFFINES))
def test_save_and_load_keep_voxels_and_affine(tmp_path, suffix, grid):
    ct, labels = make_phantom((48, 40, 24), (3.0, 3.0, 5.0), seed=1, affine=AFFINES[grid])
    path = save_volume(labels, tmp_path / f"labels{suffix}")
    loaded = load_volume(path)
    np.testing.assert_array_equal(loaded.array, labels.array)
    np.testing.assert_allclose(loaded.affine, labels.affine, atol=1e-5)


def test_nifti_written_with_matching_qform_and_sform(tmp_path):
    _, labels = make_phantom((32, 32, 16), (4.0, 4.0, 6.0), affine=oblique_lps_affine())
    image = nib.load(str(save_volume(labels, tmp_path / "l.nii.gz")))
    np.testing.assert_allclose(image.get_qform(), image.get_sform(), atol=1e-5)
    assert int(image.header["qform_code"]) == int(image.header["sform_code"]) == 1


def test_dicom_series_matches_its_nifti_conversion(shared_data):
    dicom = load_ct(shared_data / "fixtures" / "totalseg_example_ct_dicom")
    nifti = load_ct(shared_data / "imagesTr" / "totalseg_dicom_example.nii.gz")
    np.testing.assert_array_equal(dicom.array, nifti.array)
    np.testing.assert_allclose(dicom.affine, nifti.affine, atol=1e-3)


def write_nifti(path, array, affine=None):
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def ct_like(shape=(20, 20, 10)):
    array = np.full(shape, -1000, dtype=np.int16)
    array[5:15, 5:15] = 40
    return array


@pytest.mark.parametrize(
    "name, array, expected",
    [
        ("slice", ct_like()[:, :, 0], "2D image"),
        ("series", np.stack([ct_like()] * 5, axis=-1), "4D image"),
        ("rgb", np.stack([ct_like()] * 3, axis=-1)[..., :3].astype(np.uint8), "RGB"),
        ("mr", np.random.default_rng(0).integers(0, 800, (20, 20, 10)).astype(np.int16), "Hounsfield"),
        ("nan", np.where(ct_like() > 0, np.nan, -1000.0).astype(np.float32), "NaN"),
        ("constant", np.full((20, 20, 10), -1000, np.int16), "every voxel is -1000"),
        ("thin", ct_like((20, 20, 1)), "length < 2"),
    ],
)
def test_not_a_ct_is_refused_naming_the_problem(tmp_path, name, array, expected):
    path = write_nifti(tmp_path / f"{name}.nii.gz", array)
    with pytest.raises(LiverSegError, match=expected) as error:
        load_ct(path)
    assert str(path) in str(error.value)


def test_truncated_file_is_refused(tmp_path):
    good = write_nifti(tmp_path / "good.nii.gz", ct_like((64, 64, 32)))
    data = good.read_bytes()
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(LiverSegError, match="truncated"):
        load_ct(truncated)


def test_not_an_image_and_missing_file_are_refused(tmp_path):
    text = tmp_path / "notes.nii.gz"
    text.write_bytes(gzip.compress(b"this is not an image"))
    with pytest.raises(LiverSegError, match="cannot read"):
        load_ct(text)
    with pytest.raises(LiverSegError, match="no such file"):
        load_ct(tmp_path / "absent.nii.gz")
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(LiverSegError, match="no DICOM series"):
        load_ct(empty)


def test_failed_write_keeps_the_previous_output(tmp_path):
    target = tmp_path / "out.nii.gz"
    target.write_bytes(b"previous result")
    with pytest.raises(RuntimeError):
        with atomic_output(target) as temp:
            temp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"previous result"
    assert [p.name for p in tmp_path.iterdir()] == ["out.nii.gz"]


def test_unwritable_destination_is_refused_before_writing(tmp_path):
    volume = Volume(np.zeros((4, 4, 4), np.uint8), np.eye(4))
    with pytest.raises(LiverSegError, match="does not exist"):
        save_volume(volume, tmp_path / "missing" / "out.nii.gz")
    with pytest.raises(LiverSegError, match="unknown output type"):
        save_volume(volume, tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []
