"""Synthetic liver tumours painted into a real liver: the tumour class for CTs whose labels have none.

After "Label-Free Liver Tumor Segmentation" (Hu et al., CVPR 2023), where networks trained only on
synthetic tumours matched real tumour labels on LiTS. A lesion is drawn (:func:`draw_lesions`), then
painted (:func:`paint_lesions`):

- **where**: a random liver voxel, anywhere in the organ, in its top fifth (the dome, beside the heart)
  or within 10 mm of its surface (subcapsular); the lesion is clipped to the liver mask, so one at the
  border takes the border's shape and stays inside the liver;
- **shape**: an ellipsoid of 5 mm to 8 cm diameter (log-uniform: small lesions are the common ones),
  axis ratios 0.7-1.3, randomly rotated, its surface deformed by a smooth random displacement field;
- **look**: a texture of smoothed noise over a level set relative to the surrounding parenchyma --
  hypodense (metastases, most lesions), hyperdense, or a hypodense core with an enhancing rim (HCC) --
  with edges blurred over 0.5-2 mm and the scan's own noise kept, so neither a sharp step nor a
  noise-free patch gives the lesion away.

Everything is in millimetres and Hounsfield units, on any voxel grid (the affine gives spacing and the
superior direction), so the same generator serves the training pipeline (windowed images, via
``units_per_hu``), the phantoms and the synthetic-tumour evaluation on held-out real CT.

These are the defaults. Keyword options of :func:`draw_lesions` narrow them for the phantoms
(:mod:`.phantom`): the diameter range, placements and kinds, one fixed contrast, a smaller liver that
still takes lesions, centres at least a lesion's radius deep (``inside``), drawn as points in RAS so a
flipped or oblique grid of the same anatomy gets the same lesions (``ras_centres``), and kept apart
(``apart``).
"""

from __future__ import annotations

from dataclasses import dataclass
import zlib
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from .volume import Volume, spacing_of

DIAMETER_MM = (5.0, 80.0)
COUNT = (1, 6)
"""Lesions per liver, drawn uniformly (inclusive)."""
MAX_LIVER_SHARE = 0.35
"""The lesions together take at most this share of the liver's volume (larger draws are shrunk)."""
MIN_LIVER_ML = 100.0
"""A liver label smaller than this is too small (or too partial) to hold synthetic lesions."""
PLACEMENTS = {"anywhere": 0.5, "dome": 0.25, "subcapsular": 0.25}
DOME_SHARE = 0.2
SUBCAPSULAR_MM = 10.0
KINDS = {"hypodense": 0.7, "hyperdense": 0.15, "rim": 0.15}
HYPODENSE_HU = (20.0, 90.0)
"""How far below the parenchyma a hypodense lesion lies (metastases: 20-90 HU darker at portal phase)."""
HYPERDENSE_HU = (20.0, 60.0)
TEXTURE_HU = (4.0, 15.0)
EDGE_MM = (0.5, 2.0)
"""Standard deviation of the edge blur."""
EVALUATION_SEED = 20261203
"""The seed of the synthetic tumours the project's reports score on held-out CT. Training draws its lesions
from the training seed's random state and never from this one; EM was tuned on other seeds."""


@dataclass(frozen=True)
class Lesion:
    """One synthetic lesion: centre (voxel indices), semi-axes (mm), rotation, appearance."""

    centre: Tuple[float, float, float]
    semi_axes_mm: Tuple[float, float, float]
    rotation: Tuple[Tuple[float, ...], ...]
    kind: str
    contrast_hu: float
    texture_hu: float
    edge_mm: float
    placement: str

    @property
    def diameter_mm(self) -> float:
        """Equivalent-sphere diameter."""
        return 2.0 * float(np.prod(self.semi_axes_mm)) ** (1.0 / 3.0)


def draw_lesions(
    rng: np.random.Generator,
    liver: np.ndarray,
    affine: np.ndarray,
    count: Optional[int] = None,
    *,
    diameter_mm: Tuple[float, float] = DIAMETER_MM,
    placements: Optional[Dict[str, float]] = None,
    kinds: Optional[Dict[str, float]] = None,
    contrast_hu: Optional[float] = None,
    min_liver_ml: float = MIN_LIVER_ML,
    inside: bool = False,
    ras_centres: bool = False,
    apart: bool = False,
) -> List[Lesion]:
    """Draw the lesions of one liver (nothing is painted yet).

    Args:
        rng: the generator; the same state gives the same lesions.
        liver: bool (I, J, K) liver mask.
        affine: 4x4 voxel-to-RAS matrix of the grid.
        count: number of lesions (default: drawn from ``COUNT``).
        diameter_mm: range the diameters are drawn from (log-uniform) before the liver-share shrink.
        placements: placement -> probability (default ``PLACEMENTS``), e.g. ``{"anywhere": 1.0}``.
        kinds: kind -> probability (default ``KINDS``), e.g. ``{"hypodense": 1.0}``.
        contrast_hu: the same contrast to the parenchyma for every lesion (default: drawn per lesion
            from ``HYPODENSE_HU`` or ``HYPERDENSE_HU``).
        min_liver_ml: a smaller liver gets no lesions.
        inside: centre each lesion at least its radius (half its diameter) deep in the liver, so that it
            lies about wholly inside rather than clipped by the liver's surface; where the liver is too
            thin for that, at the deepest candidates.
        ras_centres: draw each centre as a random point in RAS millimetres that falls in a candidate
            voxel (:func:`_ras_centre`) instead of as a random entry of the candidate list. The list's order
            depends on the grid, so with the same ``rng`` a flipped or oblique grid of the same anatomy
            would get its lesions elsewhere in the patient; a point in RAS stays where it is.
        apart: with ``ras_centres``, keep each lesion's centre ``APART`` times the sum of the two radii
            away from every lesion drawn before it, so that they stay separate lesions; where the liver
            has no room for that, they may overlap.

    Returns:
        The lesions; empty when the liver is smaller than ``min_liver_ml``.
    """
    if apart and not ras_centres:
        raise ValueError("apart needs ras_centres: a random entry of the candidate list is never redrawn")
    placements = PLACEMENTS if placements is None else placements
    kinds = KINDS if kinds is None else kinds
    spacing = spacing_of(affine)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    liver_ml = float(liver.sum()) * voxel_ml
    if liver_ml < min_liver_ml or not liver.any():
        return []
    count = int(rng.integers(COUNT[0], COUNT[1] + 1)) if count is None else count
    diameters = np.exp(rng.uniform(np.log(diameter_mm[0]), np.log(diameter_mm[1]), size=count))
    # Volumes scale with the cube: shrink every lesion alike when they would fill too much of the liver.
    total_ml = float((np.pi / 6.0 * diameters**3).sum()) / 1000.0
    diameters *= min(1.0, (MAX_LIVER_SHARE * liver_ml / max(total_ml, 1e-9)) ** (1.0 / 3.0))
    voxels, depth, pools = _candidates(liver, affine, spacing)
    lesions = []
    for diameter in diameters:
        placement = str(rng.choice(list(placements), p=list(placements.values())))
        chosen = pools[placement] if pools[placement].any() else pools["anywhere"]
        if inside:
            chosen = chosen & (depth >= min(diameter / 2.0, float(depth[chosen].max())))
        pool = voxels[chosen]
        if ras_centres:
            clear_of = [(np.asarray(l.centre), APART * (l.diameter_mm + diameter) / 2.0) for l in lesions if apart]
            centre = _ras_centre(rng, voxels, pool, affine, liver.shape, clear_of)
        else:
            centre = pool[int(rng.integers(len(pool)))]
        ratios = rng.uniform(0.7, 1.3, size=3)
        semi = diameter / 2.0 * ratios / np.prod(ratios) ** (1.0 / 3.0)
        kind = str(rng.choice(list(kinds), p=list(kinds.values())))
        if contrast_hu is None:
            contrast = rng.uniform(*(HYPERDENSE_HU if kind == "hyperdense" else HYPODENSE_HU))
        else:
            contrast = contrast_hu
        lesions.append(Lesion(
            centre=tuple(float(c) for c in centre),
            semi_axes_mm=tuple(float(s) for s in semi),
            rotation=tuple(tuple(row) for row in Rotation.random(random_state=rng).as_matrix().tolist()),
            kind=kind,
            contrast_hu=float(contrast),
            texture_hu=float(rng.uniform(*TEXTURE_HU)),
            edge_mm=float(rng.uniform(*EDGE_MM)),
            placement=placement,
        ))
    return lesions


RAS_CENTRE_TRIES = 256
"""Random points :func:`_ras_centre` tries per lesion; a fixed number, so the draws after it do not
depend on how many missed."""
APART = 1.25
"""Centre distance of lesions kept apart, in sums of their radii: more than touching spheres, as lesions
are elongated and deformed."""
RAS_CENTRE_SPREAD = 3.0
"""Half-width of the box :func:`_ras_centre` draws in, in standard deviations of the liver's RAS
coordinates."""


def _ras_centre(
    rng: np.random.Generator, voxels: np.ndarray, pool: np.ndarray, affine: np.ndarray, shape: Tuple[int, ...],
    clear_of: List[Tuple[np.ndarray, float]],
) -> np.ndarray:
    """A lesion centre (fractional voxel indices) uniform over the candidate voxels ``pool`` (M, 3), drawn in RAS.

    Points uniform in a box around the liver (its voxels ``voxels``, (N, 3)); the first that lies in a
    candidate voxel and at least the given distance (mm) from each centre (voxel indices) of
    ``clear_of`` is the centre; failing that, the first in a candidate voxel; failing that, the candidate
    nearest the first point. The box is the liver's mean plus or minus ``RAS_CENTRE_SPREAD`` standard
    deviations: a bounding box moves by up to a voxel with the grid, and so would every point, while the
    liver's mean and spread hardly move (the candidates' own would more: they may be a thin layer).
    """
    affine = np.asarray(affine, dtype=np.float64)
    matrix, offset = affine[:3, :3], affine[:3, 3]
    liver_ras = voxels @ matrix.T + offset
    half_width = RAS_CENTRE_SPREAD * liver_ras.std(axis=0) + 0.5 * np.abs(matrix).sum(axis=1)
    points = liver_ras.mean(axis=0) + (2.0 * rng.random((RAS_CENTRE_TRIES, 3)) - 1.0) * half_width
    index = (points - offset) @ np.linalg.inv(matrix).T
    voxel = np.rint(index).astype(int)
    in_grid = np.all((voxel >= 0) & (voxel < np.asarray(shape)), axis=1)
    member = np.zeros(shape, dtype=bool)
    member[tuple(pool.T)] = True
    hit = np.zeros(len(points), dtype=bool)
    hit[np.flatnonzero(in_grid)[member[tuple(voxel[in_grid].T)]]] = True
    clear = hit.copy()
    for centre, distance in clear_of:
        clear &= np.linalg.norm(points - (matrix @ centre + offset), axis=1) >= distance
    for accepted in (clear, hit):
        if accepted.any():
            return index[int(np.argmax(accepted))]
    nearest = np.argmin((((pool @ matrix.T + offset) - points[0]) ** 2).sum(axis=1))
    return pool[int(nearest)].astype(np.float64)


def _candidates(liver: np.ndarray, affine: np.ndarray, spacing: np.ndarray) -> Tuple[np.ndarray, np.ndarray, dict]:
    """The liver's voxels (N, 3), their depth below its surface (mm, (N,)), and placement -> bool (N,)
    selecting the voxels where a lesion centre may go."""
    voxels = np.argwhere(liver)
    superior = voxels @ np.asarray(affine)[2, :3]  # RAS S coordinate up to a constant
    low, high = voxels.min(axis=0), voxels.max(axis=0) + 1
    box = tuple(slice(a, b) for a, b in zip(low, high))
    # Padding makes the field-of-view edge no surface: a liver cut by the scan goes on beyond it.
    depth = ndimage.distance_transform_edt(np.pad(liver[box], 1, mode="edge"), sampling=spacing)[1:-1, 1:-1, 1:-1]
    depth = depth[tuple((voxels - low).T)]
    pools = {
        "anywhere": np.ones(len(voxels), dtype=bool),
        "dome": superior >= np.quantile(superior, 1.0 - DOME_SHARE),
        "subcapsular": depth <= SUBCAPSULAR_MM,
    }
    return voxels, depth, pools


def paint_lesions(
    image: np.ndarray,
    liver: np.ndarray,
    affine: np.ndarray,
    lesions: List[Lesion],
    rng: np.random.Generator,
    units_per_hu: float = 1.0,
) -> Tuple[np.ndarray, np.ndarray]:
    """Paint ``lesions`` into ``image`` inside ``liver``.

    Args:
        image: (I, J, K) CT, in HU or any linear map of HU (``units_per_hu`` image units per HU, e.g.
            1/500 for a 500 HU window scaled to 0..1).
        liver: bool (I, J, K) mask the lesions are confined to.
        affine: 4x4 voxel-to-RAS matrix.
        lesions: from :func:`draw_lesions`.
        rng: texture and deformation noise.
        units_per_hu: see ``image``.

    Returns:
        ``(image, tumour)``: float32 image with the lesions, bool (I, J, K) tumour mask (within ``liver``).
    """
    out = np.asarray(image, dtype=np.float32).copy()
    tumour = np.zeros(liver.shape, dtype=bool)
    if not lesions:
        return out, tumour
    spacing = spacing_of(affine)
    parenchyma = float(np.median(out[liver]))
    for lesion in lesions:
        _paint_one(out, tumour, liver, spacing, lesion, parenchyma, rng, units_per_hu)
    return out, tumour


def _paint_one(
    out: np.ndarray, tumour: np.ndarray, liver: np.ndarray, spacing: np.ndarray, lesion: Lesion,
    parenchyma: float, rng: np.random.Generator, units_per_hu: float,
) -> None:
    semi = np.asarray(lesion.semi_axes_mm)
    deform_mm = 0.25 * semi.min()
    reach_mm = semi.max() * 1.3 + deform_mm + 3.0 * lesion.edge_mm
    centre = np.asarray(lesion.centre)
    low = np.maximum(np.floor(centre - reach_mm / spacing).astype(int), 0)
    high = np.minimum(np.ceil(centre + reach_mm / spacing).astype(int) + 1, liver.shape)
    box = tuple(slice(a, b) for a, b in zip(low, high))
    shape = tuple(high - low)
    offsets = [(np.arange(a, b) - c) * s for a, b, c, s in zip(low, high, centre, spacing)]
    position = np.stack(np.meshgrid(*offsets, indexing="ij"), axis=-1)  # (X, Y, Z, 3) mm from the centre
    # A smooth random displacement field deforms the ellipsoid's surface (elastic deformation).
    sigma = np.maximum(semi.min() / 2.0 / spacing, 1.0)
    for axis in range(3):
        field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
        position[..., axis] += field * (deform_mm / max(float(field.std()), 1e-6))
    local = position @ np.asarray(lesion.rotation).T
    radius = np.sqrt(((local / semi) ** 2).sum(axis=-1))  # < 1 inside the lesion
    inside = liver[box]
    alpha = ndimage.gaussian_filter((radius <= 1.0).astype(np.float32), lesion.edge_mm / spacing) * inside
    texture = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), np.maximum(1.5 / spacing, 0.5))
    texture *= lesion.texture_hu / max(float(texture.std()), 1e-6)
    sign = 1.0 if lesion.kind == "hyperdense" else -1.0
    level_hu = sign * lesion.contrast_hu + texture
    if lesion.kind == "rim":  # HCC's enhancing capsule around a darker core
        level_hu = np.where(radius > 0.75, lesion.contrast_hu * 0.8 + texture, level_hu)
    region = out[box]
    noise = region - ndimage.gaussian_filter(region, 1.0)  # the scan's own noise stays on the lesion
    out[box] = (1.0 - alpha) * region + alpha * (parenchyma + level_hu * units_per_hu + noise)
    tumour[box] |= (alpha >= 0.5) & inside


def insert_tumours(
    image: np.ndarray,
    liver: np.ndarray,
    affine: np.ndarray,
    rng: np.random.Generator,
    units_per_hu: float = 1.0,
    count: Optional[int] = None,
) -> Tuple[np.ndarray, np.ndarray, List[Lesion]]:
    """Draw and paint the lesions of one liver (:func:`draw_lesions` then :func:`paint_lesions`).

    Returns:
        ``(image, tumour, lesions)``; the image unchanged and the mask empty when the liver is too small.
    """
    lesions = draw_lesions(rng, liver, affine, count)
    painted, tumour = paint_lesions(image, liver, affine, lesions, rng, units_per_hu)
    return painted, tumour, lesions


def case_rng(seed: int, case: str) -> np.random.Generator:
    """The generator of one case: the same lesions for the same (seed, case name), whatever the case order."""
    return np.random.default_rng([seed, zlib.crc32(case.encode())])


def with_synthetic_tumours(ct: Volume, labels: Volume, rng: np.random.Generator) -> Tuple[Volume, Volume]:
    """A labelled CT with lesions painted into its liver (label 1) and labelled tumour (2).

    For evaluation on real CT whose labels hold no tumour: only in memory, nothing is written to disk.
    The CT keeps its dtype (HU rounded for integer CTs); real tumours already labelled stay as they are.
    """
    from .preprocessing import LIVER, TUMOUR

    liver = labels.array == LIVER
    painted, tumour, _ = insert_tumours(ct.array, liver, ct.affine, rng)
    if np.issubdtype(ct.array.dtype, np.integer):
        info = np.iinfo(ct.array.dtype)
        painted = np.clip(np.rint(painted), info.min, info.max)
    new_labels = labels.array.copy()
    new_labels[tumour] = TUMOUR
    return ct.with_array(painted.astype(ct.array.dtype)), labels.with_array(new_labels)
