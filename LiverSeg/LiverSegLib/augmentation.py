"""The training input: preprocessing as at inference, then random patches and augmentation.

MONAI's transforms do the work; two small ones are ours because MONAI has no equivalent:

- :class:`RandPartialScand` cuts a volume down to a thin slab through the liver. Users load partial
  scans (a 20-slice DICOM series is common); a network that has only seen whole abdomens fails on them
  (leave-one-out U-Net on such a slab: liver Dice 0.51 at the last epoch without this transform, 0.90 with
  it; ``Resources/Models/REPORT.md``).
- :class:`RandLabelIntensityd` shifts the intensity of each labelled structure by its own random
  offset, the idea of SynthSeg (Billot et al., Medical Image Analysis 2023) with the only label map we
  have: the liver is ~50 HU without contrast and 90-130 HU with it, and tumours may be darker or brighter
  than the liver, so the network must learn shape and context, not one contrast phase.
- :class:`RandSyntheticTumoursd` paints synthetic lesions into the liver of a training volume and
  labels them tumour (:mod:`LiverSegLib.synthetic_tumours`): no real CT here has a tumour label, so
  without it the tumour class is learnt from phantoms alone and no real tumour is found.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, Hashable, Mapping, Sequence, Set

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    MapTransform,
    RandAffined,
    RandCropByLabelClassesd,
    RandCropByPosNegLabeld,
    RandGaussianNoised,
    RandomizableTransform,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)
from scipy.ndimage import gaussian_filter

from .checkpoint import ModelConfig
from .preprocessing import LIVER, TUMOUR
from .synthetic_tumours import MIN_LIVER_ML, insert_tumours
from .volume import spacing_of
from .segmenters.deep import preprocessing_transforms


class RandPartialScand(RandomizableTransform, MapTransform):
    """With probability ``prob``, keep only a slab of ``thickness_mm`` through a random liver slice.

    Input and output: dict entries (C, X, Y, Z) on the working grid with ``label_key`` the labelmap;
    all ``keys`` are cut to the same Z range (X and Y are kept). Volumes without liver pass unchanged.

    Args:
        keys: the image and label keys.
        label_key: the labelmap, whose liver (>= 1) slices the slab is centred on.
        slice_mm: the working grid's slice spacing.
        thickness_mm: (min, max) slab thickness, drawn uniformly.
        prob: probability of cutting.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str,
        slice_mm: float,
        thickness_mm: Sequence[float] = (30.0, 120.0),
        prob: float = 0.3,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.label_key = label_key
        self.slices = (max(1, round(thickness_mm[0] / slice_mm)), max(1, round(thickness_mm[1] / slice_mm)))

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        self.randomize(None)
        result = dict(data)
        if not self._do_transform:
            return result
        liver_slices = np.flatnonzero(np.isin(np.asarray(result[self.label_key][0]), (LIVER, TUMOUR)).any(axis=(0, 1)))
        if liver_slices.size == 0:
            return result
        centre = int(self.R.choice(liver_slices))
        thickness = int(self.R.randint(self.slices[0], self.slices[1] + 1))
        start = max(0, centre - thickness // 2)
        for key in self.key_iterator(result):
            result[key] = result[key][..., start : start + thickness]
        return result


class RandLabelIntensityd(RandomizableTransform, MapTransform):
    """With probability ``prob``, add to each label value of ``labels`` its own offset in [-offset, offset].

    Input and output: image (C, X, Y, Z) windowed to 0..1 under ``keys``, labelmap (1, X, Y, Z) under
    ``label_key``. The offset map is blurred by ``sigma`` voxels so a boundary keeps a partial-volume
    ramp rather than a synthetic step the network could learn as a shortcut; the image stays in 0..1.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str,
        labels: Sequence[int] = (1, 2),
        offset: float = 0.12,
        sigma: float = 1.0,
        prob: float = 0.3,
    ) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.label_key, self.labels, self.offset, self.sigma = label_key, tuple(labels), offset, sigma

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        self.randomize(None)
        result = dict(data)
        if not self._do_transform:
            return result
        offsets = self.R.uniform(-self.offset, self.offset, size=len(self.labels))
        label = np.asarray(result[self.label_key][0])
        shift = np.zeros(label.shape, dtype=np.float32)
        for value, offset in zip(self.labels, offsets):
            shift[label == value] = offset
        shift = torch.from_numpy(gaussian_filter(shift, self.sigma))
        for key in self.key_iterator(result):
            result[key] = (result[key] + shift.to(result[key].device)).clamp(0.0, 1.0)
        return result


class RandSyntheticTumoursd(RandomizableTransform, MapTransform):
    """With probability ``prob``, paint synthetic lesions into the liver and label them tumour.

    Input and output: image (1, X, Y, Z) windowed to 0..1 under ``keys`` (``hu_window`` says how), and
    the labelmap (1, X, Y, Z) under ``label_key``; lesions go only into voxels labelled liver (never
    into UNSURE voxels or a real tumour). Nothing is written to disk: each step draws new lesions. A
    volume whose liver is under ``MIN_LIVER_ML`` passes unchanged, with one warning naming the case.
    """

    def __init__(self, keys: KeysCollection, label_key: str, hu_window: Sequence[float], prob: float = 0.5) -> None:
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.label_key = label_key
        self.units_per_hu = 1.0 / (float(hu_window[1]) - float(hu_window[0]))
        self._warned: Set[str] = set()

    def __call__(self, data: Mapping[Hashable, Any]) -> Dict[Hashable, Any]:
        self.randomize(None)
        result = dict(data)
        if not self._do_transform:
            return result
        label = result[self.label_key]
        affine = np.asarray(label.affine)
        liver = np.asarray(label[0]) == LIVER
        liver_ml = float(liver.sum() * np.prod(spacing_of(affine))) / 1000.0
        if liver_ml < MIN_LIVER_ML:
            name = str(result.get("name", "a training case"))
            if name not in self._warned:
                self._warned.add(name)
                warnings.warn(f"{name}: its liver label holds {liver_ml:.0f} mL, too little for synthetic tumours "
                              f"(at least {MIN_LIVER_ML:.0f} mL); it trains without them. Check its label if the "
                              "CT shows a whole liver.", stacklevel=2)
            return result
        rng = np.random.default_rng(self.R.randint(2**31))
        for key in self.key_iterator(result):
            painted, tumour, _ = insert_tumours(np.asarray(result[key][0]), liver, affine, rng, self.units_per_hu)
            image = result[key].clone()
            image[0] = torch.from_numpy(painted).clamp(0.0, 1.0)
            result[key] = image
        new_label = label.clone()
        new_label[0][torch.from_numpy(tumour)] = TUMOUR
        result[self.label_key] = new_label
        return result


def training_transforms(
    read: Callable[[Any], Dict[str, Any]],
    config: ModelConfig,
    samples: int,
    partial_scan_prob: float = 0.0,
    label_intensity_prob: float = 0.0,
    synthetic_tumour_prob: float = 0.0,
    tumour_patch_share: float = 0.0,
) -> Compose:
    """Read and preprocess as at inference (deterministic: CacheDataset keeps the result), then per-step
    random transforms.

    Output per volume: ``samples`` dicts with image (1, *patch) in 0..1 and label (1, *patch) in {0, 1, 2}.

    Args:
        read: dataset item -> ``{"image": CT (1, I, J, K) in HU, "label": labelmap (1, I, J, K)}``.
        config: the network's preprocessing (working grid, window, patch size).
        samples: patches per volume.
        partial_scan_prob: probability of :class:`RandPartialScand` (0 disables it); presets that
            resize whole volumes need 0 (the slab would be cut after the resize).
        label_intensity_prob: probability of :class:`RandLabelIntensityd` (0 disables it).
        synthetic_tumour_prob: probability of :class:`RandSyntheticTumoursd` (0 disables it).
        tumour_patch_share: share of the patches centred on tumour (with a third on background and the
            rest on liver; MONAI's ``RandCropByLabelClassesd``); 0 keeps two of three patches on liver or
            tumour alike (``RandCropByPosNegLabeld``), where the small tumour class is rarely seen.
    """
    prep = config.preprocessing
    keys = ("image", "label")
    if partial_scan_prob > 0 and prep.resize is not None:
        raise ValueError("partial-scan slabs need a preset that resamples to a spacing, not one that resizes")
    random_transforms = [
        # On the whole volume, before any cut: lesions at the dome and the border are placed as often as deep ones.
        *([RandSyntheticTumoursd("image", "label", prep.hu_window, prob=synthetic_tumour_prob)]
          if synthetic_tumour_prob > 0 else []),
        # Thin slabs first, then the padding below surrounds them exactly as sliding-window inference does.
        *([RandPartialScand(keys, "label", prep.spacing[2], prob=partial_scan_prob)] if partial_scan_prob > 0 else []),
        # Volumes smaller than a patch are padded with 0 (below the HU window, like air).
        SpatialPadd(keys, spatial_size=prep.patch_size),
        # Two of three patches centred on liver or tumour: the liver fills a few percent of a scan.
        (RandCropByLabelClassesd(keys, label_key="label", spatial_size=prep.patch_size, num_classes=3,
                                 ratios=[1 / 3, 2 / 3 - tumour_patch_share, tumour_patch_share], num_samples=samples,
                                 image_key="image", image_threshold=0.0, warn=False)
         if tumour_patch_share > 0 else
         RandCropByPosNegLabeld(keys, label_key="label", spatial_size=prep.patch_size, pos=2, neg=1,
                                num_samples=samples, image_key="image", image_threshold=0.0)),
        *([RandLabelIntensityd("image", "label", prob=label_intensity_prob)] if label_intensity_prob > 0 else []),
        # Patients lie supine: small rotations (mostly about the S axis) and size changes, no flips
        # (the liver is on the right).
        RandAffined(keys, prob=0.3, rotate_range=(0.05, 0.05, 0.2), scale_range=(0.1, 0.1, 0.1),
                    mode=("bilinear", "nearest"), padding_mode="border"),
        # Scanners and contrast phases shift and scale HU; noise differs with dose.
        RandScaleIntensityd("image", factors=0.1, prob=0.5),
        RandShiftIntensityd("image", offsets=0.05, prob=0.5),
        RandGaussianNoised("image", std=0.01, prob=0.2),
    ]
    return Compose([read, *preprocessing_transforms(prep, keys), *random_transforms])
