"""What the four deep segmenters share: presets, preprocessing, sliding-window inference, device choice.

Every deep segmenter runs the same flow (:meth:`DeepModel.segment`), top to bottom::

    CT (I, J, K) in HU
      -> preprocess: RAS orientation, working spacing (or the paper's fixed resize), crop to the
         body, HU window to 0..1                                 -> image (1, X, Y, Z) on the working grid
      -> network, tile by tile (sliding window, Gaussian blending) -> logits (3, X, Y, Z) -> argmax
      -> clean_labels: the liver component in the right upper abdomen, holes filled, tumour only inside the liver
      -> to_input_grid: back onto the CT's own grid and affine     -> uint8 labelmap (I, J, K)

A segmenter file (``unet.py``, ``autoencoder.py``, ``vit_autoencoder.py``, ``vae.py``) only says which
network it builds, its two presets and, where it differs from Dice-CE, its loss. The training pipeline
(:mod:`LiverSegLib.training`) uses :func:`preprocessing_transforms` and :class:`DeepModel` from here, so
a network is trained on exactly the input it later segments.
"""

from __future__ import annotations

import importlib
import math
from abc import abstractmethod
from dataclasses import dataclass, replace
from typing import Any, Callable, ClassVar, Dict, List, Optional, Sequence, Type

import numpy as np
import torch
from monai.data import MetaTensor
from monai.inferers import sliding_window_inference
from monai.losses import DiceLoss
from monai.transforms import (
    CropForegroundd,
    MapTransform,
    Orientationd,
    Resized,
    ScaleIntensityRanged,
    Spacingd,
)
from torch import nn
from torch.nn import functional as F

from ..anatomy import body_mask, liver_in_view, liver_region
from ..checkpoint import Checkpoint, ModelConfig, Preprocessing, shipped_model_path
from ..errors import LiverSegError
from ..preprocessing import BODY_HU, TUMOUR, UNSURE, clean_labels, to_input_grid
from ..volume import Volume, spacing_of
from .base import Segmenter

NUM_CLASSES = 3
"""Network outputs: background, liver, tumour (the labelmap values)."""

DEEP_METHODS = ("unet", "autoencoder", "vitautoenc", "vae")
"""The ``--method`` names served by subclasses of :class:`DeepSegmenter`."""

HU_WINDOW = (-200.0, 300.0)
"""Soft-tissue window: fat, liver (~60-120 HU), enhanced vessels and hypodense tumours keep their contrast."""

DEFAULT_PREPROCESSING = Preprocessing(spacing=(2.0, 2.0, 2.5), resize=None, hu_window=HU_WINDOW, patch_size=(96, 96, 64))
"""Our input: a 2 x 2 x 2.5 mm grid cropped to the body, in 96 x 96 x 64 tiles (19 x 19 x 16 cm)."""

PAPER_PREPROCESSING = Preprocessing(spacing=None, resize=(128, 128, 64), hu_window=HU_WINDOW, patch_size=(128, 128, 64))
"""The paper's input: each whole volume resized to 128 x 128 x 64 (one tile is the whole volume)."""

StepCallback = Callable[[float, str], None]
"""(fraction done, message); may raise CancelledError to stop the run."""


# --------------------------------------------------------------------------------------------- devices


def choose_device(device: str = "auto") -> torch.device:
    """``"auto"``: the GPU if PyTorch sees one, else the CPU; ``"cpu"``; ``"cuda"`` or ``"cuda:N"``.

    Raises:
        LiverSegError: a GPU was asked for and PyTorch sees none, or the name is unknown.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except RuntimeError:
        raise LiverSegError(f"unknown device '{device}'; use auto, cpu or cuda") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise LiverSegError(
            f"--device {device}: PyTorch sees no CUDA GPU here (no NVIDIA driver, or a CPU-only torch build); "
            "use --device cpu or --device auto"
        )
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise LiverSegError(f"--device {device}: only {torch.cuda.device_count()} GPU(s) visible; use --device cuda:0")
    if chosen.type not in ("cpu", "cuda"):
        raise LiverSegError(f"unsupported device '{device}'; use auto, cpu or cuda")
    return chosen


def is_out_of_memory(exc: BaseException) -> bool:
    """True for the allocation failures of the CPU and GPU allocators (they raise different types)."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


# --------------------------------------------------------------------------------------------- presets


@dataclass(frozen=True)
class Preset:
    """One configuration of a network: how it is built, what it sees, how it is trained.

    Attributes:
        network: keyword arguments of the segmenter's ``build_network`` (JSON-able).
        preprocessing: working grid, HU window and patch size.
        optimizer: ``"adamw"`` (ours; weight decay 1e-5, cosine learning-rate schedule) or ``"rmsprop"`` (the paper's;
            momentum 0.9, constant learning rate).
        learning_rate: initial learning rate.
        epochs: passes over the training volumes.
        batch_size: volumes per step.
        samples_per_volume: patches cropped from each volume per step (a step sees
            ``batch_size * samples_per_volume`` patches).
    """

    network: Dict[str, Any]
    preprocessing: Preprocessing
    optimizer: str = "adamw"
    learning_rate: float = 1e-3
    epochs: int = 300
    batch_size: int = 2
    samples_per_volume: int = 4


def paper_preset(network: Dict[str, Any]) -> Preset:
    """The paper's training for ``network``: 128 x 128 x 64 volumes, RMSprop lr 1e-5 momentum 0.9, 80 epochs.

    The paper states the optimizer and the epochs for its U-Net; the other networks use the same.
    """
    return Preset(
        network, PAPER_PREPROCESSING, optimizer="rmsprop", learning_rate=1e-5, epochs=80, samples_per_volume=1
    )


# --------------------------------------------------------------------------------------------- preprocessing


def volume_to_metatensor(volume: Volume) -> MetaTensor:
    """(I, J, K) volume -> float32 MetaTensor (1, I, J, K) carrying the volume's affine."""
    array = torch.from_numpy(np.asarray(volume.array, dtype=np.float32))
    return MetaTensor(array[None], affine=torch.as_tensor(volume.affine, dtype=torch.float64))


def _is_body(image: torch.Tensor) -> torch.Tensor:
    return image > BODY_HU


def preprocessing_transforms(prep: Preprocessing, keys: Sequence[str] = ("image",)) -> List[MapTransform]:
    """The deterministic input pipeline shared by training and inference.

    ``keys[0]`` is the CT in HU, shape (1, I, J, K); a second key is its labelmap (resampled
    nearest-neighbour). Output: image (1, X, Y, Z) in 0..1 on the working grid (RAS, ``prep.spacing``
    or ``prep.resize``), cropped to the body unless the paper's resize is used (it resizes the whole
    volume); each MetaTensor's affine maps its voxels to RAS mm.
    """
    keys = tuple(keys)
    image_key = keys[0]
    modes = ("bilinear", "nearest")[: len(keys)]
    transforms: List[MapTransform] = [Orientationd(keys, axcodes="RAS", labels=None)]
    if prep.resize is not None:
        transforms.append(Resized(keys, spatial_size=prep.resize, mode=("trilinear", "nearest")[: len(keys)]))
    else:
        transforms += [
            # Border padding: an image edge extends as tissue, not as a false -1000 HU wall. float32
            # (MONAI computes in float64 by default) halves the peak memory at 512x512x300.
            Spacingd(
                keys, pixdim=prep.spacing, mode=modes, padding_mode=("border", "zeros")[: len(keys)], dtype=torch.float32
            ),
            # Air around the patient holds no liver: cropping it often saves a third of the voxels.
            CropForegroundd(keys, source_key=image_key, select_fn=_is_body, margin=2, allow_smaller=True),
        ]
    low, high = prep.hu_window
    transforms.append(ScaleIntensityRanged(image_key, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True))
    return transforms


# --------------------------------------------------------------------------------------------- inference


class DeepModel:
    """A network together with the preprocessing it was trained with: a CT in, a labelmap out.

    Args:
        network: maps (B, 1, *patch_size) to what ``logits`` turns into (B, 3, *patch_size) logits.
        config: the network's checkpoint configuration (its preprocessing is used here).
        logits: extracts the logits from the network's output (identity for most networks).
        device: where the network runs.
        sw_batch_size: tiles per forward pass; halved automatically when memory runs out.
    """

    overlap = 0.25
    """Tile overlap: with Gaussian blending it hides seams at tile borders, for at most (4/3)^3 = 2.4x the tiles."""

    def __init__(
        self,
        network: nn.Module,
        config: ModelConfig,
        logits: Callable[[Any], torch.Tensor],
        device: torch.device,
        sw_batch_size: Optional[int] = None,
    ) -> None:
        self.network = network
        self.config = config
        self.logits = logits
        self.device = device
        # One tile at a time on the CPU keeps peak memory low at no speed cost; GPUs like batches.
        self.sw_batch_size = sw_batch_size or (4 if device.type == "cuda" else 1)
        self._preprocess = preprocessing_transforms(config.preprocessing)

    def segment(self, ct: Volume, step: StepCallback) -> np.ndarray:
        """CT (I, J, K) in HU -> uint8 labelmap (I, J, K) on the CT's grid; ``step`` reports progress."""
        step(0.0, "resampling the CT to the working grid")
        image = self.preprocess(ct)
        labels = self.predict(image, lambda fraction: step(0.05 + 0.85 * fraction, "segmenting"))
        step(0.9, "cleaning the labelmap and resampling it to the CT grid")
        return self.postprocess(labels, image, ct)

    def preprocess(self, ct: Volume) -> MetaTensor:
        """CT (I, J, K) in HU -> image (1, X, Y, Z) in 0..1 on the working grid (:func:`preprocessing_transforms`)."""
        data = {"image": volume_to_metatensor(ct)}
        for transform in self._preprocess:
            data = transform(data)
        return data["image"]

    def predict(self, image: torch.Tensor, progress: Callable[[float], None] = lambda fraction: None) -> np.ndarray:
        """Sliding-window segmentation of a preprocessed image.

        Args:
            image: (1, X, Y, Z) in 0..1 on the working grid.
            progress: called with the fraction of tiles done before each forward pass; it may raise
                (CancelledError) to stop within one pass.

        Returns:
            uint8 (X, Y, Z) labelmap: the argmax of the blended logits.

        Raises:
            LiverSegError: out of memory even one tile at a time.
        """
        batch = image.as_subclass(torch.Tensor)[None]  # plain tensor: no metadata bookkeeping per tile
        roi = self.config.preprocessing.patch_size
        tiles = _tile_count(batch.shape[2:], roi, self.overlap)
        done = 0

        def predictor(tile: torch.Tensor) -> torch.Tensor:
            nonlocal done
            progress(min(done / tiles, 1.0))
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.device.type == "cuda"):
                logits = self.logits(self.network(tile)).float()
            done += tile.shape[0]
            return logits

        was_training = self.network.training
        self.network.eval()
        # Blended logits live on the GPU unless memory runs out, then on the CPU (slower, but it fits).
        stitch_device = self.device
        try:
            while True:
                done = 0
                try:
                    with torch.no_grad():
                        logits = sliding_window_inference(
                            batch, roi, self.sw_batch_size, predictor, overlap=self.overlap, mode="gaussian",
                            sw_device=self.device, device=stitch_device,
                        )
                    return logits[0].argmax(0).to(torch.uint8).cpu().numpy()
                except (RuntimeError, MemoryError) as exc:
                    if not is_out_of_memory(exc):
                        raise
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    if self.sw_batch_size > 1:
                        self.sw_batch_size //= 2
                    elif stitch_device.type == "cuda":
                        stitch_device = torch.device("cpu")
                    else:
                        on_gpu = self.device.type == "cuda"
                        fix = "use --device cpu (main memory is usually larger)" if on_gpu else "close other programs"
                        raise LiverSegError(
                            f"out of memory segmenting a {tuple(batch.shape[2:])} working grid on {self.device} even one "
                            f"tile at a time; {fix}, or use a machine with more memory"
                        ) from None
        finally:
            self.network.train(was_training)

    def postprocess(self, labels: np.ndarray, image: MetaTensor, grid: Volume) -> np.ndarray:
        """Working-grid labelmap (X, Y, Z) -> cleaned uint8 labelmap on ``grid``'s (I, J, K) grid and affine.

        ``image`` is the preprocessed input (1, X, Y, Z): it tells where the liver may lie (the right
        upper abdomen below the lungs, :func:`~LiverSegLib.anatomy.liver_region`), so the piece kept is
        the liver, not the largest piece. ``grid`` only lends its shape and affine: the CT, or its
        reference labelmap during validation.
        """
        low, high = self.config.preprocessing.hu_window
        hu = image[0].numpy() * (high - low) + low
        air_hu = max(BODY_HU, low)  # the window cannot tell lung from air below its floor
        body = body_mask(hu, air_hu)
        affine = image.affine.numpy()
        region = liver_region(hu, body, spacing_of(affine), air_hu)
        labels = clean_labels(labels, region)
        if not liver_in_view(labels > 0, hu, body, spacing_of(affine), air_hu):
            labels[:] = 0  # a chest-only or pelvis-only scan: its liver-like piece is another organ
        return to_input_grid(labels, affine, grid)


def _tile_count(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """Number of tiles sliding_window_inference visits (same scan rule), for progress reporting."""
    count = 1
    for size, tile in zip(shape, roi):
        if size > tile:
            interval = max(int(tile * (1.0 - overlap)), 1)
            count *= math.ceil((size - tile) / interval) + 1
    return count


# --------------------------------------------------------------------------------------------- segmenters


_SAMPLE_DICE = DiceLoss(to_onehot_y=True, softmax=True, ignore_index=UNSURE)
_BATCH_DICE = DiceLoss(to_onehot_y=True, softmax=True, ignore_index=UNSURE, batch=True)


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, batch_dice: bool = False,
                 tumour_weight: float = 1.0) -> torch.Tensor:
    """Dice (robust to the tiny tumour class) plus cross-entropy (stable gradients early on), equally weighted.

    MONAI's ``DiceCELoss`` with voxels labelled ``UNSURE`` left out of both terms (it has no
    ``ignore_index``; its ``DiceLoss`` and torch's cross-entropy do). ``logits``: (B, 3, X, Y, Z);
    ``target``: (B, 1, X, Y, Z) labelmap.

    ``batch_dice`` pools the Dice over the batch (nnU-Net's "batch Dice"): per patch, a patch without
    tumour scores any tumour voxel as a total loss, which teaches a rare class to stay silent.
    ``tumour_weight`` weighs tumour voxels in the cross-entropy (1: unweighted).
    """
    dice = _BATCH_DICE if batch_dice else _SAMPLE_DICE
    weight = torch.ones(NUM_CLASSES, dtype=logits.dtype, device=logits.device)
    weight[TUMOUR] = tumour_weight
    return dice(logits, target) + F.cross_entropy(logits, target[:, 0].long(), weight=weight, ignore_index=UNSURE)


class DeepSegmenter(Segmenter):
    """A segmenter running a trained network from a checkpoint.

    Subclasses set ``name``, ``description``, ``presets`` (``"default"`` and ``"paper"``) and implement
    :meth:`build_network`; networks whose output is not a plain logits tensor override :meth:`logits`,
    and those trained with more than Dice-CE override :meth:`loss`.

    Args:
        model_path: checkpoint file; ``None`` uses the shipped ``LiverSegLib/models/<name>.pt``.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (see :func:`choose_device`).

    Raises:
        MethodUnavailableError: no model path given and none shipped.
        LiverSegError: unreadable checkpoint, one of another method, or an unavailable device.
    """

    presets: ClassVar[Dict[str, Preset]] = {}

    def __init__(self, model_path: Optional[str] = None, device: str = "auto") -> None:
        super().__init__()
        self.device = choose_device(device)
        path = model_path if model_path is not None else shipped_model_path(self.name)
        checkpoint = Checkpoint.load(path, method=self.name)
        config = checkpoint.config
        network = self.build_network(config.preprocessing.patch_size, **config.network)
        try:
            network.load_state_dict(checkpoint.state_dict)
        except RuntimeError as exc:
            raise LiverSegError(
                f"{path}: weights do not fit the network described in the checkpoint ({str(exc).splitlines()[0]}); "
                "the file is damaged or was edited: retrain the model"
            ) from None
        self.model = DeepModel(network.to(self.device), config, self.logits, self.device)

    def _segment(self, ct: Volume) -> np.ndarray:
        return self.model.segment(ct, self._step)

    # ----------------------------------------------------------------------------------- per network

    @classmethod
    @abstractmethod
    def build_network(cls, patch_size: Sequence[int], **network: Any) -> nn.Module:
        """The network for tiles of ``patch_size`` (X, Y, Z): (B, 1, X, Y, Z) in, 3-class logits out."""

    @classmethod
    def size_multiple(cls, **network: Any) -> int:
        """Patch sides must be multiples of this: the network's total downsampling factor."""
        return int(np.prod(network["strides"]))

    @staticmethod
    def logits(output: Any) -> torch.Tensor:
        """(B, 3, X, Y, Z) logits from the network's output."""
        return output

    @classmethod
    def loss(cls, output: Any, target: torch.Tensor, **options: Any) -> torch.Tensor:
        """Training loss of one batch; ``target`` is the (B, 1, X, Y, Z) labelmap, ``options`` those of :func:`dice_ce_loss`."""
        return dice_ce_loss(cls.logits(output), target, **options)

    @classmethod
    def preset_config(
        cls,
        preset: str = "default",
        spacing: Optional[Sequence[float]] = None,
        patch_size: Optional[Sequence[int]] = None,
    ) -> ModelConfig:
        """The checkpoint configuration of ``preset``, with the working spacing or patch size replaced.

        Raises:
            LiverSegError: unknown preset, or a patch size the network cannot take.
        """
        if preset not in cls.presets:
            raise LiverSegError(f"unknown preset '{preset}' for {cls.name}; choose one of {', '.join(cls.presets)}")
        prep = cls.presets[preset].preprocessing
        if spacing is not None:
            if any(not s > 0.0 for s in spacing):
                raise LiverSegError(f"spacing {tuple(spacing)}: voxel sizes must be positive mm (e.g. --spacing 2 2 2.5)")
            prep = replace(prep, spacing=tuple(float(s) for s in spacing), resize=None)
        if patch_size is not None:
            prep = replace(prep, patch_size=tuple(int(p) for p in patch_size))
        network = cls.presets[preset].network
        multiple = cls.size_multiple(**network)
        if any(p <= 0 or p % multiple for p in prep.patch_size):
            example = " ".join(str(max(multiple, p // multiple * multiple)) for p in prep.patch_size)
            raise LiverSegError(
                f"patch size {prep.patch_size} does not fit the {cls.name} network: each side must be a positive "
                f"multiple of {multiple} (e.g. --patch-size {example})"
            )
        return ModelConfig(cls.name, preset, dict(network), prep)


def deep_segmenter_class(method: str) -> Type[DeepSegmenter]:
    """The :class:`DeepSegmenter` subclass serving ``--method method``.

    Raises:
        LiverSegError: ``method`` is not a deep (trainable) method.
    """
    from . import SEGMENTERS

    if method not in DEEP_METHODS:
        raise LiverSegError(f"method '{method}' is not a trainable network; choose one of {', '.join(DEEP_METHODS)}")
    module_name, class_name, _ = SEGMENTERS[method]
    return getattr(importlib.import_module(f"{__package__}.{module_name}"), class_name)


def count_parameters(network: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in network.parameters() if p.requires_grad)


__all__ = [
    "DEEP_METHODS",
    "NUM_CLASSES",
    "DeepModel",
    "DeepSegmenter",
    "Preset",
    "choose_device",
    "count_parameters",
    "deep_segmenter_class",
    "paper_preset",
    "preprocessing_transforms",
    "volume_to_metatensor",
]
