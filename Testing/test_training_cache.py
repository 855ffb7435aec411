"""The persistent preprocessing cache of ``liverseg train --cache-dir``: a second run reads nothing again, an
edited file or another preprocessing gets its own entry, a damaged or half-written entry is rebuilt, runs
sharing the folder do not corrupt it, and a full disk is one clear error naming the folder."""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Dict, List

import nibabel as nib
import numpy as np
import pytest
import torch

from LiverSegLib import training
from LiverSegLib.augmentation import training_transforms
from LiverSegLib.dataset import load_msd_dataset
from LiverSegLib.errors import LiverSegError
from LiverSegLib.phantom import write_phantom_dataset
from LiverSegLib.segmenters.unet import UNetSegmenter

CONFIG = UNetSegmenter.preset_config("default", (6.0, 6.0, 9.0), (32, 32, 16))


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_dataset(tmp_path_factory.mktemp("phantoms"), n_cases=3, seed=4, shape=(64, 64, 32), spacing=(6.0, 6.0, 9.0))


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> List[str]:
    """The cases read from their NIfTI files (each read is a preprocessing the cache did not save)."""
    names: List[str] = []
    read = training.read_case

    def counted(case):  # type: ignore[no-untyped-def]
        names.append(case.name)
        return read(case)

    monkeypatch.setattr(training, "read_case", counted)
    return names


def _items(dataset: Path) -> List[Dict[str, str]]:
    return [{"name": c.name, "image": str(c.image_path), "label": str(c.label_path)} for c in load_msd_dataset(dataset)]


def _cases(dataset: Path, folder: Path, config=CONFIG, ram_share: float = 0.0) -> training.PreprocessedCases:
    transform = training_transforms(training.ReadTrainingCase(), config, samples=1, synthetic_tumour_prob=0.5)
    return training.PreprocessedCases(_items(dataset), transform, config, folder, ram_share, workers=2)


def _entries(folder: Path) -> Dict[str, float]:
    return {path.name: path.stat().st_mtime_ns for path in folder.glob("*.pt")}


def test_a_second_run_reads_nothing_and_gets_the_same_volumes(phantoms: Path, tmp_path: Path, reads: List[str]) -> None:
    first = _cases(phantoms, tmp_path / "cache", ram_share=1.0)
    assert sorted(reads) == ["phantom_000", "phantom_001", "phantom_002"]
    written = _entries(tmp_path / "cache")
    assert len(written) == 3

    reads.clear()
    second = _cases(phantoms, tmp_path / "cache")  # nothing in RAM: every step reads its entry
    second[0], second[2]
    assert reads == [] and _entries(tmp_path / "cache") == written
    for index in range(3):
        cached, fresh = second._preprocessed(index), first._in_ram[index]
        assert torch.equal(cached["image"], fresh["image"]) and torch.equal(cached["label"], fresh["label"])
        assert torch.equal(cached["image"].affine, fresh["image"].affine)


def test_an_edited_file_or_another_grid_gets_a_new_entry(phantoms: Path, tmp_path: Path, reads: List[str]) -> None:
    dataset = tmp_path / "data"
    write_phantom_dataset(dataset, n_cases=2, seed=4, shape=(64, 64, 32), spacing=(6.0, 6.0, 9.0))
    original = _cases(dataset, tmp_path / "cache")._preprocessed(1)
    before = _entries(tmp_path / "cache")

    image = dataset / "imagesTr" / "phantom_001.nii.gz"  # the same name, another content
    ct = nib.load(image)
    nib.save(nib.Nifti1Image(np.asanyarray(ct.dataobj) + np.int16(40), ct.affine, ct.header), image)
    reads.clear()
    edited = _cases(dataset, tmp_path / "cache")
    assert reads == ["phantom_001"]
    assert len(_entries(tmp_path / "cache")) == 3 and set(before) <= set(_entries(tmp_path / "cache"))
    assert not torch.equal(edited._preprocessed(1)["image"], original["image"])

    reads.clear()
    _cases(dataset, tmp_path / "cache", UNetSegmenter.preset_config("default", (8.0, 8.0, 9.0), (32, 32, 16)))
    assert sorted(reads) == ["phantom_000", "phantom_001"] and len(_entries(tmp_path / "cache")) == 5


def test_a_truncated_damaged_or_half_written_entry_is_rebuilt(phantoms: Path, tmp_path: Path, reads: List[str]) -> None:
    folder = tmp_path / "cache"
    reference = _cases(phantoms, folder, ram_share=1.0)._in_ram
    truncated, flipped, _ = sorted(folder.glob("*.pt"))
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])  # a killed non-atomic writer
    damaged = bytearray(flipped.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF  # torch.load alone would serve this one silently
    flipped.write_bytes(bytes(damaged))
    (folder / f".{truncated.stem}.abc.tmp").write_bytes(b"half")  # a temporary file left by kill -9: never read

    reads.clear()
    with pytest.warns(UserWarning, match="damaged preprocessing cache entry") as warned:
        rebuilt = _cases(phantoms, folder, ram_share=1.0)._in_ram
    assert len(warned) == 2 and len(reads) == 2
    for index in range(3):
        assert torch.equal(rebuilt[index]["image"], reference[index]["image"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # whole again: no entry is rebuilt
        _cases(phantoms, folder, ram_share=1.0)
    assert all(training._load_entry(path) for path in folder.glob("*.pt"))


def test_runs_sharing_a_folder_leave_it_whole(phantoms: Path, tmp_path: Path) -> None:
    folder = tmp_path / "cache"
    errors: List[BaseException] = []

    def run() -> None:
        try:
            _cases(phantoms, folder)
        except BaseException as exc:  # noqa: BLE001 (re-raised in the test's thread below)
            errors.append(exc)

    runs = [threading.Thread(target=run) for _ in range(3)]
    for thread in runs:
        thread.start()
    for thread in runs:
        thread.join()
    assert errors == []
    assert len(list(folder.glob("*.pt"))) == 3 and not list(folder.glob(".*.tmp"))
    assert all(training._load_entry(path) for path in folder.glob("*.pt"))


def test_a_full_disk_is_one_error_naming_the_folder(phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full (Linux), whose writes fail with ENOSPC")
    folder = tmp_path / "cache"
    monkeypatch.setattr(tempfile, "mkstemp", lambda **_: (os.open("/dev/full", os.O_WRONLY), str(folder / ".x.tmp")))
    with pytest.raises(LiverSegError, match=f"{folder}: cannot write the preprocessing cache there .*No space left"):
        _cases(phantoms, folder)
    assert list(folder.iterdir()) == []


def test_the_default_folder_is_the_users_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(training.sys, "platform", "linux")
    assert training.default_cache_dir() == tmp_path / "liverseg" / "preprocessed"
    parser = argparse.ArgumentParser()
    training.add_train_arguments(parser)
    args = parser.parse_args(["data", "--method", "unet", "-o", "run"])
    assert training.cache_folder(args) == tmp_path / "liverseg" / "preprocessed"
    assert training.cache_folder(parser.parse_args(["data", "--method", "unet", "-o", "run", "--no-cache-dir"])) is None
