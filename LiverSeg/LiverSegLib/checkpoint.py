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
``torch.load(weights_only=True)``: a checkpoint from an untrusted source cannot run code on load. The
configuration is then checked (:func:`config_problems`) before anything is built from it, so an edited or
foreign file is refused naming the field to blame, not met with a traceback or a silently different network.
Writes go to a temporary file beside the target, are flushed to disk and then renamed over it, so a
crash or a full disk mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import collections.abc
import hashlib
import inspect
import json
import math
import os
import pickle
import re
import typing
import warnings
import zipfile
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Dict, List, Optional, Sequence, Tuple, Type

import numpy as np
import torch

from .errors import LiverSegError, MethodUnavailableError
from .volume import atomic_output

if TYPE_CHECKING:  # only for annotations: the segmenters import this module
    from .segmenters.deep import DeepSegmenter

FORMAT = "liverseg-checkpoint"
VERSION = 1

MODELS_DIR = Path(__file__).resolve().parent / "models"
"""Where shipped models live: ``LiverSegLib/models/<method>.pt`` (with its card ``<method>.md``), inside the
package, so that pip and the module's CMake install them with the code."""
MANIFEST = "models.json"
"""{method: {"file": "<method>.pt", "sha256": ...}} for the shipped models, written by `make models`."""
MEASURED = "measured.json"
"""{method: mean unseen liver Dice} of the shipped models, written by `make report`; picks the default method."""

MAX_PARAMETERS = 10**9
"""A configuration building more weights (4 GB of float32, over ten times the largest preset) is refused as absurd."""

_REFUSED_GLOBAL = re.compile(r"GLOBAL (\S+) was not an allowed global")
"""The object torch's weights-only unpickler names when it refuses a file."""


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
        # atomic_output reports a failed write (full disk, ...) as one line naming the checkpoint.
        with atomic_output(path) as temp, open(temp, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())  # on disk before the rename makes it the checkpoint
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike, method: Optional[str] = None) -> "Checkpoint":
        """Read a checkpoint with ``torch.load(weights_only=True)`` onto the CPU.

        Args:
            path: the ``.pt`` file.
            method: if given, the method the checkpoint must hold (``"unet"``, ...).

        Raises:
            LiverSegError: missing, truncated or foreign file, a malformed configuration, or a checkpoint of
                another method.
        """
        path = Path(path)
        if not path.is_file():
            raise LiverSegError(f"{path}: no such checkpoint file; check the --model path")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            # The weights-only unpickler refused the file: not a pickle of tensors and primitives (it could run
            # code). Torch's own message suggests weights_only=False, which a user must not be told to do.
            found = _REFUSED_GLOBAL.search(str(exc))
            raise LiverSegError(
                f"{path}: not a LiverSeg checkpoint, or one holding objects other than weights and plain values"
                f"{f' ({found.group(1)})' if found else ''}, which LiverSeg does not load because unpickling them "
                "could run code; use a checkpoint written by `liverseg train`, or the shipped model (leave out --model)"
            ) from None
        except (zipfile.BadZipFile, EOFError, RuntimeError, ValueError, KeyError) as exc:
            # A truncated download or a file that is no PyTorch archive.
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
        problems = config_problems(data.get("config"))
        if problems:
            raise LiverSegError(
                f"{path}: invalid checkpoint configuration: {'; '.join(problems)}; the file was edited or written by "
                "another program: retrain the model with `liverseg train`, or use the shipped model (leave out --model)"
            )
        config = ModelConfig.from_dict(data["config"])
        if method is not None and config.method != method:
            raise LiverSegError(
                f"{path}: holds a '{config.method}' model, not '{method}'; use --method {config.method} "
                f"or give a {method} checkpoint"
            )
        training, metrics = data.get("training") or {}, data.get("metrics") or {}
        return cls(config, data["state_dict"], training, metrics, data.get("resume"))


def config_problems(config: Any) -> List[str]:
    """Everything wrong with a checkpoint's ``config`` (as saved: a plain dict), each naming its field.

    Checked before anything is built from it: the layout of :class:`ModelConfig`; a grid, window and patch
    size an image can have; and a network its segmenter's ``build_network`` takes (its keyword parameters are
    the allowed keys), builds, and that is not absurdly large, with patch sides its size multiple fits.
    """
    # In stages, each reporting all it finds: the values need the layout, the network build needs the patch size.
    return (
        _layout_problems(config, ModelConfig, "config")
        or _preprocessing_problems(config["preprocessing"])
        or _network_problems(config)
    )


def _layout_problems(value: Any, hint: Any, name: str) -> List[str]:
    """``value`` against the type ``hint``; a dataclass is a dict of exactly its fields."""
    if is_dataclass(hint):
        return _fields_problems(value, typing.get_type_hints(hint), [f.name for f in fields(hint)], name)
    return [] if _fits(value, hint) else [f"{name} = {value!r} is not {_describe(hint)}"]


def _fields_problems(value: Any, hints: Dict[str, Any], required: Collection[str], name: str) -> List[str]:
    """``value`` as a dict of the fields ``hints`` types (``required`` ones present, no others)."""
    if not isinstance(value, dict):
        return [f"{name} = {value!r} is not a dictionary"]
    return (
        [f"{name}.{key}: missing" for key in required if key not in value]
        + [f"{name}.{key}: unknown (expected {', '.join(hints)})" for key in value if key not in hints]
        + [p for key, hint in hints.items() if key in value for p in _layout_problems(value[key], hint, f"{name}.{key}")]
    )


def _fits(value: Any, hint: Any) -> bool:
    """Whether a saved (JSON-like) value has the type ``hint``, for the typing forms configurations use.

    Raises:
        TypeError: a form this check does not know: extend it with the configuration that uses it.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None) or hint in (str, bool):
        return type(value) is hint
    if hint in (int, float):  # a bool is no number here; an int is a float (JSON writes 2.0 as 2)
        return not isinstance(value, bool) and isinstance(value, int if hint is int else (int, float))
    if origin is typing.Union:
        return any(_fits(value, arg) for arg in args)
    if origin is tuple:
        return isinstance(value, (list, tuple)) and len(value) == len(args) and all(map(_fits, value, args))
    if origin in (list, collections.abc.Sequence):
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items())
    raise TypeError(f"no check for configuration type {hint}")


def _describe(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _preprocessing_problems(prep: Dict[str, Any]) -> List[str]:
    """Values no working grid, window or patch can have (their types are checked already)."""
    problems = [
        f"config.preprocessing.{key} = {prep[key]}: sizes must be positive finite numbers"
        for key in ("spacing", "resize", "patch_size")
        if prep[key] is not None and not all(math.isfinite(v) and v > 0 for v in prep[key])
    ]
    low, high = prep["hu_window"]
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        problems.append(f"config.preprocessing.hu_window = {prep['hu_window']}: needs finite low < high HU")
    try:
        Preprocessing(**prep)
    except ValueError as exc:  # what the class itself refuses (spacing and resize both given, or neither)
        problems.append(f"config.preprocessing: {exc}")
    return problems


def _network_problems(config: Dict[str, Any]) -> List[str]:
    """The network keys against its builder's signature, then the network built with shapes only."""
    from .segmenters.deep import deep_segmenter_class  # here: the segmenters import this module

    try:
        segmenter = deep_segmenter_class(config["method"])
    except LiverSegError as exc:
        return [f"config.method: {exc}"]
    hints, required = _builder_fields(segmenter.build_network)
    network = config["network"]
    return _fields_problems(network, hints, required, "config.network") or _build_problems(
        segmenter, network, tuple(config["preprocessing"]["patch_size"])
    )


def _builder_fields(builder: Callable[..., Any]) -> Tuple[Dict[str, Any], List[str]]:
    """The network keys ``builder`` takes, typed, and those without a default (``patch_size`` is not one:
    it comes from the preprocessing)."""
    parameters = {
        name: parameter for name, parameter in inspect.signature(builder).parameters.items()
        if name != "patch_size" and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    }
    hints = typing.get_type_hints(builder)
    required = [name for name, parameter in parameters.items() if parameter.default is parameter.empty]
    return {name: hints.get(name, Any) for name in parameters}, required


def _build_problems(segmenter: Type[DeepSegmenter], network: Dict[str, Any], patch_size: Tuple[int, ...]) -> List[str]:
    """What building ``segmenter``'s network from ``network`` shows: arguments it refuses, empty or
    absurdly many weights, a patch size off its size multiple."""
    described = f"config.network = {json.dumps(network)}"
    try:
        # Shapes without storage: an absurd width allocates nothing. Warnings are the real build's to give.
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built = segmenter.build_network(patch_size, **network)
    except LiverSegError:
        raise  # a missing package (MethodUnavailableError), not a bad checkpoint
    except Exception as exc:  # whatever the builder (MONAI) raises for these arguments
        return [f"{described}: the {segmenter.name} network cannot be built from it ({type(exc).__name__}: {exc})"]
    sizes = [parameter.numel() for parameter in built.parameters()]
    if 0 in sizes:
        return [f"{described}: builds {sizes.count(0)} layer(s) without weights; channel counts must be positive"]
    if sum(sizes) > MAX_PARAMETERS:
        return [f"{described}: builds {sum(sizes):,} weights, more than the {MAX_PARAMETERS:,} of any sensible network"]
    multiple = segmenter.size_multiple(**network)
    if any(p % multiple for p in patch_size):
        return [f"config.preprocessing.patch_size = {list(patch_size)}: each side must be a multiple of {multiple} "
                "for this network"]
    return []


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
