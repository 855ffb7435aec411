"""Checkpoints: round trip, weights-only loading, clear errors for damaged, foreign or wrong-method files,
atomic writes that survive a full disk, and the shipped-model lookup."""

from __future__ import annotations

import errno
import hashlib
import json
import pathlib
from pathlib import Path

import pytest
import torch

from LiverSegLib import checkpoint as checkpoint_module
from LiverSegLib.checkpoint import Checkpoint
from LiverSegLib.errors import LiverSegError, MethodUnavailableError
from LiverSegLib.segmenters import create_segmenter
from LiverSegLib.segmenters.deep import deep_segmenter_class

torch.set_num_threads(2)

REPOSITORY = Path(__file__).resolve().parent.parent


def _unet_checkpoint(path: Path) -> torch.nn.Module:
    cls = deep_segmenter_class("unet")
    config = cls.preset_config("default", spacing=(6.0, 6.0, 9.0), patch_size=(32, 32, 32))
    network = cls.build_network(config.preprocessing.patch_size, **config.network)
    Checkpoint(config, network.state_dict(), {"train_cases": ["a", "b"]}, {"history": [{"dice_liver": float("nan")}]}).save(path)
    return network.eval()


def test_round_trip_gives_the_same_network_and_metadata(tmp_path: Path) -> None:
    network = _unet_checkpoint(tmp_path / "unet.pt")
    segmenter = create_segmenter("unet", model_path=str(tmp_path / "unet.pt"), device="cpu")
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(network(x), segmenter.model.network(x))
    loaded = Checkpoint.load(tmp_path / "unet.pt", method="unet")
    assert loaded.config == segmenter.model.config
    assert loaded.config.preprocessing.spacing == (6.0, 6.0, 9.0)
    assert loaded.training == {"train_cases": ["a", "b"]}
    assert loaded.resume is None


def test_loading_uses_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _unet_checkpoint(tmp_path / "unet.pt")
    seen = []
    real_load = torch.load

    def spy(*args, **kwargs):
        seen.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    Checkpoint.load(tmp_path / "unet.pt")
    assert seen == [True]


class _Payload:
    """Unpickling this would create a file: a stand-in for code hidden in a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_a_checkpoint_holding_code_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"format": "liverseg-checkpoint", "payload": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(LiverSegError, match="not a readable LiverSeg checkpoint"):
        Checkpoint.load(tmp_path / "evil.pt")
    assert not marker.exists()


def test_truncated_and_foreign_files_give_clear_errors(tmp_path: Path) -> None:
    _unet_checkpoint(tmp_path / "unet.pt")
    data = (tmp_path / "unet.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pt").write_text("not a model\n")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    for name in ("truncated.pt", "text.pt"):
        with pytest.raises(LiverSegError, match="truncated or not a LiverSeg model"):
            create_segmenter("unet", model_path=str(tmp_path / name), device="cpu")
    with pytest.raises(LiverSegError, match="not a LiverSeg checkpoint"):
        create_segmenter("unet", model_path=str(tmp_path / "other.pt"), device="cpu")
    with pytest.raises(LiverSegError, match="no such checkpoint"):
        create_segmenter("unet", model_path=str(tmp_path / "missing.pt"), device="cpu")


def test_a_checkpoint_of_another_method_is_refused(tmp_path: Path) -> None:
    _unet_checkpoint(tmp_path / "unet.pt")
    with pytest.raises(LiverSegError, match="holds a 'unet' model, not 'vae'; use --method unet"):
        create_segmenter("vae", model_path=str(tmp_path / "unet.pt"), device="cpu")


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path: Path) -> None:
    _unet_checkpoint(tmp_path / "unet.pt")
    loaded = Checkpoint.load(tmp_path / "unet.pt")
    loaded.state_dict = {name: tensor[..., :1] for name, tensor in loaded.state_dict.items()}
    loaded.save(tmp_path / "edited.pt")
    with pytest.raises(LiverSegError, match="do not fit the network"):
        create_segmenter("unet", model_path=str(tmp_path / "edited.pt"), device="cpu")


def test_a_full_disk_leaves_the_previous_checkpoint_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _unet_checkpoint(tmp_path / "last.pt")
    before = (tmp_path / "last.pt").read_bytes()
    loaded = Checkpoint.load(tmp_path / "last.pt")

    def disk_full(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(LiverSegError, match="No space left on device.*previous checkpoint there is intact"):
        loaded.save(tmp_path / "last.pt")
    assert (tmp_path / "last.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left behind


def test_without_a_model_path_the_shipped_model_is_used_or_the_fix_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert checkpoint_module.MODELS_DIR == REPOSITORY / "LiverSeg" / "LiverSegLib" / "models"
    monkeypatch.setattr(checkpoint_module, "MODELS_DIR", tmp_path)
    with pytest.raises(MethodUnavailableError, match=r"liverseg train.*--model"):
        create_segmenter("unet", device="cpu")
    _unet_checkpoint(tmp_path / "unet.pt")
    with pytest.raises(MethodUnavailableError, match="make models"):  # a model file without its manifest entry
        create_segmenter("unet", device="cpu")
    digest = hashlib.sha256((tmp_path / "unet.pt").read_bytes()).hexdigest()
    (tmp_path / "models.json").write_text(json.dumps({"unet": {"file": "unet.pt", "sha256": digest}}))
    assert create_segmenter("unet", device="cpu").model.config.method == "unet"

    with open(tmp_path / "unet.pt", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(LiverSegError, match=r"unet.pt: sha256 .* differs .* altered or damaged"):
        create_segmenter("unet", device="cpu")


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    _unet_checkpoint(tmp_path / "unet.pt")
    with pytest.raises(LiverSegError, match="no CUDA GPU.*--device cpu"):
        create_segmenter("unet", model_path=str(tmp_path / "unet.pt"), device="cuda")
