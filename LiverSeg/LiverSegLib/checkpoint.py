"""Model checkpoints: one file holding everything needed to rebuild, run and audit a trained network.

A checkpoint is a ``torch.save`` of a plain dictionary::

    {
        "format": "liverseg-checkpoint", "version": 1,
        "config": {                        # rebuilds the network and its input (ModelConfig.to_dict)
            "method": "unet", "preset": "default",
            "network": {...},              # keyword arguments of the segmenter's build_network
            "preprocessing": {"spacing": [2.0, 2.0, 2.5], "resize": None,
                              "hu_window": [-200.0, 300.0], "patch_size": [96, 96, 64]},
        },
        "state_dict": {name: tensor},      # the weights
        "training": {...},                 # settings and the training / validation case lists
        "metrics": {...},                  # per-epoch history and the validation scores
        "resume": {...} or None,           # optimizer, scheduler, epoch: only in a run's last.pt
    }

Everything but tensors is a JSON-able primitive, so :func:`Checkpoint.load` reads files with
``torch.load(weights_only=True)``: a checkpoint from an untrusted source cannot run code on load.
Writes go to a temporary file beside the target, are flushed to disk and then renamed over it, so a
crash or a full disk mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import LiverSegError, MethodUnavailableError
from .volume import atomic_output

FORMAT = "liverseg-checkpoint"
VERSION = 1

MODELS_DIR = Path(__file__).resolve().parent / "models"
"""Where shipped models live: ``LiverSegLib/models/<method>.pt`` (with its card ``<method>.md``), inside the
package, so that pip and the module's CMake install them with the code."""
MANIFEST = "models.json"
"""{method: {"file": "<method>.pt", "sha256": ...}} for the shipped models, written by `make models`."""
MEASURED = "measured.json"
"""{method: mean unseen liver Dice} of the shipped models, written by `make report`; picks the default method."""


@dataclass(frozen=True)
class Preprocessing:
    """What the network sees: a CT on a working grid, windowed to 0..1, in patches.

    Attributes:
        spacing: working voxel size in mm along R, A, S; ``None`` when ``resize`` is used.
        resize: the paper's alternative: every volume resampled to this fixed (X, Y, Z) grid size.
        hu_window: HU range mapped to 0..1 (values outside are clipped).
        patch_size: (X, Y, Z) voxels of one training patch and of one sliding-window tile.
    """

    spacing: Optional[Tuple[float, float, float]]
    resize: Optional[Tuple[int, int, int]]
    hu_window: Tuple[float, float]
    patch_size: Tuple[int, int, int]

    def __post_init__(self) -> None:
        if (self.spacing is None) == (self.resize is None):
            raise ValueError("give exactly one of spacing and resize")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that rebuilds a network and its input from a checkpoint (no weights)."""

    method: str
    preset: str
    network: Dict[str, Any]
    preprocessing: Preprocessing

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able form (tuples become lists)."""
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ModelConfig":
        prep = data["preprocessing"]
        return cls(
            method=str(data["method"]),
            preset=str(data["preset"]),
            network=dict(data["network"]),
            preprocessing=Preprocessing(
                spacing=_tuple(prep["spacing"], float),
                resize=_tuple(prep["resize"], int),
                hu_window=_tuple(prep["hu_window"], float),
                patch_size=_tuple(prep["patch_size"], int),
            ),
        )


@dataclass
class Checkpoint:
    """The content of one checkpoint file (see the module docstring for the layout)."""

    config: ModelConfig
    state_dict: Dict[str, torch.Tensor]
    training: Dict[str, Any] = field(default_factory=dict)
    metrics: Dict[str, Any] = field(default_factory=dict)
    resume: Optional[Dict[str, Any]] = None

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically: the file at ``path`` is either the previous one or this one, never a mix.

        Raises:
            LiverSegError: the file cannot be written (folder missing, disk full, ...); any previous
                checkpoint at ``path`` is left as it was.
        """
        payload = {
            "format": FORMAT,
            "version": VERSION,
            "config": self.config.to_dict(),
            "state_dict": {name: tensor.detach().cpu() for name, tensor in self.state_dict.items()},
            "training": _plain(self.training),
            "metrics": _plain(self.metrics),
            "resume": self.resume,
        }
        try:
            with atomic_output(path) as temp, open(temp, "wb") as handle:
                torch.save(payload, handle)
                handle.flush()
                os.fsync(handle.fileno())  # on disk before the rename makes it the checkpoint
        except OSError as exc:
            raise LiverSegError(
                f"{path}: cannot write the checkpoint ({exc.strerror or exc}); free disk space or choose another "
                "output folder (any previous checkpoint there is intact)"
            ) from exc
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, method: Optional[str] = None) -> "Checkpoint":
        """Read a checkpoint with ``torch.load(weights_only=True)`` onto the CPU.

        Args:
            path: the ``.pt`` file.
            method: if given, the method the checkpoint must hold (``"unet"``, ...).

        Raises:
            LiverSegError: missing, truncated or foreign file, or a checkpoint of another method.
        """
        path = Path(path)
        if not path.is_file():
            raise LiverSegError(f"{path}: no such checkpoint file; check the --model path")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError, KeyError) as exc:
            # A truncated download, a non-PyTorch file, or a pickle holding objects other than tensors
            # and primitives (refused by weights_only: it could run code).
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LiverSegError(
                f"{path}: not a readable LiverSeg checkpoint ({reason[:200]}); the file may be truncated or "
                "not a LiverSeg model: download it again or retrain with `liverseg train`"
            ) from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("state_dict"), dict):
            raise LiverSegError(f"{path}: a PyTorch file, but not a LiverSeg checkpoint; train one with `liverseg train`")
        if data.get("version") != VERSION:
            raise LiverSegError(
                f"{path}: checkpoint format version {data.get('version')} is not supported by this LiverSeg "
                f"(reads version {VERSION}); update LiverSeg or retrain the model"
            )
        try:
            config = ModelConfig.from_dict(data["config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise LiverSegError(f"{path}: checkpoint configuration is incomplete ({exc}); retrain the model") from exc
        if method is not None and config.method != method:
            raise LiverSegError(
                f"{path}: holds a '{config.method}' model, not '{method}'; use --method {config.method} "
                f"or give a {method} checkpoint"
            )
        training, metrics = data.get("training") or {}, data.get("metrics") or {}
        return cls(config, data["state_dict"], training, metrics, data.get("resume"))


def shipped_model_path(method: str) -> Path:
    """The model shipped with LiverSeg for ``method``, checked against the sha256 in ``models.json``.

    Raises:
        MethodUnavailableError: none is shipped (yet); the message says how to get one.
        LiverSegError: the file differs from the one shipped (altered or damaged).
    """
    path = MODELS_DIR / f"{method}.pt"
    manifest = MODELS_DIR / MANIFEST
    expected = json.loads(manifest.read_text()).get(method, {}).get("sha256") if manifest.is_file() else None
    if not path.is_file() or expected is None:
        raise MethodUnavailableError(
            f"no trained '{method}' model is shipped at {path}; train one with "
            f"`liverseg train DATASET_DIR --method {method} -o RUN_DIR` and pass --model RUN_DIR/best.pt, "
            "or rebuild the shipped models with `make models`"
        )
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != expected:
        raise LiverSegError(
            f"{path}: sha256 {actual[:12]}... differs from the shipped model's {expected[:12]}... ({manifest.name}); "
            "the file was altered or damaged: restore it from the LiverSeg release (git checkout) or rerun `make models`"
        )
    return path


def _plain(value: Any) -> Any:
    """``value`` as JSON-able primitives (lists, dicts with str keys, str, int, float, bool, None).

    Raises:
        TypeError: it holds something else (which ``weights_only`` loading would refuse).
    """
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value  # NaN stays NaN: an undefined Dice is not 0
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"checkpoint metadata must be JSON-able, got {type(value).__name__}")


def _tuple(values: Optional[Sequence[Any]], kind: type) -> Optional[tuple]:
    return None if values is None else tuple(kind(v) for v in values)
