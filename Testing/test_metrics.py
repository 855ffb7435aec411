"""Dice and volumes against cases computed by hand."""

import math

import numpy as np
import pytest

from LiverSegLib.metrics import dice_scores
from LiverSegLib.volumetry import liver_volumes


def test_dice_of_half_overlapping_liver_by_hand():
    reference = np.zeros((4, 4, 4), np.uint8)
    prediction = np.zeros_like(reference)
    reference[0:2] = 1  # 32 voxels
    prediction[1:3] = 1  # 32 voxels, 16 shared
    scores = dice_scores(prediction, reference)
    assert scores["dice_liver"] == pytest.approx(2 * 16 / 64)
    assert math.isnan(scores["dice_tumour"])  # no reference tumour: undefined, not 0 or 1


def test_liver_dice_counts_tumour_as_liver_and_tumour_separately():
    reference = np.zeros((10, 10, 10), np.uint8)
    reference[2:8, 2:8, 2:8] = 1
    reference[4:6, 4:6, 4:6] = 2  # 8 tumour voxels inside a 216-voxel organ
    prediction = reference.copy()
    prediction[4:6, 4:6, 4] = 1  # half the tumour called liver
    scores = dice_scores(prediction, reference)
    assert scores["dice_liver"] == pytest.approx(1.0)
    assert scores["dice_tumour"] == pytest.approx(2 * 4 / (4 + 8))


def test_missed_liver_scores_zero_and_shapes_must_agree():
    reference = np.zeros((5, 5, 5), np.uint8)
    reference[1:3, 1:3, 1:3] = 1
    assert dice_scores(np.zeros_like(reference), reference)["dice_liver"] == 0.0
    with pytest.raises(ValueError, match="shape"):
        dice_scores(np.zeros((5, 5, 4), np.uint8), reference)


def test_volumes_in_ml():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[:5] = 1
    labels[0, 0, :4] = 2
    volumes = liver_volumes(labels, voxel_ml=0.002)
    assert volumes.liver_ml == pytest.approx(500 * 0.002)
    assert volumes.tumour_ml == pytest.approx(4 * 0.002)


def test_lesions_are_counted_from_10_mm_and_found_when_a_fifth_is_labelled():
    from LiverSegLib.metrics import lesion_detection

    reference = np.zeros((40, 40, 40), np.uint8)
    reference[5:15, 5:15, 5:15] = 2  # 10 mm cube at 1 mm: 12.4 mm equivalent sphere
    reference[25:35, 25:35, 25:35] = 2
    reference[2, 30, 30] = 2  # 1 voxel: under 10 mm, not counted
    prediction = np.zeros_like(reference)
    prediction[5:15, 5:15, 5:7] = 2  # 20 % of the first lesion
    prediction[25:35, 25:35, 25:26] = 2  # 10 % of the second
    found = lesion_detection(prediction, reference, (1.0, 1.0, 1.0))
    assert [f for _, f in found] == [True, False]
    assert all(d == pytest.approx(12.4, abs=0.1) for d, _ in found)
    assert lesion_detection(prediction, np.zeros_like(reference), (1.0, 1.0, 1.0)) == []
