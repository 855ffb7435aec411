"""Shared post-processing: the liver piece where the liver lies, its tumours and its holes; nothing else."""

import numpy as np
import torch

from LiverSegLib.metrics import dice_scores
from LiverSegLib.phantom import make_phantom
from LiverSegLib.preprocessing import clean_labels
from LiverSegLib.segmenters.deep import DeepModel, preprocessing_transforms, volume_to_metatensor
from LiverSegLib.segmenters.unet import UNetSegmenter


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


def test_the_liver_piece_kept_is_the_one_in_the_right_upper_abdomen_not_the_largest():
    """A weak network's largest 'liver' piece can be a pelvic blob; the piece under the lungs on the right wins."""
    ct, reference = make_phantom((96, 96, 120), (4.0, 4.0, 4.0), seed=2, n_tumours=0)
    config = UNetSegmenter.preset_config("default", (4.0, 4.0, 4.0), (32, 32, 32))
    model = DeepModel(None, config, None, torch.device("cpu"))
    image = model.preprocess(ct)
    data = {"image": volume_to_metatensor(ct), "label": volume_to_metatensor(reference)}
    for transform in preprocessing_transforms(config.preprocessing, ("image", "label")):
        data = transform(data)
    labels = data["label"][0].numpy().astype(np.uint8)
    liver_voxels = int((labels >= 1).sum())
    # A blob 1.5 times the liver's size, low in the pelvis, on the right.
    side = int(round((1.5 * liver_voxels) ** (1 / 3)))
    blob = np.zeros_like(labels, dtype=bool)
    x0 = labels.shape[0] // 2
    blob[x0 : x0 + side, 10 : 10 + side, 1 : 1 + side] = True
    assert not (blob & (labels >= 1)).any() and blob.sum() > liver_voxels
    labels[blob] = 1
    assert (clean_labels(labels) >= 1).sum() == blob.sum(), "by size alone the blob wins"
    kept = model.postprocess(labels, image, ct)
    assert (kept >= 1).sum() > 0.9 * (reference.array >= 1).sum()
    assert dice_scores(kept, reference.array)["dice_liver"] > 0.9


def test_working_grid_equals_monai_orientation_and_spacing_on_a_permuted_flipped_ct():
    """to_working_grid reorients by numpy views (memory, issue 13): same voxels and affine as MONAI's
    Orientation + Spacing on the float32 CT."""
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Compose, Orientation, Spacing

    from LiverSegLib.preprocessing import to_working_grid
    from LiverSegLib.volume import Volume

    rng = np.random.default_rng(0)
    array = rng.integers(-1000, 400, size=(20, 24, 16)).astype(np.int16)
    affine = np.array([[0.0, -0.8, 0.0, 10.0], [0.0, 0.0, 1.5, -20.0], [-0.7, 0.0, 0.0, 5.0], [0, 0, 0, 1]])
    ct = Volume(array, affine)
    image = MetaTensor(torch.from_numpy(array.astype(np.float32)[None]), affine=torch.as_tensor(affine))
    expected = Compose([Orientation(axcodes="RAS", labels=None),
                        Spacing(pixdim=(2.5, 2.5, 2.5), mode="bilinear", padding_mode="border", dtype=torch.float32)])(image)
    working = to_working_grid(ct, (2.5, 2.5, 2.5))
    np.testing.assert_array_equal(working.numpy(), expected.numpy())
    np.testing.assert_allclose(working.affine.numpy(), expected.affine.numpy(), rtol=0, atol=1e-9)
