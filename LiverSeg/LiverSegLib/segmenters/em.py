"""EM segmenter: a Gaussian mixture fitted by expectation-maximisation, steered by anatomical priors.

Needs no training data. Intensity alone cannot tell the liver from muscle, spleen or bowel (they share
its HU range, with or without contrast), so the mixture only proposes *liver-like tissue*; explicit
priors pick the liver out of it:

1. **HU range** -- the liver's mixture component is the soft-tissue component (mean within
   ``LIVER_HU``) that dominates the right lateral abdomen, the one place where liver is most of the soft
   tissue in any abdominal CT, contrast-enhanced or not.
2. **Position** -- right side of the body and, when the lungs are in the field of view, just below
   their base; otherwise the top of the scan (:func:`LiverSegLib.anatomy.liver_region`).
3. **Size and shape** -- erosion by ``SEPARATION_MM`` cuts the thin bridges between the liver and its
   neighbours; the largest remaining right-sided piece is grown back within the liver-like tissue,
   closed and hole-filled (vessels and lesions are part of the organ).

Tumours come from a second mixture fitted inside the organ's envelope (parenchyma, vessels, lesions):
a component clearly darker than the parenchyma is lesion, so lesions deep in the liver and at its
surface are found, and both stay part of the liver (:func:`_tumours`).

Everything runs on a 2.5 mm working grid and the result is resampled onto the CT's own grid.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from scipy import ndimage
from sklearn.mixture import GaussianMixture

from ..errors import LiverSegError
from ..anatomy import body_mask, liver_in_view, liver_region
from ..preprocessing import TUMOUR, clean_labels, to_input_grid, to_working_grid
from ..volume import Volume
from .base import Segmenter

WORKING_SPACING_MM = (2.5, 2.5, 2.5)
SOFT_TISSUE_HU = (-60.0, 260.0)
"""Voxels the mixture is fitted on: fat and bone are outside and need no modelling."""
LIVER_HU = (20.0, 160.0)
"""Plausible liver mean, from unenhanced (~50 HU) to portal venous (~130 HU)."""
N_COMPONENTS = 5
FIT_SAMPLES = 200_000
SEPARATION_MM = 7.5
LIVER_SPREAD_HU = 35.0
MIN_SHARE = 0.15
ENVELOPE_MM = 12.5
"""Closing radius of the organ: lesions up to about twice this deep at the liver's surface fall inside."""
LESION_COMPONENTS = 3
"""Inside the liver: parenchyma, vessels, lesions."""
LESION_SIGMAS = 2.5
LESION_MIN_HU = 15.0
TUMOUR_HU_BELOW_LIVER = 100.0
"""Voxels darker than the parenchyma by more than this are fluid, bile or fat, not solid tumour."""
MIN_TUMOUR_ML = 1.0
TUMOUR_ENCLOSED = 0.5
"""Share of a lesion's 5 mm rim that must be liver."""
SEED = 0


class EMSegmenter(Segmenter):
    """Liver and tumour segmentation by a Gaussian mixture over CT intensity with anatomical priors."""

    name = "em"
    description = "Gaussian mixture fitted by EM with anatomical priors; needs no training data"

    def __init__(self, model_path: Optional[str] = None, device: str = "auto") -> None:
        super().__init__()
        if model_path is not None:
            raise LiverSegError("the EM segmenter learns from each CT itself and takes no --model; drop --model")

    def _segment(self, ct: Volume) -> np.ndarray:
        self._step(0.05, "resampling to 2.5 mm")
        working = to_working_grid(ct, WORKING_SPACING_MM)
        hu = working[0].numpy()
        spacing = np.asarray(WORKING_SPACING_MM)

        self._step(0.25, "finding the body")
        body = body_mask(hu)
        # Everything below runs on the body's box (issues 12, 13): outside it nothing is liver, and a
        # margin wider than any dilation below keeps every result inside the box as on the whole grid.
        box = _body_box(body)
        full_shape, hu, body = hu.shape, np.ascontiguousarray(hu[box]), np.ascontiguousarray(body[box])
        smooth = ndimage.median_filter(hu, size=3)
        region = liver_region(hu, body, spacing)

        self._step(0.35, "fitting the Gaussian mixture (EM)")
        mixture, soft_in_region = _fit_mixture(smooth, body, region)

        self._step(0.5, "selecting the liver")
        posteriors = _posteriors(mixture, smooth, body)
        liver_components = _liver_components(mixture, posteriors, smooth[soft_in_region], region, spacing)
        liver_like = posteriors[..., liver_components].sum(axis=-1) > 0.5
        organ = _liver_from_tissue(liver_like, region, body, spacing)
        # The median filter and partial volume pull the organ's edge voxels below the posterior threshold.
        organ |= ndimage.binary_dilation(organ) & (posteriors[..., liver_components].sum(axis=-1) > 0.05)

        self._step(0.75, "finding tumours")
        labels = organ.astype(np.uint8)
        labels[_tumours(smooth, organ, body, spacing)] = TUMOUR  # may extend the organ at its surface
        labels = clean_labels(labels, region)
        if not liver_in_view(labels > 0, hu, body, spacing):
            labels[:] = 0  # a chest-only or pelvis-only scan: its liver-like piece is another organ

        self._step(0.85, "resampling to the CT grid")
        on_working_grid = np.zeros(full_shape, dtype=np.uint8)
        on_working_grid[box] = labels
        return to_input_grid(on_working_grid, working.affine.numpy(), ct)


BOX_MARGIN = int(np.ceil(max(ENVELOPE_MM, SEPARATION_MM, 5.0) / min(WORKING_SPACING_MM))) + 2
"""Voxels of air kept around the body's box: the widest dilation (the envelope's), one voxel of air
beyond it (so the erosions and hole filling see the same background as on the whole grid) and one for
the median filter."""


def _body_box(body: np.ndarray) -> Tuple[slice, slice, slice]:
    """The body's bounding box in X and Y widened by ``BOX_MARGIN`` (clipped to the grid), all of Z:
    the axial position priors (lung bases, top of the scan) stay in the grid's own slice indices."""
    box = []
    for axis in (0, 1):
        present = np.nonzero(body.any(axis=tuple(a for a in range(3) if a != axis)))[0]
        box.append(slice(max(0, int(present[0]) - BOX_MARGIN), min(body.shape[axis], int(present[-1]) + 1 + BOX_MARGIN)))
    return box[0], box[1], slice(None)


def _fit_mixture(smooth: np.ndarray, body: np.ndarray, region: np.ndarray) -> Tuple[GaussianMixture, np.ndarray]:
    """Fit the mixture by EM on the soft tissue of the prior region (a random sample, for speed).

    Returns the mixture and the mask of the soft-tissue voxels of the region.
    """
    soft_in_region = body & region & (smooth > SOFT_TISSUE_HU[0]) & (smooth < SOFT_TISSUE_HU[1])
    values = smooth[soft_in_region]
    if values.size < 1000:
        raise LiverSegError("too little soft tissue on the right side of the abdomen to model the liver; "
                            "check that the CT covers the upper abdomen and that its orientation is right")
    sample = np.random.default_rng(SEED).choice(values, size=min(FIT_SAMPLES, values.size), replace=False)[:, None]
    mixture = GaussianMixture(n_components=N_COMPONENTS, covariance_type="full", random_state=SEED, max_iter=200)
    return mixture.fit(sample), soft_in_region


def _posteriors(mixture: GaussianMixture, smooth: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Posterior probability of every component, shape (X, Y, Z, N_COMPONENTS); 0 outside the body's
    soft tissue (the mixture models only soft tissue: bone would otherwise join its brightest component)."""
    soft = body & (smooth > SOFT_TISSUE_HU[0]) & (smooth < SOFT_TISSUE_HU[1])
    probability = np.zeros(smooth.shape + (N_COMPONENTS,), dtype=np.float32)
    probability[soft] = mixture.predict_proba(smooth[soft][:, None])
    return probability


def _liver_components(
    mixture: GaussianMixture, posteriors: np.ndarray, region_values: np.ndarray, region: np.ndarray, spacing: np.ndarray
) -> np.ndarray:
    """Indices of the liver's components.

    The main one is the plausible component (mean within LIVER_HU) whose tissue forms the largest solid
    blob in the prior region: erosion removes muscle layers and bowel walls, which share the liver's HU
    but are thin. Enhancement varies across the liver and EM may split it in two, so a plausible
    neighbour within LIVER_SPREAD_HU that is common in the region (MIN_SHARE) joins it.
    """
    means = mixture.means_[:, 0]
    plausible = np.nonzero((means > LIVER_HU[0]) & (means < LIVER_HU[1]))[0]
    if plausible.size == 0:
        raise LiverSegError("no tissue class with liver-like intensity (20-160 HU); check that the image is an abdominal CT in HU")
    solid = [_largest_size(_erode(posteriors[..., c] > 0.5, SEPARATION_MM, spacing) & region) for c in plausible]
    main = plausible[int(np.argmax(solid))]
    share = np.bincount(mixture.predict(region_values[:, None]), minlength=N_COMPONENTS) / region_values.size
    liver = np.isin(np.arange(N_COMPONENTS), plausible) & (np.abs(means - means[main]) < LIVER_SPREAD_HU) & (share >= MIN_SHARE)
    liver[main] = True
    return np.nonzero(liver)[0]


def _largest_size(mask: np.ndarray) -> int:
    pieces, count = ndimage.label(mask)
    return int(np.bincount(pieces.ravel())[1:].max()) if count else 0


def _erode(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Erosion by a ball of ``radius_mm``: voxels farther than that from any background voxel.

    A Euclidean distance transform does it in one pass whatever the radius (a structuring element of
    that size costs seconds per call at 2.5 mm), and the scan's edge does not erode: the liver may run
    off the field of view.
    """
    # On the mask's box and one voxel of background around it (where the grid allows): the nearest
    # background voxel of any mask voxel lies in it, so the result is that of the whole grid, in less
    # time and memory (the transform is float64).
    result = np.zeros_like(mask, dtype=bool)
    box = _mask_box(mask, 1)
    if box is not None:
        result[box] = ndimage.distance_transform_edt(mask[box], sampling=spacing) > radius_mm
    return result


def _dilate(mask: np.ndarray, radius_mm: float, spacing: np.ndarray) -> np.ndarray:
    """Dilation by a ball of ``radius_mm`` (see :func:`_erode`)."""
    # On the mask's box widened by the radius: every voxel the ball reaches, and its nearest mask voxel.
    result = np.zeros_like(mask, dtype=bool)
    box = _mask_box(mask, np.ceil(radius_mm / np.asarray(spacing, dtype=float)).astype(int) + 1)
    if box is not None:
        result[box] = ndimage.distance_transform_edt(~mask[box], sampling=spacing) <= radius_mm
    return result


def _mask_box(mask: np.ndarray, margin) -> Optional[Tuple[slice, ...]]:
    """Bounding box of ``mask`` widened by ``margin`` voxels per axis (clipped to the grid); None if empty."""
    margins = np.broadcast_to(np.asarray(margin, dtype=int), (mask.ndim,))
    box = []
    for axis in range(mask.ndim):
        present = np.nonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))[0]
        if present.size == 0:
            return None
        box.append(slice(max(0, int(present[0]) - margins[axis]), min(mask.shape[axis], int(present[-1]) + 1 + margins[axis])))
    return tuple(box)


def _liver_from_tissue(liver_like: np.ndarray, region: np.ndarray, body: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """The largest blob of liver-like tissue inside the prior region once thin bridges to neighbours are
    cut, grown back into all liver-like tissue it touches (the left lobe crosses the midline)."""
    core = _erode(liver_like, SEPARATION_MM, spacing)
    pieces_in_region, count = ndimage.label(core & region)
    if count == 0:
        return np.zeros_like(liver_like)
    largest = pieces_in_region == 1 + int(np.argmax(np.bincount(pieces_in_region.ravel())[1:]))
    # The whole core piece the largest right-sided one belongs to, including its part past the midline.
    pieces, _ = ndimage.label(core)
    seed = pieces == pieces[largest][0]
    grown = _dilate(seed, SEPARATION_MM, spacing) & liver_like
    # Only what is connected to the seed: the dilation also reaches across thin walls (the diaphragm).
    pieces, _ = ndimage.label(grown)
    organ = np.isin(pieces, np.unique(pieces[seed]))
    # Closing bridges the vessels at the hilum.
    organ = _erode(_dilate(organ, SEPARATION_MM, spacing), SEPARATION_MM, spacing) & body
    return ndimage.binary_fill_holes(organ)


def _tumours(smooth: np.ndarray, organ: np.ndarray, body: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Lesions of the liver by a second Gaussian mixture, fitted inside the organ (the paper's idea).

    Lesions are not liver-like, so the organ found above has holes where they are deep and notches
    where they reach the surface. The organ's envelope (a closing by ``ENVELOPE_MM``, holes filled)
    holds both. A mixture of ``LESION_COMPONENTS`` Gaussians over the envelope's intensities separates
    parenchyma, vessels and lesions; a component darker than the organ's median by ``LESION_SIGMAS``
    of its robust spread (and at least ``LESION_MIN_HU``) is lesion. The spread is the organ's, not
    a component's: EM may split a heterogeneous parenchyma into two narrow components.
    Its voxels, denser than fluid (``TUMOUR_HU_BELOW_LIVER``), opened to drop specks, make the tumours
    of at least ``MIN_TUMOUR_ML`` whose rim is mostly liver (``TUMOUR_ENCLOSED``); in a liver without
    lesions no component is that dark.

    Returns:
        bool mask of the tumours (inside the envelope; they join the organ).
    """
    if not organ.any():
        return organ
    envelope = _erode(_dilate(organ, ENVELOPE_MM, spacing), ENVELOPE_MM, spacing) & body
    # Axial holes too: a lesion cut by the first or last slice is open in 3D but enclosed in its slices.
    envelope = ndimage.binary_fill_holes(np.stack([ndimage.binary_fill_holes(envelope[:, :, z])
                                                   for z in range(envelope.shape[2])], axis=2))
    values = smooth[envelope]
    organ_values = smooth[organ]
    parenchyma = float(np.median(organ_values))
    spread = 1.4826 * float(np.median(np.abs(organ_values - parenchyma)))  # robust sd: lesions barely move it
    useful = (values > parenchyma - TUMOUR_HU_BELOW_LIVER) & (values < parenchyma + TUMOUR_HU_BELOW_LIVER)
    sample = np.random.default_rng(SEED).permutation(values[useful])[:FIT_SAMPLES, None]
    if sample.shape[0] < 100 * LESION_COMPONENTS:
        return np.zeros_like(organ)
    mixture = GaussianMixture(n_components=LESION_COMPONENTS, covariance_type="full", random_state=SEED).fit(sample)
    dark = np.nonzero(mixture.means_[:, 0] < parenchyma - max(LESION_SIGMAS * spread, LESION_MIN_HU))[0]
    if dark.size == 0:
        return np.zeros_like(organ)
    lesion = np.zeros_like(organ)
    candidates = envelope & (smooth > parenchyma - TUMOUR_HU_BELOW_LIVER)
    lesion[candidates] = mixture.predict_proba(smooth[candidates][:, None])[:, dark].sum(axis=1) > 0.5
    lesion = _dilate(_erode(lesion, 2.5, spacing), 2.5, spacing) & lesion  # opening: drops noise specks
    pieces, count = ndimage.label(lesion)
    if count == 0:
        return lesion
    index = np.arange(1, count + 1)
    sizes = ndimage.sum_labels(np.ones_like(pieces), pieces, index) * float(np.prod(spacing)) / 1000.0
    # Each voxel of the 5 mm rim around the pieces, labelled with the piece it is nearest to: a lesion is
    # mostly surrounded by liver (one at the surface on most sides), a gap between organs is not.
    distance, nearest = ndimage.distance_transform_edt(~lesion, sampling=spacing, return_indices=True)
    rim_pieces = np.where((distance > 0) & (distance <= 5.0), pieces[tuple(nearest)], 0)
    enclosed = ndimage.mean(organ, rim_pieces, index)
    return np.isin(pieces, index[(sizes >= MIN_TUMOUR_ML) & (enclosed >= TUMOUR_ENCLOSED)])
