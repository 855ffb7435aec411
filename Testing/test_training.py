"""``liverseg train``: a small U-Net learns a phantom, the JSON event stream, exact resume after kill -9,
and clear errors for bad inputs."""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import torch

from LiverSegLib import training
from LiverSegLib.checkpoint import Checkpoint
from LiverSegLib.dataset import load_msd_dataset, read_case
from LiverSegLib.errors import LiverSegError
from LiverSegLib.metrics import dice_scores
from LiverSegLib.phantom import make_phantom, write_phantom_dataset
from LiverSegLib.segmenters import create_segmenter
from LiverSegLib.segmenters.unet import UNetSegmenter
from LiverSegLib.volume import save_volume

torch.set_num_threads(2)

LIVERSEG = Path(__file__).resolve().parent.parent / "LiverSeg"
GRID = ["--spacing", "6", "6", "9"]
TINY = GRID + ["--patch-size", "32", "32", "16"]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    training.add_train_arguments(parser)
    return parser.parse_args(list(argv))


def _events(text: str) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _subprocess_env() -> Dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=os.pathsep.join([str(LIVERSEG), os.environ.get("PYTHONPATH", "")]))
    env.pop("WORLD_SIZE", None)
    return env


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five 64x64x32 phantoms of 6 x 6 x 9 mm: four to train on, one to validate."""
    return write_phantom_dataset(tmp_path_factory.mktemp("phantoms"), n_cases=5, seed=1, shape=(64, 64, 32), spacing=(6.0, 6.0, 9.0))


def test_a_small_unet_learns_the_liver(phantoms: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    epochs = 15
    # Without the augmentation levers: made for varied real CT, they slow this short run on alike phantoms
    # (best Dice 0.89 in 15 epochs with them).
    assert training.run_train(_args(str(phantoms), "--method", "unet", "-o", str(run), "--epochs", str(epochs),
                                    "--lr", "3e-3", *GRID, "--patch-size", "48", "48", "32",
                                    "--partial-scan-prob", "0", "--label-intensity-prob", "0")) == 0
    events = _events(capsys.readouterr().out)

    per_epoch = [e for e in events if e["event"] == "epoch"]
    assert [e["epoch"] for e in per_epoch] == list(range(1, epochs + 1))
    assert set(per_epoch[0]) == {"event", "epoch", "loss", "dice_liver", "dice_tumour", "seconds"}
    assert per_epoch[-1]["loss"] < per_epoch[0]["loss"]
    best = max(e["dice_liver"] for e in per_epoch)
    assert best >= 0.9, per_epoch

    cases = [e for e in events if e["event"] == "case"]
    assert len(cases) == 1 and cases[0]["dice_liver"] == best
    assert events[-1] == {"event": "done", "checkpoint": str(run / "best.pt")}

    with open(run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
    assert float(rows[-1]["loss"]) == pytest.approx(per_epoch[-1]["loss"], abs=1e-4)

    # The shipped-model path reproduces the validation score: training validates what `segment` does.
    checkpoint = Checkpoint.load(run / "best.pt", method="unet")
    assert checkpoint.resume is None and checkpoint.training["val_cases"] == [cases[0]["case"]]
    assert len(checkpoint.training["train_cases"]) == 4
    case = next(c for c in load_msd_dataset(phantoms) if c.name == cases[0]["case"])
    ct, reference = read_case(case)
    labels = create_segmenter("unet", model_path=str(run / "best.pt"), device="cpu").segment(ct)
    assert dice_scores(labels, reference.array)["dice_liver"] == pytest.approx(best, abs=1e-3)


def test_undefined_dice_is_null_and_a_patch_larger_than_the_volumes_is_padded(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    data = write_phantom_dataset(tmp_path / "data", n_cases=2, seed=2, shape=(24, 24, 12), spacing=(16.0, 16.0, 24.0), n_tumours=0)
    assert training.run_train(_args(str(data), "--method", "autoencoder", "-o", str(tmp_path / "run"), "--epochs", "1",
                                    "--spacing", "16", "16", "24", "--patch-size", "32", "32", "32")) == 0
    epoch = _events(capsys.readouterr().out)[0]
    assert epoch["event"] == "epoch" and epoch["dice_tumour"] is None
    assert "nan" in (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1]


def _state(path: Path) -> Dict[str, torch.Tensor]:
    """The saved weights (the moving average with --ema) and, in last.pt, the trained ones behind it."""
    checkpoint = Checkpoint.load(path)
    raw = (checkpoint.resume or {}).get("network", {})
    return {**checkpoint.state_dict, **{f"trained.{name}": value for name, value in raw.items()}}


def test_resume_after_kill_finishes_like_an_uninterrupted_run(
    phantoms: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    epochs = 4
    # Every random transform on (the levers often), so resuming must replay all of their draws; the
    # weight average must carry over too.
    command = [sys.executable, "-m", "LiverSegLib.cli", "train", str(phantoms), "--method", "unet", "--epochs", str(epochs),
               *TINY, "--partial-scan-prob", "0.5", "--label-intensity-prob", "0.5", "--ema", "0.9"]
    straight = subprocess.run(command + ["-o", str(tmp_path / "straight")], env=_subprocess_env(), capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr

    killed = subprocess.Popen(command + ["-o", str(tmp_path / "killed")], env=_subprocess_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    first = killed.stdout.readline()
    os.kill(killed.pid, signal.SIGKILL)  # in epoch 2: after epoch 1's checkpoint, before the run's end
    killed.wait()
    killed.stdout.close()
    assert json.loads(first)["epoch"] == 1

    resumed = subprocess.run(command + ["-o", str(tmp_path / "killed"), "--resume"], env=_subprocess_env(),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    events = _events(resumed.stdout)
    assert [e["epoch"] for e in events if e["event"] == "epoch"][-1] == epochs
    assert events[-1]["event"] == "done"
    with open(tmp_path / "killed" / "metrics.csv") as handle:
        assert [int(r["epoch"]) for r in csv.DictReader(handle)] == list(range(1, epochs + 1))

    expected, actual = _state(tmp_path / "straight" / "last.pt"), _state(tmp_path / "killed" / "last.pt")
    assert expected.keys() == actual.keys() and any(name.startswith("trained.") for name in expected)
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    averaged = [name for name in expected if f"trained.{name}" in expected and expected[name].is_floating_point()]
    assert not all(torch.equal(expected[name], expected[f"trained.{name}"]) for name in averaged), "an average was saved"
    assert Checkpoint.load(tmp_path / "killed" / "last.pt").resume["epoch"] == epochs

    # Resuming a finished run only reports it again; a new run will not overwrite it.
    finished = [str(phantoms), "--method", "unet", "-o", str(tmp_path / "killed")]
    assert training.run_train(_args(*finished, "--resume")) == 0
    again = _events(capsys.readouterr().out)
    assert again[-1]["event"] == "done" and not any(e["event"] == "epoch" for e in again)
    with pytest.raises(LiverSegError, match="pass --resume"):
        training.run_train(_args(*finished))


def test_resume_refuses_what_it_cannot_continue(phantoms: Path, tmp_path: Path) -> None:
    with pytest.raises(LiverSegError, match="nothing to resume"):
        training.run_train(_args(str(phantoms), "--method", "unet", "-o", str(tmp_path / "none"), "--resume"))
    assert training.run_train(_args(str(phantoms), "--method", "unet", "-o", str(tmp_path / "run"), "--epochs", "1", *TINY)) == 0
    with pytest.raises(LiverSegError, match="started with --epochs 1"):
        training.run_train(_args(str(phantoms), "--method", "unet", "-o", str(tmp_path / "run"), "--resume", "--epochs", "5"))
    with pytest.raises(LiverSegError, match="holds a 'unet' model, not 'vae'"):
        training.run_train(_args(str(phantoms), "--method", "vae", "-o", str(tmp_path / "run"), "--resume"))


def test_init_weights_start_from_the_checkpoint_and_keep_its_grid(
    phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = tmp_path / "base"
    assert training.run_train(_args(str(phantoms), "--method", "unet", "-o", str(base), "--epochs", "1", *TINY)) == 0
    trained = Checkpoint.load(base / "last.pt")

    started: Dict[str, Any] = {}
    monkeypatch.setattr(training.Trainer, "fit", lambda self: started.update(
        weights=self.network.state_dict(), patch_size=self.config.preprocessing.patch_size))
    training.run_train(_args(str(phantoms), "--method", "unet", "-o", str(tmp_path / "fresh"), "--epochs", "1", *TINY))
    assert not all(torch.equal(started["weights"][n], trained.state_dict[n]) for n in trained.state_dict)

    # Only the checkpoint is named: its grid and patch size come with it.
    training.run_train(_args(str(phantoms), "--method", "unet", "-o", str(tmp_path / "tuned"), "--epochs", "1",
                             "--init-weights", str(base / "last.pt")))
    assert all(torch.equal(started["weights"][n], trained.state_dict[n]) for n in trained.state_dict)
    assert started["patch_size"] == trained.config.preprocessing.patch_size

    with pytest.raises(LiverSegError, match="--patch-size 48 48 16: --init-weights .* was trained with --patch-size 32 32 16"):
        training.run_train(_args(str(phantoms), "--method", "unet", "-o", str(tmp_path / "other"),
                                 "--init-weights", str(base / "last.pt"), "--patch-size", "48", "48", "16"))
    with pytest.raises(LiverSegError, match="holds a 'unet' model, not 'vae'"):
        training.run_train(_args(str(phantoms), "--method", "vae", "-o", str(tmp_path / "vae"),
                                 "--init-weights", str(base / "last.pt")))
    with pytest.raises(LiverSegError, match="--init-weights missing.pt: no such checkpoint"):
        training.run_train(_args(str(phantoms), "--method", "unet", "-o", str(tmp_path / "missing"),
                                 "--init-weights", "missing.pt"))


def test_cuda_without_a_gpu_is_a_clear_error(phantoms: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(LiverSegError, match="no CUDA GPU.*--device cpu"):
        training.run_train(_args(str(phantoms), "--method", "unet", "-o", str(tmp_path / "run"), "--device", "cuda"))


def _write_dataset(folder: Path, entries: List[Dict[str, str]]) -> Path:
    (folder / "dataset.json").write_text(json.dumps({"training": entries}))
    return folder


def test_bad_datasets_are_clear_errors(tmp_path: Path) -> None:
    data = write_phantom_dataset(tmp_path / "data", n_cases=2, seed=3, shape=(32, 32, 16), spacing=(12.0, 12.0, 18.0), n_tumours=0)
    images = [f"./imagesTr/phantom_00{i}.nii.gz" for i in range(2)]

    _write_dataset(data, [{"image": image} for image in images])  # no labels
    with pytest.raises(LiverSegError, match="needs both 'image' and 'label'"):
        training.run_train(_args(str(data), "--method", "unet", "-o", str(tmp_path / "a")))

    _, other = make_phantom(shape=(30, 32, 16), spacing=(12.0, 12.0, 18.0), n_tumours=0)  # another grid
    save_volume(other, data / "labelsTr" / "other.nii.gz")
    _write_dataset(data, [{"image": images[0], "label": "./labelsTr/other.nii.gz"},
                          {"image": images[1], "label": "./labelsTr/phantom_001.nii.gz"}])
    with pytest.raises(LiverSegError, match="differs from image shape"):
        training.run_train(_args(str(data), "--method", "unet", "-o", str(tmp_path / "b")))

    _write_dataset(data, [{"image": images[0], "label": "./labelsTr/phantom_000.nii.gz"}])
    with pytest.raises(LiverSegError, match="at least 2"):
        training.run_train(_args(str(data), "--method", "unet", "-o", str(tmp_path / "c")))


def test_bad_options_are_clear_errors(phantoms: Path, tmp_path: Path) -> None:
    with pytest.raises(LiverSegError, match="multiple of 16"):
        training.run_train(_args(str(phantoms), "--method", "unet", "-o", str(tmp_path / "a"), "--patch-size", "40", "40", "40"))
    with pytest.raises(LiverSegError, match="val-fraction"):
        training.run_train(_args(str(phantoms), "--method", "unet", "-o", str(tmp_path / "b"), "--val-fraction", "1.5"))
    with pytest.raises(LiverSegError, match="--partial-scan-prob 1.5: a probability"):
        training.run_train(_args(str(phantoms), "--method", "unet", "-o", str(tmp_path / "d"), "--partial-scan-prob", "1.5"))
    with pytest.raises(LiverSegError, match="--ema 1.0: the decay"):
        training.run_train(_args(str(phantoms), "--method", "unet", "-o", str(tmp_path / "f"), "--ema", "1"))
    with pytest.raises(LiverSegError, match="--label-intensity-prob -0.1: a probability"):
        training.run_train(_args(str(phantoms), "--method", "unet", "-o", str(tmp_path / "e"), "--label-intensity-prob", "-0.1"))
    with pytest.raises(SystemExit):
        _args(str(phantoms), "--method", "em", "-o", str(tmp_path / "c"))
    with pytest.raises(LiverSegError, match="--preset paper: this preset resizes whole volumes"):
        training.run_train(_args(str(phantoms), "--method", "unet", "-o", str(tmp_path / "g"), "--preset", "paper",
                                 "--partial-scan-prob", "0.3"))


@pytest.mark.parametrize(("preset", "expected"), [("default", training.PARTIAL_SCAN_PROB), ("paper", 0.0)])
def test_partial_scans_default_on_only_for_presets_that_resample(preset: str, expected: float) -> None:
    from LiverSegLib.segmenters.unet import UNetSegmenter

    args = _args("data", "--method", "unet", "-o", "run", "--preset", preset)
    assert training.TrainSettings.from_args(args, UNetSegmenter).partial_scan_prob == expected


def test_out_of_memory_while_training_says_what_to_lower(
    phantoms: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def out_of_memory(cls, output, target, **options):
        raise RuntimeError("CUDA out of memory. Tried to allocate 8.00 GiB")

    monkeypatch.setattr(UNetSegmenter, "loss", classmethod(out_of_memory))
    with pytest.raises(LiverSegError, match="out of memory.*--batch-size.*--samples"):
        training.run_train(_args(str(phantoms), "--method", "unet", "-o", str(tmp_path / "run"), "--epochs", "1", *TINY))


def test_split_is_seeded_and_holds_out_at_least_one_case(phantoms: Path) -> None:
    cases = load_msd_dataset(phantoms)
    train, val = training.split_cases(cases, 0.2, seed=0)
    assert len(val) == 1 and len(train) == 4 and not {c.name for c in train} & {c.name for c in val}
    assert training.split_cases(cases, 0.2, seed=0) == (train, val)
    assert np.isnan(training._nanmean([float("nan")]))


def test_a_fixed_validation_list_is_the_held_out_set(phantoms: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec = json.loads((phantoms / "dataset.json").read_text())
    fold = tmp_path / "fold"
    fold.mkdir()
    absolute = [{key: str(phantoms / value) for key, value in item.items()} for item in spec["training"]]
    (fold / "dataset.json").write_text(json.dumps({"training": absolute[1:3], "validation": absolute[:1]}))
    run = tmp_path / "run"
    assert training.run_train(_args(str(fold), "--method", "unet", "-o", str(run), "--epochs", "1", *TINY)) == 0
    cases = [e["case"] for e in _events(capsys.readouterr().out) if e["event"] == "case"]
    assert cases == ["phantom_000"]
    assert Checkpoint.load(run / "best.pt").training["train_cases"] == ["phantom_001", "phantom_002"]
