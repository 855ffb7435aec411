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


def test_a_liver_reaching_the_last_slice_keeps_it_on_the_ct_grid():
    """The working grid's last sample may fall inside the CT's last slice; the mask must not fade there."""
    from LiverSegLib.preprocessing import to_input_grid, to_working_grid
    from LiverSegLib.volume import Volume

    ct = Volume(np.zeros((20, 20, 21), np.int16), np.diag([2.0, 2.0, 3.0, 1.0]))  # 21 slices of 3 mm: 60 mm
    working = to_working_grid(ct, (2.5, 2.5, 2.5))
    labels = np.ones(working.shape[1:], np.uint8)
    back = to_input_grid(labels, working.affine.numpy(), ct)
    assert back[:, :, 0].all() and back[:, :, -1].all() and back[0].all() and back[-1].all()
