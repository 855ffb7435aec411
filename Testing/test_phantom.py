"""Tests of the synthetic CT phantom: determinism, types, anatomy in RAS, HU ranges and the MSD writer."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from LiverSegLib.phantom import default_affine, make_phantom, write_phantom_dataset
from LiverSegLib.volume import Volume, check_ct

SMALL = {"shape": (64, 64, 32), "spacing": (4.0, 4.0, 6.0)}


@pytest.fixture(scope="module")
def enhanced() -> tuple[Volume, Volume]:
    return make_phantom(**SMALL, seed=1)


@pytest.fixture(scope="module")
def unenhanced() -> tuple[Volume, Volume]:
    return make_phantom(**SMALL, seed=1, contrast=False)


def ras_of(volume: Volume, mask: np.ndarray) -> np.ndarray:
    """RAS mm of the voxels in ``mask``, shape (N, 3)."""
    return np.argwhere(mask) @ volume.affine[:3, :3].T + volume.affine[:3, 3]


def eroded(mask: np.ndarray) -> np.ndarray:
    """The mask without its edge voxels, whose HU the partial-volume blur mixes with neighbours."""
    return ndimage.binary_erosion(mask)


def test_same_seed_gives_same_arrays_and_another_seed_differs() -> None:
    ct_a, labels_a = make_phantom(**SMALL, seed=7)
    ct_b, labels_b = make_phantom(**SMALL, seed=7)
    ct_c, labels_c = make_phantom(**SMALL, seed=8)
    np.testing.assert_array_equal(ct_a.array, ct_b.array)
    np.testing.assert_array_equal(labels_a.array, labels_b.array)
    assert not np.array_equal(labels_a.array, labels_c.array)
    assert not np.array_equal(ct_a.array, ct_c.array)


def test_default_phantom_types_and_grid() -> None:
    ct, labels = make_phantom()
    assert ct.array.shape == labels.array.shape == (128, 128, 64)
    assert ct.array.dtype == np.int16
    assert labels.array.dtype == np.uint8
    np.testing.assert_array_equal(ct.affine, labels.affine)
    np.testing.assert_allclose(ct.spacing, (2.5, 2.5, 4.0))
    # Diagonal RAS affine centred on the origin.
    np.testing.assert_allclose(ct.affine[:3, :3], np.diag([2.5, 2.5, 4.0]))
    np.testing.assert_allclose(ct.affine @ [63.5, 63.5, 31.5, 1.0], [0.0, 0.0, 0.0, 1.0], atol=1e-9)


def test_labels_hold_background_liver_and_the_requested_tumours(enhanced) -> None:
    _, labels = enhanced
    assert set(np.unique(labels.array)) == {0, 1, 2}
    _, n_tumours = ndimage.label(labels.array == 2)
    assert n_tumours == 2
    _, without = make_phantom(**SMALL, seed=1, n_tumours=0)
    assert set(np.unique(without.array)) == {0, 1}


def test_liver_is_in_the_right_upper_abdomen(enhanced) -> None:
    ct, labels = enhanced
    liver = ras_of(labels, labels.array > 0)
    body = ras_of(ct, ct.array > -500)
    assert liver[:, 0].mean() > body[:, 0].mean() + 20.0  # RAS +x is the patient's right
    assert liver[:, 2].mean() > body[:, 2].mean() + 20.0  # RAS +z is superior
    assert (liver[:, 2] > 0).mean() > 0.8  # mostly in the upper half of the field of view


@pytest.mark.parametrize("contrast, low, high", [(True, 85.0, 120.0), (False, 40.0, 70.0)])
def test_liver_hu_matches_the_contrast_phase(contrast: bool, low: float, high: float) -> None:
    ct, labels = make_phantom(**SMALL, seed=2, contrast=contrast)
    liver_hu = ct.array[eroded(labels.array == 1)].mean()
    assert low < liver_hu < high


def test_enhanced_liver_is_brighter_than_unenhanced(enhanced, unenhanced) -> None:
    hu = [ct.array[eroded(labels.array == 1)].mean() for ct, labels in (enhanced, unenhanced)]
    assert hu[0] > hu[1] + 30.0


# The phase's liver HU (~100 / ~55) minus a hypodense metastasis' (~40 / ~30).
@pytest.mark.parametrize("contrast, gap_hu", [(True, 60.0), (False, 25.0)])
def test_tumours_lie_inside_the_liver_and_are_darker(contrast: bool, gap_hu: float) -> None:
    ct, labels = make_phantom(**SMALL, seed=1, contrast=contrast)
    ct_free, labels_free = make_phantom(**SMALL, seed=1, contrast=contrast, n_tumours=0)
    tumour = labels.array == 2
    # Tumours take liver voxels only: the organ and all around it are as in the same patient without them.
    np.testing.assert_array_equal(labels.array > 0, labels_free.array > 0)
    outside = labels_free.array == 0
    np.testing.assert_array_equal(ct.array[outside], ct_free.array[outside])
    # Centred deep in the liver, they are not cut open by its surface (deformation may reach it here and there).
    assert (tumour & ndimage.binary_dilation(outside)).sum() < 0.25 * tumour.sum()
    gap = ct.array[eroded(labels.array == 1)].mean() - ct.array[tumour].mean()
    assert gap_hu - 15.0 < gap < gap_hu + 15.0


@pytest.mark.parametrize("seed", range(4))
def test_tumours_are_separate_lesions_of_the_drawn_size(seed: int) -> None:
    ct, labels = make_phantom(**SMALL, seed=seed, n_tumours=2)
    pieces, count = ndimage.label(labels.array == 2)
    assert count == 2  # this liver has room to keep them apart
    volumes_ml = ndimage.sum_labels(np.ones_like(pieces), pieces, index=[1, 2]) * ct.voxel_ml
    # 20-40 mm across; clipping to the liver, axis ratios and deformation change the volume a little.
    sphere_ml = [np.pi / 6.0 * d**3 / 1000.0 for d in (20.0, 40.0)]
    assert all(0.5 * sphere_ml[0] < v < 1.5 * sphere_ml[1] for v in volumes_ml), volumes_ml


def test_one_tumour_on_the_default_grid_is_in_range() -> None:
    ct, labels = make_phantom(seed=0, n_tumours=1)
    _, count = ndimage.label(labels.array == 2)
    assert count == 1
    tumour_ml = (labels.array == 2).sum() * ct.voxel_ml
    sphere_ml = [np.pi / 6.0 * d**3 / 1000.0 for d in (20.0, 40.0)]
    assert 0.5 * sphere_ml[0] < tumour_ml < 1.5 * sphere_ml[1]


def test_phantom_looks_like_ct(enhanced) -> None:
    ct, _ = enhanced
    hu = ct.array
    check_ct(hu, "phantom")  # raises if LiverSeg would refuse it
    assert (hu < -900).mean() > 0.2  # air around the body
    assert ((hu > -900) & (hu < -700)).sum() > 100  # lung bases
    assert ((hu > -150) & (hu < -50)).sum() > 1000  # fat
    assert (hu > 300).sum() > 100  # vertebrae and ribs


def test_flipped_and_oblique_affines_give_the_same_anatomy_in_ras() -> None:
    shape, spacing = SMALL["shape"], SMALL["spacing"]
    ras = default_affine(shape, spacing)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras
    angle = np.deg2rad(15.0)
    tilt = np.eye(4)
    tilt[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    centroids = {}
    for name, affine in (("ras", ras), ("lps", lps), ("oblique", tilt @ lps)):
        _, labels = make_phantom(shape, spacing, seed=4, affine=affine)
        np.testing.assert_array_equal(labels.affine, affine)
        centroids[name] = [ras_of(labels, labels.array == value).mean(axis=0) for value in (1, 2)]
    for value in (0, 1):  # liver, tumour
        np.testing.assert_allclose(centroids["lps"][value], centroids["ras"][value], atol=0.5)
        np.testing.assert_allclose(centroids["oblique"][value], centroids["ras"][value], atol=4.0)
    assert centroids["ras"][0][0] > 20.0  # the liver really is on the right, not mirrored in both


def test_too_small_field_of_view_for_tumours_raises() -> None:
    with pytest.raises(ValueError, match="liver"):
        make_phantom((16, 16, 8), (2.0, 2.0, 2.0), n_tumours=1)


def test_dataset_round_trips_through_nibabel(tmp_path) -> None:
    affine = np.diag([-4.0, -4.0, 6.0, 1.0])  # LPS-flipped, so a dropped affine would show
    affine[:3, 3] = [120.0, 100.0, -80.0]
    folder = write_phantom_dataset(tmp_path / "Task03_Phantom", n_cases=2, seed=3, shape=(48, 48, 24), affine=affine)
    assert folder == tmp_path / "Task03_Phantom"
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["modality"] == {"0": "CT"}
    assert meta["labels"] == {"0": "background", "1": "liver", "2": "tumour"}
    assert meta["numTraining"] == 2 and meta["numTest"] == 0 and meta["test"] == []
    assert meta["training"][0] == {"image": "./imagesTr/phantom_000.nii.gz", "label": "./labelsTr/phantom_000.nii.gz"}
    arrays = []
    for case in meta["training"]:
        image, label = (nib.load(str(folder / case[key])) for key in ("image", "label"))
        for loaded, dtype in ((image, np.int16), (label, np.uint8)):
            np.testing.assert_allclose(loaded.affine, affine)
            assert int(loaded.header["qform_code"]) == 1 and int(loaded.header["sform_code"]) == 1
            assert loaded.get_data_dtype() == dtype
        arrays.append(np.asanyarray(label.dataobj))
        assert set(np.unique(arrays[-1])) == {0, 1, 2}
    assert not np.array_equal(arrays[0], arrays[1])  # each case is a different patient
