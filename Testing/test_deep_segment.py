"""Deep segmenters through the common interface: all four methods from checkpoints, the geometry of the
pre/post-processing (default and paper presets, oblique grids), progress, cancel, small volumes and
running out of memory."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
import torch
from torch import nn

from LiverSegLib import cli
from LiverSegLib.checkpoint import Checkpoint
from LiverSegLib.errors import CancelledError, LiverSegError
from LiverSegLib.metrics import dice_scores
from LiverSegLib.phantom import make_phantom
from LiverSegLib.segmenters import create_segmenter
from LiverSegLib.segmenters.deep import DEEP_METHODS, DeepModel, deep_segmenter_class
from LiverSegLib.volume import Volume, load_volume, save_volume

torch.set_num_threads(2)

SPACING = (6.0, 6.0, 9.0)
PATCH = (32, 32, 32)


def _checkpoint(tmp_path: Path, method: str, preset: str = "default") -> str:
    cls = deep_segmenter_class(method)
    config = cls.preset_config(preset, spacing=SPACING if preset == "default" else None, patch_size=PATCH if preset == "default" else None)
    torch.manual_seed(0)
    network = cls.build_network(config.preprocessing.patch_size, **config.network)
    path = tmp_path / f"{method}-{preset}.pt"
    Checkpoint(config, network.state_dict()).save(path)
    return str(path)


@pytest.mark.parametrize("method", DEEP_METHODS)
def test_every_method_segments_through_create_segmenter(tmp_path: Path, method: str) -> None:
    ct, _ = make_phantom(shape=(64, 64, 32), spacing=SPACING, seed=2)
    steps: List[Tuple[float, str]] = []
    labels = create_segmenter(method, model_path=_checkpoint(tmp_path, method), device="cpu").segment(
        ct, progress=lambda fraction, message: steps.append((fraction, message))
    )
    assert labels.shape == ct.array.shape and labels.dtype == np.uint8
    assert set(np.unique(labels)) <= {0, 1, 2}
    fractions = [fraction for fraction, _ in steps]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(message == "segmenting" for _, message in steps)


@pytest.mark.parametrize("method", DEEP_METHODS)
def test_liverseg_segment_with_a_model(tmp_path: Path, method: str, capsys: pytest.CaptureFixture) -> None:
    ct, _ = make_phantom(shape=(48, 48, 24), spacing=(8.0, 8.0, 12.0), seed=2)
    save_volume(ct, tmp_path / "ct.nii.gz")
    output = tmp_path / "labels.nii.gz"
    argv = ["segment", str(tmp_path / "ct.nii.gz"), "-o", str(output), "--method", method, "--device", "cpu"]
    assert cli.main(argv + ["--model", _checkpoint(tmp_path, method)]) == 0
    assert load_volume(output).array.shape == ct.array.shape
    wrong = "vae" if method != "vae" else "unet"
    assert cli.main(argv[:-4] + ["--method", wrong, "--model", _checkpoint(tmp_path, method)]) == 2
    assert f"holds a '{method}' model" in capsys.readouterr().err


def test_paper_preset_segments_the_resized_volume(tmp_path: Path) -> None:
    ct, _ = make_phantom(shape=(80, 72, 30), spacing=(5.0, 5.0, 9.0), seed=2)
    labels = create_segmenter("unet", model_path=_checkpoint(tmp_path, "unet", "paper"), device="cpu").segment(ct)
    assert labels.shape == ct.array.shape


class _Oracle(nn.Module):
    """Reads the class back from the windowed intensity: 0.2 background, 0.6 liver, 0.9 tumour.

    A perfect "network", so any error in the result comes from the pre/post-processing geometry.
    """

    centres = torch.tensor([0.2, 0.6, 0.9]).view(1, 3, 1, 1, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return -((image - self.centres) ** 2)


def _encoded_phantom(affine: np.ndarray) -> Tuple[Volume, np.ndarray]:
    """A phantom labelmap written as HU (-100 / 100 / 250 inside the body, -1000 air outside)."""
    ct, labels = make_phantom(shape=(72, 64, 36), seed=4, affine=affine)
    hu = np.array([-100, 100, 250], dtype=np.int16)[labels.array]
    hu[ct.array < -500] = -1000
    truth = np.where(ct.array < -500, 0, labels.array).astype(np.uint8)
    return Volume(hu, ct.affine), truth


def _lps_oblique_affine() -> np.ndarray:
    angle = np.deg2rad(10.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ rotation @ np.diag([5.0, 5.0, 8.0])
    affine[:3, 3] = [180.0, 160.0, -140.0]
    return affine


@pytest.mark.parametrize("preset", ["default", "paper"])
@pytest.mark.parametrize("affine", ["ras", "lps-oblique"])
def test_labels_come_back_on_the_ct_grid(preset: str, affine: str) -> None:
    matrix = np.diag([5.0, 5.0, 8.0, 1.0]) if affine == "ras" else _lps_oblique_affine()
    ct, truth = _encoded_phantom(matrix)
    config = deep_segmenter_class("unet").preset_config(preset, spacing=(4.0, 4.0, 6.0) if preset == "default" else None, patch_size=PATCH)
    model = DeepModel(_Oracle(), config, lambda output: output, torch.device("cpu"))
    labels = model.segment(ct, lambda fraction, message: None)
    scores = dice_scores(labels, truth)
    assert scores["dice_liver"] > 0.95, scores
    assert scores["dice_tumour"] > 0.8, scores  # small tumours lose most to the coarse paper grid


def test_cancel_stops_within_a_second_or_two(tmp_path: Path) -> None:
    ct, _ = make_phantom(shape=(128, 128, 64), spacing=(3.0, 3.0, 4.5), seed=2)
    segmenter = create_segmenter("unet", model_path=_checkpoint(tmp_path, "unet"), device="cpu")
    cancel = threading.Event()
    cancelled_at: List[float] = []

    def progress(fraction: float, message: str) -> None:
        if message == "segmenting" and fraction > 0.3 and not cancel.is_set():
            cancel.set()
            cancelled_at.append(time.perf_counter())

    with pytest.raises(CancelledError):
        segmenter.segment(ct, progress=progress, cancel=cancel)
    assert cancelled_at and time.perf_counter() - cancelled_at[0] < 2.0


def test_a_volume_smaller_than_a_tile_is_padded(tmp_path: Path) -> None:
    ct, _ = make_phantom(shape=(40, 36, 16), spacing=(10.0, 10.0, 16.0), seed=1, n_tumours=0)
    labels = create_segmenter("vitautoenc", model_path=_checkpoint(tmp_path, "vitautoenc"), device="cpu").segment(ct)
    assert labels.shape == ct.array.shape


class _MemoryHungry(nn.Module):
    """Runs out of memory on batches larger than ``limit`` tiles (``limit`` 0: always)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.head = nn.Conv3d(1, 3, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[0] > self.limit:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.head(image)


def test_out_of_memory_retries_with_smaller_batches_then_says_how_to_fix() -> None:
    ct, _ = make_phantom(shape=(64, 64, 32), spacing=SPACING, seed=2)
    config = deep_segmenter_class("unet").preset_config("default", spacing=SPACING, patch_size=(16, 16, 16))
    model = DeepModel(_MemoryHungry(limit=1), config, lambda output: output, torch.device("cpu"), sw_batch_size=8)
    assert model.segment(ct, lambda fraction, message: None).shape == ct.array.shape
    assert model.sw_batch_size == 1
    model = DeepModel(_MemoryHungry(limit=0), config, lambda output: output, torch.device("cpu"))
    with pytest.raises(LiverSegError, match="out of memory.*close other programs.*more memory"):
        model.segment(ct, lambda fraction, message: None)
