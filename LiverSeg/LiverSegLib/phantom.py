"""Synthetic abdominal CT phantoms with liver and tumour labels, for tests and demos without patient data.

:func:`make_phantom` builds a CT in Hounsfield units and its labelmap (0 background, 1 liver, 2 tumour)
on any voxel grid. The anatomy is defined in patient RAS millimetres (x toward the patient's right,
y anterior, z superior) around the centre of the field of view, so it is anatomically right whatever the
affine: an LPS-flipped or oblique grid shows the same organs at the same RAS positions.

Organ sizes and positions are fractions of the half field of view along R, A and S (they scale with
``shape * spacing``), so small test grids still hold every organ; the seed moves and resizes them a little.
Liver tumours are painted into the rendered CT by the project's one tumour generator,
:mod:`LiverSegLib.synthetic_tumours`, restricted to hypodense lesions of the phantom's contrast.
:func:`write_phantom_dataset` writes such phantoms as a Medical Segmentation Decathlon Task03 dataset.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import numpy as np
from nibabel import orientations
from scipy import ndimage

from .synthetic_tumours import MAX_LIVER_SHARE, draw_lesions, paint_lesions
from .volume import Volume, save_volume, spacing_of


class _T(IntEnum):
    """Tissue classes of the phantom; each has one HU value per contrast phase."""

    AIR = 0
    LUNG = 1
    FAT = 2
    VISCERAL_FAT = 3
    MUSCLE = 4
    CORTICAL_BONE = 5
    CANCELLOUS_BONE = 6
    DISC = 7
    CSF = 8
    LIVER = 9
    VESSEL = 10
    SPLEEN = 11
    KIDNEY_CORTEX = 12
    KIDNEY_MEDULLA = 13
    STOMACH_WALL = 14
    GASTRIC_FLUID = 15
    GAS = 16
    BOWEL_WALL = 17
    BOWEL_FLUID = 18
    BILE = 19
    HEART = 20
    AORTA = 21
    IVC = 22


# HU as (portal-venous phase, non-contrast). Blood is ~40 HU unenhanced, so vessels and the heart are
# then slightly darker than liver (~55), as on real non-contrast scans.
_HU = {
    _T.AIR: (-1000, -1000),
    _T.LUNG: (-850, -850),
    _T.FAT: (-100, -100),
    _T.VISCERAL_FAT: (-90, -90),
    _T.MUSCLE: (60, 50),
    _T.CORTICAL_BONE: (700, 700),
    _T.CANCELLOUS_BONE: (400, 400),
    _T.DISC: (80, 80),
    _T.CSF: (15, 15),
    _T.LIVER: (100, 55),
    _T.VESSEL: (170, 40),
    _T.SPLEEN: (110, 50),
    _T.KIDNEY_CORTEX: (150, 35),
    _T.KIDNEY_MEDULLA: (95, 30),
    _T.STOMACH_WALL: (80, 40),
    _T.GASTRIC_FLUID: (10, 10),
    _T.GAS: (-950, -950),
    _T.BOWEL_WALL: (70, 45),
    _T.BOWEL_FLUID: (20, 15),
    _T.BILE: (10, 10),
    _T.HEART: (120, 40),
    _T.AORTA: (180, 40),
    _T.IVC: (130, 40),
}

# Organs whose parenchyma gets a smooth texture; fat, air, fluid and bone stay flat.
_TEXTURED = (_T.MUSCLE, _T.LIVER, _T.SPLEEN, _T.KIDNEY_CORTEX, _T.KIDNEY_MEDULLA, _T.HEART)

# Tumours: hypodense metastases that the project's synthetic-tumour generator paints into the rendered
# liver. HU as (portal-venous, non-contrast), like the tissues above. The generator draws diameters
# log-uniformly, which favours the small end, and the tests expect EM to find the tumours of a default
# phantom, which it does once they are a noticeable share of the liver: hence no diameter under 20 mm
# (before the generator shrinks lesions to fit a small liver).
_TUMOUR_HU = (40.0, 30.0)
_TUMOUR_DIAMETER_MM = (20.0, 40.0)
_N_BOWEL_LOOPS = 10

LABEL_LIVER = 1
LABEL_TUMOUR = 2


# --------------------------------------------------------------------------------------------- geometry


@dataclass
class _Frame:
    """RAS millimetres of every voxel relative to the centre of the field of view.

    ``x``, ``y``, ``z`` broadcast to the grid shape (for an axis-aligned affine each varies along one
    axis only, which keeps the shape tests cheap); ``half`` is the half field of view along R, A, S in mm.
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    half: np.ndarray


def default_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """A diagonal RAS affine (4x4, mm) with voxel size ``spacing`` that centres the grid on RAS (0, 0, 0)."""
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) / 2.0 * np.asarray(spacing, dtype=float)
    return affine


def _frame(shape: tuple[int, int, int], affine: np.ndarray) -> _Frame:
    """Each voxel's RAS position (mm) from the 4x4 ``affine``, relative to the grid centre."""
    matrix = affine[:3, :3]
    centre = matrix @ ((np.asarray(shape) - 1) / 2.0) + affine[:3, 3]
    index = [np.arange(n, dtype=np.float32).reshape([-1 if a == b else 1 for b in range(3)])
             for a, n in enumerate(shape)]
    coords = []
    for r in range(3):
        # Skip zero terms so an axis-aligned grid keeps 1D-broadcast coordinates.
        terms = [np.float32(matrix[r, a]) * index[a] for a in range(3) if matrix[r, a] != 0.0]
        coords.append(sum(terms, np.zeros((1, 1, 1), np.float32)) + np.float32(affine[r, 3] - centre[r]))
    return _Frame(*coords, half=_half_field_of_view(shape, matrix))


def _half_field_of_view(shape: tuple[int, int, int], matrix: np.ndarray) -> np.ndarray:
    """Half extent in mm along R, A, S: each RAS axis takes the voxel axis closest to it, so an LPS flip
    or a modest obliquity keeps the same anatomy size."""
    spacing = np.linalg.norm(matrix, axis=0)
    cosines = np.abs(matrix / spacing)
    best = max(itertools.permutations(range(3)), key=lambda p: sum(cosines[p[a], a] for a in range(3)))
    half = np.empty(3)
    for axis, ras in enumerate(best):
        half[ras] = shape[axis] * spacing[axis] / 2.0
    return half


def _ellipsoid(f: _Frame, centre, radii, grow_mm: float = 0.0) -> np.ndarray:
    """Voxels inside an axis-aligned ellipsoid given in half-field-of-view units, grown by ``grow_mm``.

    A radius of ``np.inf`` makes an elliptic cylinder along that axis.
    """
    c = np.asarray(centre, dtype=float) * f.half
    r = np.asarray(radii, dtype=float) * f.half + grow_mm
    return ((f.x - c[0]) / r[0]) ** 2 + ((f.y - c[1]) / r[1]) ** 2 + ((f.z - c[2]) / r[2]) ** 2 <= 1.0


def _near_segment(f: _Frame, start, end, radius_mm: float) -> np.ndarray:
    """Voxels within ``radius_mm`` of the segment start-end (points in half-field-of-view units): a vessel."""
    a = np.asarray(start, dtype=float) * f.half
    d = np.asarray(end, dtype=float) * f.half - a
    px, py, pz = f.x - a[0], f.y - a[1], f.z - a[2]
    t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / float(d @ d), 0.0, 1.0)
    return (px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2 <= radius_mm ** 2


def _paint(tissue: np.ndarray, mask: np.ndarray, value: _T) -> None:
    np.copyto(tissue, np.uint8(value), where=mask)


# --------------------------------------------------------------------------------------------- anatomy


def _jitter(rng: np.random.Generator, values, spread: float) -> np.ndarray:
    """``values`` moved by up to ``spread`` half-field-of-view units each."""
    values = np.asarray(values, dtype=float)
    return values + rng.uniform(-spread, spread, values.shape)


def _scale(rng: np.random.Generator, values, spread: float) -> np.ndarray:
    """``values`` scaled by a factor in [1 - spread, 1 + spread] each."""
    values = np.asarray(values, dtype=float)
    return values * rng.uniform(1.0 - spread, 1.0 + spread, values.shape)


def _draw_anatomy(rng: np.random.Generator) -> dict:
    """All random choices of one phantom, drawn in a fixed order so a seed always gives the same patient.

    Positions and radii are in half-field-of-view units (u toward R, v toward A, w toward S), except
    thicknesses and vessel radii (fractions of the mean in-plane half field of view) and the seeds.
    """
    inf = np.inf
    return {
        "body": (_jitter(rng, [0.0, -0.05], 0.02), _scale(rng, [0.88, 0.68], 0.04)),
        "fat_thickness": rng.uniform(0.07, 0.11),
        "muscle_thickness": rng.uniform(0.05, 0.07),
        "lung_base": rng.uniform(0.48, 0.56),
        "liver_right": (_jitter(rng, [0.40, 0.02, 0.33], 0.03), _scale(rng, [0.42, 0.50, 0.40], 0.06)),
        "liver_left": (_jitter(rng, [0.02, 0.28, 0.45], 0.03), _scale(rng, [0.36, 0.22, 0.20], 0.08)),
        # Inferior surface: a plane rising toward the left, which turns the ellipsoids into a wedge.
        "liver_cut": (rng.uniform(-0.03, 0.03), rng.uniform(0.30, 0.40)),
        "gallbladder": (_jitter(rng, [0.22, 0.22, 0.02], 0.03), _scale(rng, [0.08, 0.10, 0.14], 0.15)),
        "stomach": (_jitter(rng, [-0.30, 0.10, 0.22], 0.03), _scale(rng, [0.22, 0.24, 0.24], 0.08)),
        "spleen": (_jitter(rng, [-0.52, -0.22, 0.32], 0.03), _scale(rng, [0.14, 0.24, 0.24], 0.08)),
        "kidney_right": (_jitter(rng, [0.33, -0.33, -0.38], 0.03), _scale(rng, [0.15, 0.13, 0.36], 0.06)),
        "kidney_left": (_jitter(rng, [-0.33, -0.33, -0.28], 0.03), _scale(rng, [0.15, 0.13, 0.36], 0.06)),
        "heart": (_jitter(rng, [-0.12, 0.12, 0.95], 0.03), _scale(rng, [0.38, 0.32, 0.30], 0.05)),
        "aorta": (_jitter(rng, [-0.06, -0.12, 0.0], 0.01), _scale(rng, [0.075, 0.075, inf], 0.1)),
        "ivc": (_jitter(rng, [0.12, -0.10, 0.0], 0.01), _scale(rng, [0.08, 0.06, inf], 0.1)),
        "vertebra": (_jitter(rng, [0.0, -0.30], 0.01), _scale(rng, [0.13, 0.13], 0.05)),
        "disc_phase_mm": rng.uniform(0.0, 32.0),
        "rib_phase_mm": rng.uniform(0.0, 30.0),
        "hilum": _jitter(rng, [0.22, 0.05, 0.15], 0.02),
        "portal_ends": _jitter(rng, [[0.60, 0.10, 0.30], [0.45, -0.25, 0.40], [0.0, 0.30, 0.42], [0.60, 0.25, 0.08]], 0.04),
        "hepatic_start": _jitter(rng, [0.12, -0.10, 0.62], 0.02),
        "hepatic_ends": _jitter(rng, [[0.65, 0.05, 0.55], [0.35, 0.35, 0.58], [-0.10, 0.30, 0.52]], 0.04),
        "bowel": [
            (rng.uniform([-0.55, -0.15, -0.90], [0.55, 0.40, -0.15]), rng.uniform([0.07, 0.07, 0.10], [0.13, 0.13, 0.20]),
             rng.random() < 0.3)
            for _ in range(_N_BOWEL_LOOPS)
        ],
        "texture": rng.integers(2**32),
        "noise": rng.integers(2**32),
        # Last, and drawn whatever n_tumours is: a seed's tumour-free CT is the same with or without tumours.
        "tumours": rng.integers(2**32),
    }


def _paint_body(tissue: np.ndarray, f: _Frame, a: dict) -> np.ndarray:
    """Air, subcutaneous fat, abdominal wall, ribs, lungs; returns the abdominal cavity mask."""
    centre, radii = a["body"]
    body_c, body_r = [*centre, 0.0], [*radii, np.inf]
    in_plane_mm = float(np.mean(f.half[:2]))
    fat_mm, muscle_mm = a["fat_thickness"] * in_plane_mm, a["muscle_thickness"] * in_plane_mm
    _paint(tissue, _ellipsoid(f, body_c, body_r), _T.FAT)
    wall = _ellipsoid(f, body_c, body_r, grow_mm=-fat_mm)
    _paint(tissue, wall, _T.MUSCLE)
    cavity = _ellipsoid(f, body_c, body_r, grow_mm=-fat_mm - muscle_mm)
    _paint(tissue, cavity, _T.VISCERAL_FAT)
    # Ribs: 8 mm bone in the inner wall over the upper abdomen, every 30 mm, sloping down anteriorly so an
    # axial slice cuts them into arcs; absent near the midline (costal cartilage in front, spine behind).
    rib_height = f.z + 0.4 * f.y - a["rib_phase_mm"]
    ribs = _ellipsoid(f, body_c, body_r, grow_mm=8.0 - fat_mm - muscle_mm) & ~cavity & (rib_height % 30.0 < 8.0)
    ribs &= (f.z > -0.2 * f.half[2]) & (np.abs(f.x) > 0.25 * f.half[0])
    _paint(tissue, ribs, _T.CORTICAL_BONE)
    _paint(tissue, cavity & (f.z > a["lung_base"] * f.half[2]), _T.LUNG)
    # Diaphragm: a muscle sheet wherever lung would touch the upper abdominal organs or the heart.
    for organ in ("liver_right", "liver_left", "spleen", "stomach", "heart"):
        shell = _ellipsoid(f, *a[organ], grow_mm=6.0)
        _paint(tissue, shell & (tissue == _T.LUNG), _T.MUSCLE)
    return np.broadcast_to(cavity, tissue.shape)


def _paint_bowel(tissue: np.ndarray, f: _Frame, a: dict, cavity: np.ndarray) -> None:
    """Bowel loops below the liver: a 3 mm wall around gas or fluid."""
    for centre, radii, gas in a["bowel"]:
        _paint(tissue, _ellipsoid(f, centre, radii) & cavity, _T.BOWEL_WALL)
        _paint(tissue, _ellipsoid(f, centre, radii, grow_mm=-3.0) & cavity, _T.GAS if gas else _T.BOWEL_FLUID)


def _paint_liver(tissue: np.ndarray, f: _Frame, a: dict, cavity: np.ndarray) -> None:
    """Liver (two ellipsoid lobes cut by an oblique inferior plane) with portal and hepatic veins."""
    w_cut, slope = a["liver_cut"]
    above_cut = (f.z / f.half[2] - w_cut) > slope * (0.5 - f.x / f.half[0])
    liver = (_ellipsoid(f, *a["liver_right"]) | _ellipsoid(f, *a["liver_left"])) & above_cut & cavity
    _paint(tissue, liver, _T.LIVER)
    vessel_mm = 0.03 * float(np.mean(f.half[:2]))
    vessels = np.zeros(tissue.shape, bool)
    for end in a["portal_ends"]:
        vessels |= _near_segment(f, a["hilum"], end, vessel_mm)
    for end in a["hepatic_ends"]:
        vessels |= _near_segment(f, a["hepatic_start"], end, 0.8 * vessel_mm)
    # Vessels only where the liver is, so every vessel voxel is liver in the labels (as in LiTS / MSD).
    _paint(tissue, vessels & (tissue == _T.LIVER), _T.VESSEL)


def _paint_organs(tissue: np.ndarray, f: _Frame, a: dict, cavity: np.ndarray) -> None:
    """Neighbours of the liver, painted after it so they indent it as real organs do."""
    _paint(tissue, _ellipsoid(f, *a["gallbladder"]) & cavity, _T.BILE)
    centre, radii = a["stomach"]
    _paint(tissue, _ellipsoid(f, centre, radii) & cavity, _T.STOMACH_WALL)
    lumen = _ellipsoid(f, centre, radii, grow_mm=-4.0) & cavity
    # Supine patient: gas floats anteriorly above the fluid level.
    gas_level = (centre[1] + 0.4 * radii[1]) * f.half[1]
    _paint(tissue, lumen, _T.GASTRIC_FLUID)
    _paint(tissue, lumen & (f.y > gas_level), _T.GAS)
    _paint(tissue, _ellipsoid(f, *a["spleen"]) & cavity, _T.SPLEEN)
    for side, u in (("kidney_right", 1.0), ("kidney_left", -1.0)):
        centre, radii = a[side]
        _paint(tissue, _ellipsoid(f, centre, radii) & cavity, _T.KIDNEY_CORTEX)
        _paint(tissue, _ellipsoid(f, centre, radii * 0.6) & cavity, _T.KIDNEY_MEDULLA)
        # Psoas beside the spine, below the kidneys' upper poles.
        psoas = _ellipsoid(f, [0.15 * u, -0.30, 0.0], [0.07, 0.07, np.inf]) & (f.z < -0.1 * f.half[2])
        _paint(tissue, psoas & cavity, _T.MUSCLE)
    _paint(tissue, _ellipsoid(f, *a["heart"], grow_mm=4.0) & cavity, _T.MUSCLE)
    _paint(tissue, _ellipsoid(f, *a["heart"]) & cavity, _T.HEART)
    _paint(tissue, _ellipsoid(f, *a["aorta"]), _T.AORTA)
    # The IVC runs behind (through) the liver and ends in the right atrium.
    _paint(tissue, _ellipsoid(f, *a["ivc"]) & (f.z < 0.75 * f.half[2]), _T.IVC)


def _paint_spine(tissue: np.ndarray, f: _Frame, a: dict) -> None:
    """Vertebral bodies (cancellous core, cortical rim, discs every 32 mm), neural arch, canal, back muscles."""
    (cu, cv), (ru, rv) = a["vertebra"]
    for u in (-0.13, 0.13):
        _paint(tissue, _ellipsoid(f, [u, -0.56, 0.0], [0.10, 0.09, np.inf]), _T.MUSCLE)
    body = _ellipsoid(f, [cu, cv, 0.0], [ru, rv, np.inf])
    disc = (f.z - a["disc_phase_mm"]) % 32.0 < 8.0
    _paint(tissue, body, _T.CORTICAL_BONE)
    _paint(tissue, _ellipsoid(f, [cu, cv, 0.0], [ru, rv, np.inf], grow_mm=-3.0), _T.CANCELLOUS_BONE)
    _paint(tissue, body & disc, _T.DISC)
    _paint(tissue, _ellipsoid(f, [cu, cv - 0.17, 0.0], [0.09, 0.08, np.inf]) & ~disc, _T.CORTICAL_BONE)
    _paint(tissue, _ellipsoid(f, [cu, cv - 0.28, 0.0], [0.03, 0.10, np.inf]) & ~disc, _T.CORTICAL_BONE)
    _paint(tissue, _ellipsoid(f, [cu, cv - 0.17, 0.0], [0.05, 0.05, np.inf]), _T.CSF)


def _paint_tumours(
    hu: np.ndarray, liver: np.ndarray, affine: np.ndarray, n_tumours: int, contrast: bool, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Paint ``n_tumours`` hypodense lesions into the rendered ``hu`` within ``liver`` with the project's
    synthetic-tumour generator; returns the new HU and the bool tumour mask.

    The generator draws its rotations and noise fields in voxel order, so it works on the grid turned to
    the closest RAS orientation (a transpose and flips, no resampling), and draws its centres as RAS
    points: a flipped or permuted grid gets the very same lesions, an oblique one the same places, except
    for a lesion whose random point falls just at the edge of where it may go, which the two grids' voxels
    then put on different sides.
    """
    ornt = orientations.io_orientation(affine)
    back = orientations.ornt_transform(orientations.axcodes2ornt("RAS"), ornt)
    canonical_affine = affine @ orientations.inv_ornt_aff(ornt, hu.shape)
    canonical_liver = orientations.apply_orientation(liver, ornt)
    rng = np.random.default_rng(seed)
    phase = 0 if contrast else 1
    # The generator shrinks lesions to a share of the liver; below this even the smallest would not fit.
    smallest_ml = np.pi / 6.0 * _TUMOUR_DIAMETER_MM[0] ** 3 / 1000.0
    lesions = draw_lesions(
        rng, canonical_liver, canonical_affine, n_tumours, diameter_mm=_TUMOUR_DIAMETER_MM,
        placements={"anywhere": 1.0}, inside=True, kinds={"hypodense": 1.0},
        contrast_hu=_HU[_T.LIVER][phase] - _TUMOUR_HU[phase],
        min_liver_ml=n_tumours * smallest_ml / MAX_LIVER_SHARE, ras_centres=True, apart=True,
    )
    if not lesions:
        raise ValueError("the liver is too small for the tumours: enlarge the field of view or use n_tumours=0")
    # The generator keeps the image's fine detail on a lesion as the scan's noise. Around the liver that
    # detail is the organ's edge against fat, which on a coarse grid would leave a bright rim on a lesion
    # reaching the surface; so it sees parenchyma there, and the surroundings are put back afterwards.
    liver_only = np.where(liver, hu, np.float32(np.median(hu[liver])))
    painted, tumour = paint_lesions(
        orientations.apply_orientation(liver_only, ornt), canonical_liver, canonical_affine, lesions, rng
    )
    painted = np.where(liver, orientations.apply_orientation(painted, back), hu)
    return painted, np.ascontiguousarray(orientations.apply_orientation(tumour, back))


def _render(tissue: np.ndarray, spacing: np.ndarray, contrast: bool, noise_hu: float, a: dict) -> np.ndarray:
    """Float32 HU image from the tissue map: per-tissue HU, organ texture, partial-volume blur, scanner noise."""
    phase = 0 if contrast else 1
    table = np.zeros(len(_T), np.float32)
    for t, values in _HU.items():
        table[t] = values[phase]
    hu = table[tissue]
    texture_rng = np.random.default_rng(a["texture"])
    # ~4 mm blobs of +-6 HU: parenchyma is not flat on real scans.
    texture = ndimage.gaussian_filter(texture_rng.standard_normal(tissue.shape, np.float32), 4.0 / spacing)
    texture *= 6.0 / max(float(texture.std()), 1e-6)
    hu += texture * np.isin(tissue, _TEXTURED)
    hu = ndimage.gaussian_filter(hu, 0.5)  # partial volume at organ edges
    if noise_hu > 0:
        hu += np.random.default_rng(a["noise"]).standard_normal(tissue.shape, np.float32) * np.float32(noise_hu)
    return hu


# --------------------------------------------------------------------------------------------- public API


def make_phantom(
    shape: tuple[int, int, int] = (128, 128, 64),
    spacing: tuple[float, float, float] = (2.5, 2.5, 4.0),
    seed: int = 0,
    n_tumours: int = 2,
    contrast: bool = True,
    noise_hu: float = 12.0,
    affine: np.ndarray | None = None,
) -> tuple[Volume, Volume]:
    """A synthetic abdominal CT and its liver/tumour labels.

    Args:
        shape: grid size (I, J, K) in voxels.
        spacing: voxel size along i, j, k in mm; ignored when ``affine`` is given.
        seed: the same seed gives the same arrays; organ sizes and positions vary a little with it.
        n_tumours: number of hypodense liver tumours, painted by :mod:`LiverSegLib.synthetic_tumours`:
            20-40 mm across (smaller if the liver is small), deformed, with blurred edges, centred deep
            enough to lie about wholly inside the liver (what pokes out is clipped), and kept apart
            where the liver has room.
        contrast: portal-venous phase (liver ~100 HU, tumour ~40) if true, else non-contrast (~55 / ~30).
        noise_hu: standard deviation of the Gaussian scanner noise in HU.
        affine: optional 4x4 voxel-to-RAS-mm matrix (e.g. LPS-flipped or oblique); by default a diagonal
            RAS affine with ``spacing`` whose grid centre is at RAS (0, 0, 0). The anatomy is centred on
            the grid centre and laid out in RAS, so it is the same in patient space for any affine.

    Returns:
        ``(ct, labels)`` on the same grid: ct int16 HU of shape ``shape``; labels uint8 of shape ``shape``
        with 0 background, 1 liver (including its vessels), 2 tumour.

    Raises:
        ValueError: the field of view holds too little liver for the requested tumours.
    """
    shape = tuple(int(n) for n in shape)
    affine = default_affine(shape, spacing) if affine is None else np.asarray(affine, dtype=np.float64)
    f = _frame(shape, affine)
    a = _draw_anatomy(np.random.default_rng(seed))
    tissue = np.zeros(shape, np.uint8)
    cavity = _paint_body(tissue, f, a)
    _paint_bowel(tissue, f, a, cavity)
    _paint_liver(tissue, f, a, cavity)
    _paint_organs(tissue, f, a, cavity)
    _paint_spine(tissue, f, a)
    labels = np.zeros(shape, np.uint8)
    labels[np.isin(tissue, (_T.LIVER, _T.VESSEL))] = LABEL_LIVER
    hu = _render(tissue, spacing_of(affine), contrast, noise_hu, a)
    if n_tumours > 0:
        # Into the rendered CT, so the lesions carry the scan's noise and the generator's blurred edges.
        hu, tumour = _paint_tumours(hu, labels == LABEL_LIVER, affine, n_tumours, contrast, a["tumours"])
        labels[tumour] = LABEL_TUMOUR
    ct = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return Volume(ct, affine.copy()), Volume(labels, affine.copy())


def phantom_dataset_files(folder: str | os.PathLike, n_cases: int) -> list[Path]:
    """The files :func:`write_phantom_dataset` writes into ``folder``: dataset.json, then each case's image
    and label (so a caller can check first what it would replace)."""
    folder = Path(folder)
    cases = [folder / sub / _case_name(index) for index in range(n_cases) for sub in ("imagesTr", "labelsTr")]
    return [folder / "dataset.json", *cases]


def _case_name(index: int) -> str:
    return f"phantom_{index:03d}.nii.gz"


def write_phantom_dataset(folder: str | os.PathLike, n_cases: int = 3, seed: int = 0, **phantom_kwargs) -> Path:
    """Write phantoms as a Medical Segmentation Decathlon Task03 (liver) dataset.

    Layout: ``imagesTr/phantom_XXX.nii.gz`` (int16 HU), ``labelsTr/phantom_XXX.nii.gz`` (uint8 labels)
    and ``dataset.json``; each case has its own seed derived from ``seed``. ``phantom_kwargs`` go to
    :func:`make_phantom` (shape, spacing, affine, contrast, ...).

    Returns:
        ``folder`` as a Path.
    """
    folder = Path(folder)
    for sub in ("imagesTr", "labelsTr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    # Independent streams per case, reproducible from the one dataset seed.
    case_seeds = np.random.SeedSequence(seed).generate_state(n_cases) if n_cases else []
    training = []
    for index, case_seed in enumerate(case_seeds):
        ct, labels = make_phantom(seed=int(case_seed), **phantom_kwargs)
        name = _case_name(index)
        save_volume(ct, folder / "imagesTr" / name)
        save_volume(labels, folder / "labelsTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    dataset = {
        "name": "LiverSegPhantom",
        "description": "Synthetic abdominal CT phantoms with liver and liver-tumour labels (LiverSegLib.phantom)",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "liver", "2": "tumour"},
        "numTraining": len(training),
        "training": training,
        "numTest": 0,
        "test": [],
    }
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=2) + "\n")
    return folder
