"""Shared post-processing: the liver's largest piece, its tumours and its holes; nothing else."""

import numpy as np

from LiverSegLib.preprocessing import clean_labels


def test_keeps_largest_liver_with_touching_tumours_and_fills_holes():
    labels = np.zeros((40, 20, 20), np.uint8)
    labels[2:20, 2:18, 2:18] = 1  # liver
    labels[8:12, 8:12, 8:12] = 0  # a vessel the segmenter missed: a hole
    labels[20:23, 8:12, 8:12] = 2  # tumour at the liver's edge
    labels[24:38, 5:15, 5:15] = 1  # a smaller neighbour wrongly called liver ...
    labels[23, 8:12, 8:12] = 2  # ... that a tumour call bridges to the liver
    labels[0, 0, 0] = 2  # a stray tumour voxel away from the liver
    cleaned = clean_labels(labels)
    assert (cleaned[8:12, 8:12, 8:12] == 1).all()  # hole filled
    assert (cleaned[20:24, 8:12, 8:12] == 2).all()  # tumours touching the liver kept
    assert not cleaned[25:38].any()  # the neighbour is not joined through the tumour
    assert cleaned[0, 0, 0] == 0


def test_empty_prediction_stays_empty():
    assert not clean_labels(np.zeros((5, 5, 5), np.uint8)).any()
