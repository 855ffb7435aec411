"""The augmentation transforms MONAI lacks: partial scans and per-label intensity shifts (synthetic tumours:\ntest_synthetic_tumours.py), and the whole training pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from LiverSegLib.augmentation import RandLabelIntensityd, RandPartialScand, training_transforms
from LiverSegLib.preprocessing import UNSURE
from LiverSegLib.segmenters.unet import UNetSegmenter


def _volume(depth: int = 60) -> dict:
    """Image (1, 32, 32, depth) at 0.5 with a liver box (label 1, slices 20-39) holding a tumour (label 2)."""
    image = torch.full((1, 32, 32, depth), 0.5)
    label = torch.zeros((1, 32, 32, depth))
    label[:, 8:24, 8:24, 20:40] = 1
    label[:, 12:16, 12:16, 28:32] = 2
    return {"image": image, "label": label}


def test_partial_scan_cuts_a_slab_through_the_liver() -> None:
    cut = RandPartialScand(("image", "label"), "label", slice_mm=3.0, thickness_mm=(15.0, 30.0), prob=1.0)
    for seed in range(20):
        cut.set_random_state(seed=seed)
        out = cut(_volume())
        depth = out["image"].shape[-1]
        assert out["label"].shape == out["image"].shape
        assert out["image"].shape[:3] == (1, 32, 32)
        assert 1 <= depth <= 10  # at most 30 mm of 3 mm slices (shorter when the slab meets the volume's end)
        assert (out["label"] >= 1).any(), "the slab goes through the liver"


def test_partial_scan_leaves_volumes_alone_when_not_drawn_or_without_liver() -> None:
    cut = RandPartialScand(("image", "label"), "label", slice_mm=3.0, prob=0.0)
    assert cut(_volume())["image"].shape[-1] == 60
    no_liver = {"image": torch.zeros((1, 8, 8, 60)), "label": torch.zeros((1, 8, 8, 60))}
    assert RandPartialScand(("image", "label"), "label", slice_mm=3.0, prob=1.0)(no_liver)["image"].shape[-1] == 60
    only_unsure = {"image": torch.zeros((1, 8, 8, 60)), "label": torch.zeros((1, 8, 8, 60))}
    only_unsure["label"][..., 30:] = UNSURE  # left out of the loss, so not a liver slice to centre on
    assert RandPartialScand(("image", "label"), "label", slice_mm=3.0, prob=1.0)(only_unsure)["image"].shape[-1] == 60


def test_label_intensity_shifts_each_label_by_its_own_offset() -> None:
    shift = RandLabelIntensityd("image", "label", offset=0.2, sigma=1.0, prob=1.0)
    shift.set_random_state(seed=3)
    data = _volume()
    out = shift(data)["image"][0].numpy()
    liver_core = out[19:21, 19:21, 23:26]  # liver 3+ voxels from the tumour and the liver's edge
    tumour_core = out[13:15, 13:15, 29:31]
    background = out[:3, :3, :5]
    assert np.allclose(background, 0.5), "the image far from any label is untouched"
    assert np.ptp(liver_core) < 1e-3 and abs(liver_core.mean() - 0.5) > 1e-2
    assert abs(tumour_core.mean() - liver_core.mean()) > 1e-3, "tumour and liver get different offsets"
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert torch.equal(data["image"], _volume()["image"]), "the input is not modified in place"

    shift.set_random_state(seed=3)
    assert np.array_equal(shift(_volume())["image"][0].numpy(), out), "the same seed gives the same image"


@pytest.mark.parametrize("probs", [(0.0, 0.0, 0.0, 0.0), (1.0, 1.0, 1.0, 0.0), (1.0, 1.0, 1.0, 0.33)])
def test_training_transforms_give_patches_of_the_network_size_and_keep_label_values(probs) -> None:
    config = UNetSegmenter.preset_config("default", (3.0, 3.0, 3.0), (32, 32, 16))
    affine = torch.diag(torch.tensor([3.0, 3.0, 3.0, 1.0], dtype=torch.float64))
    from monai.data import MetaTensor

    def read(item):
        volume = _volume()
        volume["label"][:, 6:8, 8:24, 20:40] = UNSURE  # an untrusted rim beside the liver
        image = volume["image"] * 500.0 - 200.0  # HU, so that the window maps it back to 0..1
        return {"image": MetaTensor(image, affine=affine), "label": MetaTensor(volume["label"], affine=affine)}

    transforms = training_transforms(read, config, samples=3, partial_scan_prob=probs[0], label_intensity_prob=probs[1],
                                     synthetic_tumour_prob=probs[2], tumour_patch_share=probs[3])
    transforms.set_random_state(seed=0)
    patches = transforms({"name": "box"})
    assert len(patches) == 3
    for patch in patches:
        assert patch["image"].shape == (1, 32, 32, 16) and patch["label"].shape == (1, 32, 32, 16)
        # Nearest-neighbour label resampling: no interpolated values between 0 and UNSURE.
        assert set(torch.unique(patch["label"]).tolist()) <= {0, 1, 2, UNSURE}
    assert any((patch["label"] == UNSURE).any() for patch in patches)
    if probs[3]:
        transforms.set_random_state(seed=1)
        centred = [transforms({"name": "box"}) for _ in range(6)]
        assert sum((p["label"] == 2).any() for patches in centred for p in patches) >= 3, "tumour-centred patches"
