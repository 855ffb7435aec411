"""The interface every segmenter implements: a CT volume in, a labelmap on the same grid out."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Callable, Optional

import numpy as np

from ..errors import CancelledError
from ..volume import Volume

ProgressCallback = Callable[[float, str], None]
"""Called with the fraction done (0..1) and a short description of the current step."""


class Segmenter(ABC):
    """Segments the liver (label 1) and liver tumours (label 2) in a CT.

    Subclasses set ``name`` (the CLI's ``--method``) and ``description`` (one line for menus) and
    implement :meth:`_segment`, calling :meth:`_step` between stages so progress is reported and a
    cancel request is honoured within a second or two.
    """

    name: str = ""
    description: str = ""

    def __init__(self) -> None:
        self._progress: Optional[ProgressCallback] = None
        self._cancel: Optional[threading.Event] = None

    def segment(
        self,
        ct: Volume,
        progress: Optional[ProgressCallback] = None,
        cancel: Optional[threading.Event] = None,
    ) -> np.ndarray:
        """Segment ``ct``.

        Args:
            ct: CT in Hounsfield units, array shape (I, J, K).
            progress: optional callback receiving (fraction done, step name).
            cancel: optional event; once set, the run stops at the next step with CancelledError.

        Returns:
            uint8 labelmap of shape (I, J, K) on the CT's grid: 0 background, 1 liver, 2 tumour.
        """
        self._progress, self._cancel = progress, cancel
        try:
            labels = self._segment(ct)
            self._step(1.0, "done")
        finally:
            self._progress, self._cancel = None, None
        if labels.shape != ct.array.shape:
            raise AssertionError(f"{self.name} returned shape {labels.shape} for a CT of shape {ct.array.shape}")
        return labels.astype(np.uint8, copy=False)

    @abstractmethod
    def _segment(self, ct: Volume) -> np.ndarray:
        """Return the labelmap of ``ct`` (shape (I, J, K), values 0/1/2)."""

    def _step(self, fraction: float, message: str) -> None:
        """Report progress and stop here if the caller asked to cancel."""
        if self._cancel is not None and self._cancel.is_set():
            raise CancelledError(f"{self.name} segmentation cancelled")
        if self._progress is not None:
            self._progress(fraction, message)
