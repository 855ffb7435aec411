"""Segmenters by name: ``create_segmenter("em")`` and friends.

Each segmenter lives in its own file; this registry only maps the CLI's ``--method`` names to them,
importing a segmenter's module (and so torch, for the deep ones) only when it is asked for.
"""

from __future__ import annotations

import importlib
import json
from typing import Dict, Optional, Tuple

from ..errors import MethodUnavailableError
from .base import Segmenter

# --method name -> (module, class, one-line description)
SEGMENTERS: Dict[str, Tuple[str, str, str]] = {
    "em": ("em", "EMSegmenter", "Gaussian mixture fitted by EM with anatomical priors; needs no training data"),
    "unet": ("unet", "UNetSegmenter", "MONAI residual U-Net; needs a trained model (--model)"),
    "autoencoder": ("autoencoder", "AutoEncoderSegmenter", "MONAI AutoEncoder; needs a trained model (--model)"),
    "vitautoenc": ("vit_autoencoder", "ViTAutoEncoderSegmenter", "MONAI ViTAutoEnc + segmentation head; needs a trained model"),
    "vae": ("vae", "VAESegmenter", "MONAI VarAutoEncoder, Dice-CE + KL; needs a trained model (--model)"),
}

PAPER_DICE: Dict[str, float] = {"unet": 0.9675, "autoencoder": 0.8894, "vitautoenc": 0.5997, "vae": 0.5982, "em": 0.1749}
"""The paper's mean liver Dice per method (per slice, on its own test split), which our per-volume figures
are shown beside (``make report``, ``liverseg table``)."""


def _measured() -> Dict[str, float]:
    """Method -> mean liver Dice on real CT it never saw, at the deep models' last epoch (no epoch chosen
    on the test case), from the shipped ``models/measured.json`` (written by ``make report``); empty when
    not measured."""
    from ..checkpoint import MEASURED, MODELS_DIR

    path = MODELS_DIR / MEASURED
    return json.loads(path.read_text()) if path.is_file() else {}


def measured_liver_dice(name: str) -> Optional[float]:
    """The measured mean liver Dice of ``name`` (see :func:`_measured`); None when not measured."""
    return _measured().get(name)


def default_method() -> str:
    """The best measured method; EM, which needs no model, when nothing is measured."""
    measured = {name: dice for name, dice in _measured().items() if name in SEGMENTERS}
    return max(measured, key=measured.__getitem__) if measured else "em"


def create_segmenter(name: str, model_path: Optional[str] = None, device: str = "auto") -> Segmenter:
    """Build the segmenter called ``name``.

    Raises:
        MethodUnavailableError: unknown name, or a deep method without a model (see the message).
    """
    if name not in SEGMENTERS:
        raise MethodUnavailableError(f"unknown method '{name}'; choose one of {', '.join(SEGMENTERS)}")
    module_name, class_name, _ = SEGMENTERS[name]
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, class_name)(model_path=model_path, device=device)


__all__ = ["PAPER_DICE", "SEGMENTERS", "Segmenter", "create_segmenter", "default_method", "measured_liver_dice"]
