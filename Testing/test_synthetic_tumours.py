"""Synthetic tumours: inside the liver, of the drawn sizes and contrasts, reproducible, in the training pipeline."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from LiverSegLib.augmentation import RandSyntheticTumoursd
from LiverSegLib.phantom import make_phantom
from LiverSegLib.preprocessing import LIVER, TUMOUR, UNSURE
from LiverSegLib.synthetic_tumours import DIAMETER_MM, MAX_LIVER_SHARE, draw_lesions, insert_tumours, paint_lesions


@pytest.fixture(scope="module")
def phantom():
    ct, labels = make_phantom(shape=(96, 96, 48), spacing=(3.0, 3.0, 4.0), seed=3, n_tumours=0)
    return ct, labels.array == LIVER


def test_lesions_stay_inside_the_liver_and_are_darker_than_it(phantom) -> None:
    ct, liver = phantom
    rng = np.random.default_rng(0)
    lesions = draw_lesions(rng, liver, ct.affine, count=4, kinds={"hypodense": 1.0}, contrast_hu=60.0)
    image, tumour = paint_lesions(ct.array, liver, ct.affine, lesions, rng)
    assert tumour.any()
    assert not (tumour & ~liver).any(), "a lesion never leaves the liver mask"
    assert np.array_equal(image[~liver], ct.array[~liver].astype(np.float32)), "nothing outside the liver changes"
    assert image[tumour].mean() < ct.array[liver & ~tumour].mean() - 30.0


def test_sizes_counts_and_volume_budget(phantom) -> None:
    ct, liver = phantom
    for seed in range(10):
        lesions = draw_lesions(np.random.default_rng(seed), liver, ct.affine)
        assert 1 <= len(lesions) <= 6
        assert all(l.diameter_mm <= DIAMETER_MM[1] + 1e-6 for l in lesions)
        total_ml = sum(np.pi / 6 * l.diameter_mm**3 for l in lesions) / 1000
        assert total_ml <= MAX_LIVER_SHARE * liver.sum() * np.prod(ct.spacing) / 1000 + 1e-6
    placements = {l.placement for seed in range(30) for l in draw_lesions(np.random.default_rng(seed), liver, ct.affine)}
    assert placements == {"anywhere", "dome", "subcapsular"}


def test_same_seed_same_tumours_and_small_livers_get_none(phantom) -> None:
    ct, liver = phantom
    a = insert_tumours(ct.array, liver, ct.affine, np.random.default_rng(5))
    b = insert_tumours(ct.array, liver, ct.affine, np.random.default_rng(5))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    tiny = np.zeros_like(liver)
    tiny[40:43, 40:43, 20:22] = True
    image, tumour, lesions = insert_tumours(ct.array, tiny, ct.affine, np.random.default_rng(5))
    assert lesions == [] and not tumour.any() and np.array_equal(image, ct.array.astype(np.float32))


def _training_volume(phantom) -> dict:
    ct, liver = phantom
    label = liver.astype(np.float32)
    label[:10] = np.where(liver[:10], UNSURE, 0)  # unsure voxels are never painted
    affine = torch.as_tensor(ct.affine)
    window = np.clip((ct.array.astype(np.float32) + 200.0) / 500.0, 0.0, 1.0)
    return {"name": "phantom", "image": MetaTensor(torch.from_numpy(window)[None], affine=affine),
            "label": MetaTensor(torch.from_numpy(label)[None], affine=affine)}


def test_transform_labels_the_painted_lesions_tumour_only_on_liver_voxels(phantom) -> None:
    data = _training_volume(phantom)
    transform = RandSyntheticTumoursd("image", "label", hu_window=(-200.0, 300.0), prob=1.0)
    transform.set_random_state(seed=1)
    out = transform(data)
    label, before = np.asarray(out["label"][0]), np.asarray(data["label"][0])
    assert (label == TUMOUR).any()
    assert set(np.unique(before[label == TUMOUR]).tolist()) == {LIVER}
    assert np.array_equal(label == UNSURE, before == UNSURE)
    changed = np.asarray(out["image"][0]) != np.asarray(data["image"][0])
    assert not (changed & (before != LIVER)).any()
    assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
    assert isinstance(out["image"], MetaTensor)
    assert RandSyntheticTumoursd("image", "label", hu_window=(-200.0, 300.0), prob=0.0)(data) == data


def test_transform_warns_once_naming_a_case_with_too_little_liver(phantom) -> None:
    data = _training_volume(phantom)
    data["label"] = data["label"] * 0
    data["name"] = "case_without_liver"
    transform = RandSyntheticTumoursd("image", "label", hu_window=(-200.0, 300.0), prob=1.0)
    with pytest.warns(UserWarning, match="case_without_liver: its liver label holds 0 mL"):
        out = transform(data)
    assert not (np.asarray(out["label"]) == TUMOUR).any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        transform(data)  # once per case
