"""The EM segmenter on phantoms and, when present, on the real labelled CT."""

import threading

import numpy as np
import pytest

from LiverSegLib.dataset import load_msd_dataset, read_case
from LiverSegLib.errors import CancelledError, LiverSegError
from LiverSegLib.metrics import dice_scores
from LiverSegLib.phantom import make_phantom
from LiverSegLib.segmenters import create_segmenter


@pytest.fixture(scope="module")
def contrast_phantom():
    return make_phantom(seed=1, contrast=True)


def test_em_segments_a_contrast_enhanced_phantom(contrast_phantom):
    ct, reference = contrast_phantom
    labels = create_segmenter("em").segment(ct)
    assert labels.shape == ct.array.shape and labels.dtype == np.uint8
    scores = dice_scores(labels, reference.array)
    assert scores["dice_liver"] >= 0.85
    assert scores["dice_tumour"] >= 0.5


def test_em_is_deterministic_and_follows_the_anatomy_on_any_grid(contrast_phantom):
    ct, _ = contrast_phantom
    flipped = ct.with_array(ct.array[::-1, :, ::-1].copy())
    flipped.affine = ct.affine @ np.array(
        [[-1, 0, 0, ct.array.shape[0] - 1], [0, 1, 0, 0], [0, 0, -1, ct.array.shape[2] - 1], [0, 0, 0, 1]]
    )
    segmenter = create_segmenter("em")
    labels = segmenter.segment(ct)
    np.testing.assert_array_equal(segmenter.segment(ct), labels)
    flipped_labels = segmenter.segment(flipped)
    assert dice_scores(flipped_labels[::-1, :, ::-1], labels)["dice_liver"] >= 0.98


def test_em_reports_progress_and_cancels(contrast_phantom):
    ct, _ = contrast_phantom
    seen = []
    create_segmenter("em").segment(ct, progress=lambda fraction, message: seen.append(fraction))
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) >= 5

    cancel = threading.Event()

    def cancel_after_first_step(fraction, message):
        cancel.set()

    with pytest.raises(CancelledError):
        create_segmenter("em").segment(ct, progress=cancel_after_first_step, cancel=cancel)


def test_em_takes_no_model_and_needs_a_body():
    with pytest.raises(LiverSegError, match="takes no --model"):
        create_segmenter("em", model_path="x.pt")
    ct, _ = make_phantom((32, 32, 16), (5.0, 5.0, 8.0))
    air = ct.with_array(np.full(ct.array.shape, -1000, np.int16))
    air.array[0, 0, 0] = 0
    with pytest.raises(LiverSegError):
        create_segmenter("em").segment(air)


def test_em_on_real_ct_reaches_the_target_and_invents_no_tumour(shared_data):
    scores, invented_ml = {}, {}
    for case in load_msd_dataset(shared_data):
        ct, reference = read_case(case)
        labels = create_segmenter("em").segment(ct)
        scores[case.name] = dice_scores(labels, reference.array)["dice_liver"]
        invented_ml[case.name] = float((labels == 2).sum() * ct.voxel_ml)
    assert np.mean(list(scores.values())) >= 0.90, scores
    # The one manual label (CHAOS) is of a healthy liver: any tumour there is invented.
    assert invented_ml.get("chaos_ct_sample", 0.0) < 5.0, invented_ml
