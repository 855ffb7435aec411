"""Checkpoints: round trip, weights-only loading, clear errors for damaged, foreign or wrong-method files and
for malformed configurations, atomic writes that survive a full disk, and the shipped-model lookup."""

from __future__ import annotations

import errno
import hashlib
import json
import pathlib
from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np
import pytest
import torch

from LiverSegLib import checkpoint as checkpoint_module
from LiverSegLib.checkpoint import Checkpoint, config_problems
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
    torch.save({"format": "liverseg-checkpoint", "state_dict": {"w": np.zeros(3)}}, tmp_path / "numpy.pt")
    for name in ("evil.pt", "numpy.pt"):
        with pytest.raises(LiverSegError, match="not a LiverSeg checkpoint, or one holding objects other than") as error:
            Checkpoint.load(tmp_path / name)
        message = str(error.value)
        assert message.startswith(str(tmp_path / name)) and "could run code" in message and "liverseg train" in message
        # never PyTorch's hint: a user told to set weights_only=False would run the file's code
        assert "weights_only" not in message and "trust" not in message and "\x1b" not in message
    assert "(numpy." in message  # names what the file holds
    assert not marker.exists()


def test_truncated_and_foreign_files_give_clear_errors(tmp_path: Path) -> None:
    _unet_checkpoint(tmp_path / "unet.pt")
    data = (tmp_path / "unet.pt").read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.pt").write_text("not a model\n")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(LiverSegError, match="truncated or not a LiverSeg model"):
        create_segmenter("unet", model_path=str(tmp_path / "truncated.pt"), device="cpu")
    with pytest.raises(LiverSegError, match="text.pt: not a LiverSeg checkpoint") as error:
        create_segmenter("unet", model_path=str(tmp_path / "text.pt"), device="cpu")
    assert "weights_only" not in str(error.value)
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


def _edit(changes: Dict[str, Any]) -> Callable[[Dict[str, Any]], None]:
    """An edit of a saved config: {"network.channels": value} sets it, a value of ``...`` deletes the key."""

    def edit(config: Dict[str, Any]) -> None:
        for dotted, value in changes.items():
            *parents, key = dotted.split(".")
            target = config
            for parent in parents:
                target = target[parent]
            if value is ...:
                del target[key]
            else:
                target[key] = value

    return edit


NAN = float("nan")
MALFORMED = {  # edit of the tiny U-Net's config (spacing 6 6 9, patch 32, channels 16..256): the message
    "missing network key": (_edit({"network.num_res_units": ...}), r"config\.network\.num_res_units: missing"),
    "extra network key": (_edit({"network.dropout": 0.2}),
                          r"config\.network\.dropout: unknown \(expected channels, strides, num_res_units\)"),
    "channel count 0": (_edit({"network.channels": [0, 32, 64, 128, 256]}),
                        r"config\.network = .*: builds 11 layer\(s\) without weights; channel counts must be positive"),
    "absurd channel count": (_edit({"network.channels": [16, 32, 64, 128, 10**6]}),
                             r"config\.network = .*: builds 5,\d{3},\d{3},\d{3} weights, more than the 1,000,000,000"),
    "negative channel count": (_edit({"network.channels": [-16, 32, 64, 128, 256]}),
                               r"config\.network = .*: the unet network cannot be built from it \(RuntimeError"),
    "fractional channel count": (_edit({"network.channels": [16.5, 32, 64, 128, 256]}),
                                 r"config\.network\.channels = \[16\.5, .*\] is not Sequence\[int\]"),
    "NaN in the network": (_edit({"network.num_res_units": NAN}), r"config\.network\.num_res_units = nan is not int"),
    "strides and channels disagree": (_edit({"network.strides": [2, 2, 2]}), r"cannot be built .*length of `strides`"),
    "spacing 0": (_edit({"preprocessing.spacing": [0.0, 6.0, 9.0]}),
                  r"config\.preprocessing\.spacing = \[0\.0, 6\.0, 9\.0\]: sizes must be positive finite"),
    "negative spacing": (_edit({"preprocessing.spacing": [6.0, -6.0, 9.0]}), r"preprocessing\.spacing = .*must be positive"),
    "NaN spacing": (_edit({"preprocessing.spacing": [6.0, NAN, 9.0]}), r"preprocessing\.spacing = \[6\.0, nan, 9\.0\]"),
    "spacing of 2 axes": (_edit({"preprocessing.spacing": [6.0, 6.0]}),
                          r"preprocessing\.spacing = \[6\.0, 6\.0\] is not Optional\[Tuple\[float, float, float\]\]"),
    "spacing and resize": (_edit({"preprocessing.resize": [32, 32, 32]}), r"config\.preprocessing: give exactly one of"),
    "patch size 0": (_edit({"preprocessing.patch_size": [0, 32, 32]}), r"preprocessing\.patch_size = \[0, 32, 32\]: sizes must"),
    "patch size off the network's multiple": (_edit({"preprocessing.patch_size": [24, 32, 32]}),
                                              r"preprocessing\.patch_size = \[24, 32, 32\]: .* multiple of 16"),
    "HU window low = high": (_edit({"preprocessing.hu_window": [100.0, 100.0]}), r"hu_window = \[100\.0, 100\.0\]: needs finite low < high"),
    "HU window reversed": (_edit({"preprocessing.hu_window": [300.0, -200.0]}), r"hu_window = \[300\.0, -200\.0\]: needs finite low"),
    "NaN HU window": (_edit({"preprocessing.hu_window": [NAN, 300.0]}), r"hu_window = \[nan, 300\.0\]: needs finite"),
    "missing preprocessing key": (_edit({"preprocessing.patch_size": ...}), r"config\.preprocessing\.patch_size: missing"),
    "unknown method": (_edit({"method": "resnet"}), r"config\.method: method 'resnet' is not a trainable network"),
}


@pytest.mark.parametrize("edit, expected", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_configuration_is_refused_naming_the_field_and_the_fix(
    tmp_path: Path, edit: Callable[[Dict[str, Any]], None], expected: str
) -> None:
    _unet_checkpoint(tmp_path / "unet.pt")
    data = torch.load(tmp_path / "unet.pt", weights_only=True)
    edit(data["config"])
    torch.save(data, tmp_path / "edited.pt")
    with pytest.raises(LiverSegError, match=expected) as error:
        Checkpoint.load(tmp_path / "edited.pt")
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'edited.pt'}: invalid checkpoint configuration: ")
    assert message.endswith("retrain the model with `liverseg train`, or use the shipped model (leave out --model)")


def test_a_configuration_that_is_no_dictionary_is_refused(tmp_path: Path) -> None:
    _unet_checkpoint(tmp_path / "unet.pt")
    data = torch.load(tmp_path / "unet.pt", weights_only=True)
    data["config"] = None
    torch.save(data, tmp_path / "edited.pt")
    with pytest.raises(LiverSegError, match="invalid checkpoint configuration: config = None is not a dictionary"):
        create_segmenter("unet", model_path=str(tmp_path / "edited.pt"), device="cpu")


@pytest.mark.parametrize("method", ["unet", "autoencoder", "vae", "vitautoenc"])
def test_every_preset_passes_the_checks(method: str) -> None:
    cls = deep_segmenter_class(method)
    for preset in cls.presets:
        assert config_problems(cls.preset_config(preset).to_dict()) == []


def test_a_full_disk_leaves_the_previous_checkpoint_intact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _unet_checkpoint(tmp_path / "last.pt")
    before = (tmp_path / "last.pt").read_bytes()
    loaded = Checkpoint.load(tmp_path / "last.pt")

    def disk_full(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(LiverSegError, match=r"No space left on device.*\(any earlier file of that name is kept\)"):
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
