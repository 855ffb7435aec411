"""Slicer's MRML for LiverSeg: the scene and module logics as one context object, labelmap -> segmentation
node with named, coloured, SNOMED-coded segments, and ``.seg.nrrd`` files that Slicer opens as its own.

``slicer`` and ``vtk`` are imported lazily, inside the functions, so ``import LiverSegLib.mrml`` costs
nothing and works where Slicer's core is not installed. Outside desktop Slicer they come from PyPI's
``slicer-core`` (Python >= 3.10); inside Slicer from Slicer itself.

Only :func:`context_from_slicer_app` reads desktop Slicer's globals (``slicer.mrmlScene``,
``slicer.modules``, ``slicer.app``); everything else takes the scene and logics through a
:class:`SlicerContext`, so the same code runs in Slicer and under pytest.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from .errors import LiverSegError
from .volume import Volume, atomic_output, check_complete, suffix_of

# --------------------------------------------------------------------------------------------- segments

# Terminology entries as Slicer serialises them (context~category~type~type modifier~region context~region~
# region modifier; each code "scheme^value^meaning"). Liver: SNOMED CT 10200004 from Slicer's General Anatomy
# list; tumour: Neoplasm 108369006 from the DICOM master list, anatomic region Liver.
LIVER = (
    "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure"
    "~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^"
)
TUMOR = (
    "Segmentation category and type - DICOM master list~SCT^49755003^Morphologically Altered Structure"
    "~SCT^108369006^Neoplasm~^^~Anatomic codes - DICOM master list~SCT^10200004^Liver~^^"
)

LIVER_RGB: Tuple[int, int, int] = (221, 130, 101)  # Slicer's recommended colour for Liver
TUMOR_RGB: Tuple[int, int, int] = (240, 220, 60)  # yellow: stands out inside the semi-transparent liver


@dataclass(frozen=True)
class SegmentSpec:
    """One output segment: the label value it comes from and how Slicer shows it."""

    label: int
    segment_id: str
    name: str
    rgb: Tuple[int, int, int]
    terminology: str

    @property
    def color(self) -> Tuple[float, float, float]:
        """RGB in 0..1, as vtkSegment stores it."""
        return tuple(c / 255.0 for c in self.rgb)  # type: ignore[return-value]


SEGMENTS: Tuple[SegmentSpec, ...] = (
    SegmentSpec(1, "liver", "Liver", LIVER_RGB, LIVER),
    SegmentSpec(2, "liver_tumor", "Liver tumor", TUMOR_RGB, TUMOR),
)

SEG_NRRD = ".seg.nrrd"


# --------------------------------------------------------------------------------------------- context


@dataclass
class SlicerContext:
    """The scene and the module logics the LiverSeg logics work with.

    In desktop Slicer these are Slicer's own (:func:`context_from_slicer_app`); under pytest or in a script
    they are built on a plain ``vtkMRMLScene`` (:func:`headless_context`).
    """

    scene: Any  # vtkMRMLScene
    app: Any = None  # vtkSlicerApplicationLogic / vtkMRMLApplicationLogic; keep it referenced
    colors: Any = None  # vtkSlicerColorLogic
    volumes: Any = None  # vtkSlicerVolumesLogic
    segmentations: Any = None  # vtkSlicerSegmentationsModuleLogic
    terminologies: Any = None  # vtkSlicerTerminologiesModuleLogic, None without terminology files
    tables: Any = None  # vtkSlicerTablesLogic
    plots: Any = None  # vtkSlicerPlotsLogic


_HEADLESS: Optional[SlicerContext] = None


def import_slicer():
    """``import slicer`` with a message that says how to get it."""
    try:
        import slicer  # noqa: F401
    except ImportError as exc:
        raise LiverSegError(
            "Slicer's MRML core is not installed; run `pip install slicer-core==5.13.31053.0` "
            f"(needs Python >= 3.10) or run inside 3D Slicer ({exc})"
        ) from exc
    return slicer


def headless_context(terminology_dir: Optional[str] = None) -> SlicerContext:
    """A scene with the application, colour, volumes, segmentations, tables and plots logics, for use
    outside desktop Slicer (pytest, scripts). Built once per process and then returned again: Slicer
    allows one segmentations logic per process (each one registers its converter rules globally).

    Args:
        terminology_dir: optional folder of Slicer's ``*.term.json`` files; loads the terminologies logic
            (the first call that passes one does it). Segment terminology strings need no files.

    Do not call this inside desktop Slicer; use :func:`context_from_slicer_app` there.
    """
    global _HEADLESS
    slicer = import_slicer()
    if _HEADLESS is None:
        scene = slicer.vtkMRMLScene()
        app = slicer.vtkSlicerApplicationLogic()
        app.SetMRMLScene(scene)
        colors = app.GetColorLogic()
        colors.SetMRMLScene(scene)
        colors.AddDefaultColorNodes()
        app.SetModuleLogic("Colors", colors)  # before loading volumes, else "invalid Colors module logic"
        ctx = SlicerContext(scene=scene, app=app, colors=colors)
        ctx.volumes = _register(ctx, "Volumes", slicer.vtkSlicerVolumesLogic())
        ctx.segmentations = _register(ctx, "Segmentations", slicer.vtkSlicerSegmentationsModuleLogic())
        ctx.tables = _register(ctx, "Tables", slicer.vtkSlicerTablesLogic())
        ctx.plots = _register(ctx, "Plots", slicer.vtkSlicerPlotsLogic())
        _HEADLESS = ctx
    if terminology_dir and _HEADLESS.terminologies is None:
        _HEADLESS.terminologies = _register(
            _HEADLESS, "Terminologies", slicer.vtkSlicerTerminologiesModuleLogic(), str(terminology_dir)
        )
    return _HEADLESS


def _register(ctx: SlicerContext, name: str, logic, share_dir: Optional[str] = None):
    if share_dir:
        logic.SetModuleShareDirectory(share_dir)  # before SetMRMLScene: the JSON files load then
    logic.SetMRMLApplicationLogic(ctx.app)
    logic.SetMRMLScene(ctx.scene)
    ctx.app.SetModuleLogic(name, logic)
    return logic


def context_from_slicer_app() -> SlicerContext:
    """Desktop Slicer's scene and module logics. The only function in LiverSeg that reads Slicer's globals."""
    slicer = import_slicer()
    if not hasattr(slicer, "app") or not hasattr(slicer, "mrmlScene"):
        raise LiverSegError("not running inside the 3D Slicer application; use mrml.headless_context() instead")
    modules = slicer.modules

    def logic(name: str):
        module = getattr(modules, name, None)
        return module.logic() if module is not None else None

    app = slicer.app.applicationLogic()
    return SlicerContext(
        scene=slicer.mrmlScene,
        app=app,
        colors=logic("colors"),
        volumes=logic("volumes"),
        segmentations=logic("segmentations"),
        terminologies=logic("terminologies"),
        tables=logic("tables"),
        plots=logic("plots"),
    )


# --------------------------------------------------------------------------------------------- geometry


def vtk_matrix(affine: np.ndarray):
    """numpy 4x4 -> vtkMatrix4x4 (exact: both are float64)."""
    import vtk

    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(affine[r, c]))
    return m


def ijk_to_ras(volume_node) -> np.ndarray:
    """A volume node's IJK -> RAS matrix as a float64 4x4 array."""
    import vtk

    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def volume_from_node(volume_node) -> Volume:
    """A scalar or labelmap volume node as a :class:`Volume` (a copy; array (I, J, K))."""
    slicer = import_slicer()
    image = volume_node.GetImageData() if volume_node is not None else None
    if image is None:
        raise LiverSegError(f"volume '{volume_node.GetName() if volume_node else None}' holds no image data")
    kji = slicer.util.arrayFromVolume(volume_node)
    return Volume(np.ascontiguousarray(kji.transpose(2, 1, 0)), ijk_to_ras(volume_node))  # a C-order copy


def add_labelmap_node(scene, labels: Volume, name: str = "LiverSeg labels"):
    """A ``vtkMRMLLabelMapVolumeNode`` holding ``labels`` on its own grid, in ``scene``."""
    slicer = import_slicer()
    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
    node.SetIJKToRASMatrix(vtk_matrix(labels.affine))
    kji = np.ascontiguousarray(np.asarray(labels.array).transpose(2, 1, 0).astype(np.uint8, copy=False))
    slicer.util.updateVolumeFromArray(node, kji)
    return node


def remove_labelmap_node(scene, node) -> None:
    """Remove a temporary labelmap and the colour table an export made for it (singletons stay)."""
    if node is None or node.GetScene() is None:
        return
    extra = []
    for index in range(node.GetNumberOfDisplayNodes()):
        display = node.GetNthDisplayNode(index)
        if display is None:
            continue
        extra.append(display)
        color = display.GetColorNode()
        if color is not None and not color.GetSingletonTag():
            extra.append(color)
    if node.GetStorageNode() is not None:
        extra.append(node.GetStorageNode())
    scene.RemoveNode(node)
    for other in extra:
        if other.GetScene() is not None:
            scene.RemoveNode(other)


def _check_labels(labels: Volume) -> None:
    array = np.asarray(labels.array)
    if array.ndim != 3:
        raise LiverSegError(f"labelmap has shape {array.shape}; expected a 3D (I, J, K) array")
    if np.asarray(labels.affine).shape != (4, 4):
        raise LiverSegError(f"labelmap affine has shape {np.asarray(labels.affine).shape}; expected 4x4")
    if array.dtype.kind not in "iub":
        raise LiverSegError(f"labelmap has voxel type {array.dtype}; expected integer labels 0/1/2")
    unknown = np.setdiff1d(np.unique(array), [0] + [s.label for s in SEGMENTS])
    if unknown.size:
        raise LiverSegError(f"labelmap holds values {unknown.tolist()}; expected 0 background, 1 liver, 2 tumour")


def same_grid(volume_node, labels: Volume, atol: float = 1e-4) -> bool:
    """True if ``labels`` lies on ``volume_node``'s voxel grid (dimensions and IJK -> RAS)."""
    image = volume_node.GetImageData()
    if image is None or tuple(image.GetDimensions()) != tuple(np.asarray(labels.array).shape):
        return False
    return bool(np.allclose(ijk_to_ras(volume_node), labels.affine, atol=atol))


# --------------------------------------------------------------------------------------------- segmentation


def labelmap_to_segmentation(
    ctx: SlicerContext,
    labels: Volume,
    reference_volume_node=None,
    segmentation_node=None,
    name: str = "Liver segmentation",
):
    """Put a LiverSeg labelmap into a segmentation node: label 1 -> segment "Liver", label 2 -> "Liver tumor",
    with Slicer colours and SNOMED CT terminology.

    The segmentation's reference geometry is the labels' grid (IJK -> RAS from ``labels.affine``). With
    ``reference_volume_node`` (which must share that grid) the segmentation also points to that volume, as
    Slicer's Segment Editor expects. An existing ``segmentation_node`` is reused: its "Liver"/"Liver tumor"
    segments (found by ID or name) are replaced, other segments are kept.

    Returns:
        the vtkMRMLSegmentationNode (in ``ctx.scene``). Temporary nodes are removed again.

    Raises:
        LiverSegError: labels are not a 3D 0/1/2 labelmap, or not on the reference volume's grid.
    """
    slicer = import_slicer()
    import vtk

    _check_labels(labels)
    _ensure_converter_rules()
    scene = ctx.scene
    if reference_volume_node is not None and not same_grid(reference_volume_node, labels):
        raise LiverSegError(
            f"the labelmap (shape {np.asarray(labels.array).shape}) is not on the voxel grid of volume "
            f"'{reference_volume_node.GetName()}'; segment that volume itself"
        )
    created = segmentation_node is None
    if created:
        segmentation_node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        segmentation_node.CreateDefaultDisplayNodes()
    elif segmentation_node.GetDisplayNode() is None:
        segmentation_node.CreateDefaultDisplayNodes()
    temp = None
    try:
        temp = add_labelmap_node(scene, labels, f"{segmentation_node.GetName()} import")
        segmentation_node.SetReferenceImageGeometryParameterFromVolumeNode(temp)
        segmentation = segmentation_node.GetSegmentation()
        ids = vtk.vtkStringArray()
        for spec in SEGMENTS:
            segment_id = _find_segment(segmentation, spec)
            if segment_id is None:
                segment_id = segmentation.AddEmptySegment(spec.segment_id, spec.name, spec.color)
            segment = segmentation.GetSegment(segment_id)
            segment.SetName(spec.name)
            segment.SetColor(*spec.color)
            segment.SetTerminology(spec.terminology)
            segment.SetNameAutoGenerated(False)
            segment.SetColorAutoGenerated(False)
            ids.InsertNextValue(segment_id)  # n-th ID <- label value n
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(temp, segmentation_node, ids):
            raise LiverSegError("Slicer could not import the labelmap into the segmentation")
    except BaseException:
        if created:
            scene.RemoveNode(segmentation_node)
        raise
    finally:
        remove_labelmap_node(scene, temp)
    # the geometry stays the labels' grid (the string above); the node reference says which volume it is
    if reference_volume_node is not None:
        segmentation_node.SetNodeReferenceID(
            segmentation_node.GetReferenceImageGeometryReferenceRole(), reference_volume_node.GetID()
        )
    return segmentation_node


def _ensure_converter_rules() -> None:
    """Segment representations (even an empty binary labelmap) need the converter rules that a
    segmentations logic registers process-wide. Desktop Slicer has them; a bare script gets them from the
    (one, cached) headless context."""
    slicer = import_slicer()
    if not slicer.vtkSegmentationConverterFactory.GetInstance().GetConverterRules():
        headless_context()


def _find_segment(segmentation, spec: SegmentSpec) -> Optional[str]:
    if segmentation.GetSegment(spec.segment_id) is not None:
        return spec.segment_id
    segment_id = segmentation.GetSegmentIdBySegmentName(spec.name)
    return segment_id or None


def reference_geometry(segmentation_node) -> Tuple[np.ndarray, Tuple[int, int, int]]:
    """The segmentation's reference image geometry: (IJK -> RAS 4x4, grid dimensions (I, J, K))."""
    slicer = import_slicer()
    name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    text = segmentation_node.GetSegmentation().GetConversionParameter(name)
    values = [float(v) for v in text.split(";") if v.strip()]
    if len(values) != 22:
        raise LiverSegError(f"segmentation '{segmentation_node.GetName()}' has no reference geometry")
    matrix = np.array(values[:16]).reshape(4, 4)
    extent = [int(round(v)) for v in values[16:]]
    dims = tuple(extent[2 * a + 1] - extent[2 * a] + 1 for a in range(3))
    return matrix, dims  # type: ignore[return-value]


def segmentation_to_labels(scene, segmentation_node, reference_volume_node=None) -> Volume:
    """The "Liver"/"Liver tumor" segments as a 0/1/2 labelmap :class:`Volume`, on ``reference_volume_node``'s
    grid or else on the segmentation's reference geometry. Temporary nodes are removed again."""
    slicer = import_slicer()
    import vtk

    segmentation = segmentation_node.GetSegmentation()
    ids = vtk.vtkStringArray()
    for spec in SEGMENTS:
        segment_id = _find_segment(segmentation, spec)
        if segment_id is None:
            raise LiverSegError(f"segmentation '{segmentation_node.GetName()}' has no segment '{spec.name}'")
        ids.InsertNextValue(segment_id)
    temp_ref = None
    out = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "LiverSeg export")
    try:
        if reference_volume_node is None:
            matrix, dims = reference_geometry(segmentation_node)
            temp_ref = add_labelmap_node(scene, Volume(np.zeros(dims, np.uint8), matrix), "LiverSeg reference")
            reference_volume_node = temp_ref
        if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            segmentation_node, ids, out, reference_volume_node
        ):
            raise LiverSegError(f"Slicer could not export segmentation '{segmentation_node.GetName()}' to a labelmap")
        return volume_from_node(out)
    finally:
        remove_labelmap_node(scene, out)
        remove_labelmap_node(scene, temp_ref)


# --------------------------------------------------------------------------------------------- files


def save_segmentation(labels: Volume, path: str | os.PathLike, name: Optional[str] = None) -> Path:
    """Write ``labels`` (0/1/2 on the CT's grid) as a Slicer ``.seg.nrrd`` with the "Liver"/"Liver tumor"
    segments, their colours and terminology. Written through MRML in a private scene, atomically: a failed
    write leaves no file and keeps an existing one.

    Raises:
        LiverSegError: not a ``.seg.nrrd`` path, unwritable folder, bad labelmap, or the write failed (full
            disk, ...).
    """
    path = Path(path)
    if suffix_of(path) != SEG_NRRD:
        raise LiverSegError(f"{path}: a segmentation file must end in {SEG_NRRD}")
    _check_labels(labels)
    scene = _private_scene()  # leaves the caller's scene (and Slicer's) alone
    try:
        node_name = name or path.name[: -len(SEG_NRRD)] or "Liver segmentation"
        segmentation_node = labelmap_to_segmentation(SlicerContext(scene=scene), labels, name=node_name)
        with atomic_output(path) as temp:
            _write_segmentation_file(scene, segmentation_node, temp)
    finally:
        scene.Clear(1)
    return path


def _private_scene():
    """A scene of our own with Slicer's default colour tables (labelmap display nodes look them up)."""
    slicer = import_slicer()
    scene = slicer.vtkMRMLScene()
    colors = slicer.vtkMRMLColorLogic()
    colors.SetMRMLScene(scene)
    colors.AddDefaultColorNodes()
    colors.SetMRMLScene(None)
    return scene


def _write_segmentation_file(scene, segmentation_node, path: Path) -> None:
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    storage.SetUseCompression(1)
    ok = storage.WriteData(segmentation_node)
    scene.RemoveNode(storage)
    if not ok:
        raise OSError("Slicer could not write the segmentation")  # atomic_output names the output
    check_complete(path, "Slicer")  # with SimpleITK: Slicer's own reader aborts the process on a cut file


def load_segmentation(scene, path: str | os.PathLike, name: Optional[str] = None):
    """Read a ``.seg.nrrd`` into a new segmentation node of ``scene`` (the storage node is not kept, so
    saving the scene elsewhere never rewrites ``path``)."""
    path = Path(path)
    if not path.is_file():
        raise LiverSegError(f"{path}: no such file")
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name or path.name[: -len(SEG_NRRD)])
    storage = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path.resolve()))
    ok = storage.ReadData(node)
    scene.RemoveNode(storage)
    if not ok:
        scene.RemoveNode(node)
        raise LiverSegError(f"{path}: not a segmentation file Slicer can read")
    return node


def read_segmentation_labels(path: str | os.PathLike) -> Volume:
    """A LiverSeg ``.seg.nrrd`` back as a 0/1/2 labelmap :class:`Volume` on its reference grid."""
    scene = _private_scene()
    try:
        return segmentation_to_labels(scene, load_segmentation(scene, path))
    finally:
        scene.Clear(1)


def segment_summary(segmentation_node) -> Dict[str, Dict[str, Any]]:
    """{segment name: {"id", "color" (0..255 ints), "terminology", "name_auto", "color_auto"}} for checks."""
    segmentation = segmentation_node.GetSegmentation()
    out: Dict[str, Dict[str, Any]] = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        segment = segmentation.GetSegment(segment_id)
        out[segment.GetName()] = {
            "id": segment_id,
            "color": tuple(int(round(c * 255)) for c in segment.GetColor()),
            "terminology": segment.GetTerminology(),
            "name_auto": bool(segment.GetNameAutoGenerated()),
            "color_auto": bool(segment.GetColorAutoGenerated()),
        }
    return out


__all__: Sequence[str] = (
    "LIVER",
    "TUMOR",
    "LIVER_RGB",
    "TUMOR_RGB",
    "SEGMENTS",
    "SegmentSpec",
    "SlicerContext",
    "headless_context",
    "context_from_slicer_app",
    "import_slicer",
    "volume_from_node",
    "add_labelmap_node",
    "remove_labelmap_node",
    "ijk_to_ras",
    "vtk_matrix",
    "same_grid",
    "labelmap_to_segmentation",
    "segmentation_to_labels",
    "reference_geometry",
    "save_segmentation",
    "load_segmentation",
    "read_segmentation_labels",
    "segment_summary",
)
