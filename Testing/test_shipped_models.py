"""The models in ``LiverSegLib/models`` (what installs with the package): intact, documented, and working out of the box on every real CT.

The last test ties the shipped weights to the figure their card publishes: the shipped fold never saw
``totalseg_dicom_example`` (``SHIPPED_FOLD`` in ``scripts/train_models.py``), and segmenting it again
through ``liverseg``'s own path must give the liver Dice stored when it was shipped.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from LiverSegLib.checkpoint import MANIFEST, MODELS_DIR, Checkpoint, shipped_model_path
from LiverSegLib.metrics import dice_scores
from LiverSegLib.segmenters import create_segmenter
from LiverSegLib.segmenters.deep import DEEP_METHODS
from LiverSegLib.volume import load_ct, load_volume

torch.set_num_threads(2)

HELD_OUT = "totalseg_dicom_example"
MAX_MB = 50


@pytest.mark.parametrize("method", DEEP_METHODS)
def test_each_model_matches_its_manifest_and_has_a_card(method: str) -> None:
    manifest = json.loads((MODELS_DIR / MANIFEST).read_text())
    path = MODELS_DIR / manifest[method]["file"]
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == manifest[method]["sha256"]
    assert path.stat().st_size <= MAX_MB * 2**20
    card = (MODELS_DIR / f"{method}.md").read_text()
    assert digest in card, "the card names the sha256 of the file beside it"
    for section in ("## Data", "## Leave-one-out validation", "Apache-2.0", "CC BY 4.0"):
        assert section in card


@pytest.mark.parametrize("method", DEEP_METHODS)
def test_each_model_segments_every_real_ct(method: str, shared_data: Path) -> None:
    segmenter = create_segmenter(method, device="cpu")  # no --model: the shipped one
    images = sorted((shared_data / "imagesTr").glob("*.nii.gz")) + sorted((shared_data / "imagesTs").glob("*.nii.gz"))
    assert len(images) >= 5
    for image in images:
        ct = load_ct(image)
        labels = segmenter.segment(ct)
        assert labels.shape == ct.array.shape and labels.dtype == np.uint8, image.name
        assert set(np.unique(labels).tolist()) <= {0, 1, 2}, image.name


@pytest.mark.parametrize("method", DEEP_METHODS)
def test_each_model_reproduces_its_published_dice_on_the_case_it_never_saw(method: str, shared_data: Path) -> None:
    metrics = Checkpoint.load(shipped_model_path(method)).metrics
    # Models shipped before "shipped" was recorded are the best epoch on HELD_OUT; later ones the last epoch.
    shipped = metrics.get("shipped", {"case": HELD_OUT, "dice_liver": metrics["cross_validation"][HELD_OUT]["dice_liver"]})
    assert shipped["case"] == HELD_OUT
    published = shipped["dice_liver"]
    ct = load_ct(shared_data / "imagesTr" / f"{HELD_OUT}.nii.gz")
    reference = load_volume(shared_data / "labelsTr" / f"{HELD_OUT}.nii.gz").array
    measured = dice_scores(create_segmenter(method, device="cpu").segment(ct), reference)["dice_liver"]
    # fp16 storage of the weights moves a few boundary voxels, no more.
    assert measured == pytest.approx(published, abs=0.01), f"{method}: {measured:.4f} against {published:.4f} published"
