"""The LiverSeg module's logic, free of Qt: a CT volume node in, a "Liver"/"Liver tumor" segmentation out.

A method named by the panel runs in a child process: ``liverseg segment --progress json`` on a temporary
copy of the CT (a :class:`~LiverSegLib.jobs.Job`, as training does), so an out-of-memory or a native
crash in torch ends the child, not Slicer, and Cancel kills its whole process tree. A ready
:class:`Segmenter` object (scripts, tests) runs in a worker thread instead. Neither touches MRML: the
caller's main thread starts the job (:meth:`LiverSegLogic.start`), polls it (:meth:`LiverSegLogic.poll`,
from a QTimer in Slicer) and, once the labels are there, ``poll`` fills the scene. Cancel, or an error at
any stage, leaves the scene as it was. The scene and the module logics come in through a
:class:`~LiverSegLib.mrml.SlicerContext`, so the same class runs inside Slicer and under pytest on PyPI's
``slicer-core``.

Typical use (blocking, for scripts)::

    ctx = mrml.headless_context()                       # or mrml.context_from_slicer_app() in Slicer
    ct = ctx.volumes.AddArchetypeVolume("/data/ct.nii.gz", "CT")
    result = LiverSegLogic(ctx).run(ct, method="em")
    result.volumes.liver_ml                             # 1523.1 (tumours included; see volumetry.py)
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import jobs, mrml
from .dependencies import require
from .errors import CancelledError, LiverSegError, MethodUnavailableError
from .segmenters import SEGMENTERS, Segmenter, create_segmenter, default_method, measured_liver_dice
from .volume import Volume, check_ct, load_volume, save_volume
from .volumetry import LiverVolumes, liver_volumes

VOLUMES_TABLE_ROLE = "LiverSegVolumesTable"
"""Node reference from the segmentation to its table of segment volumes (reused by later runs)."""

DEVICES = ("auto", "cpu", "cuda")
NOT_ENOUGH_MEMORY = "not enough memory to segment this CT; close other data or use a bigger machine"

SegmentCommand = Callable[[str, str, str, Optional[str], str], Sequence[str]]
"""(CT file, labels file, method, model path or None, device) -> the child's argv."""


def segment_command(ct_path: str, labels_path: str, method: str, model_path: Optional[str], device: str) -> List[str]:
    """``python -m LiverSegLib.cli segment CT -o LABELS --method M --device D [--model F] --progress json``."""
    command = jobs.cli_command("segment", ct_path, "-o", labels_path, "--method", method, "--device", device,
                               "--progress", "json")
    return command + (["--model", model_path] if model_path else [])


def available_segmenters(model_paths: Optional[Dict[str, str]] = None, device: str = "auto") -> List[Tuple[str, str]]:
    """(name, description) of each segmenter that can be created here, in registry order.

    A segmenter counts when ``create_segmenter`` succeeds with its model (from ``model_paths`` or its
    default); one that cannot be created (its model is missing, say) is left out.

    Raises:
        MissingDependenciesError: a package every segmenter needs is missing (the list would be empty).
    """
    require()
    out = []
    for name, (_, _, description) in SEGMENTERS.items():
        try:
            segmenter = create_segmenter(name, (model_paths or {}).get(name), device)
        except Exception:  # noqa: BLE001 - unavailable for any reason: not listed
            continue
        dice = measured_liver_dice(name)
        measured = f" (liver Dice {dice:.2f} on unseen real CT)" if dice is not None else ""
        out.append((name, (getattr(segmenter, "description", "") or description) + measured))
    return out


# --------------------------------------------------------------------------------------------- jobs


@dataclass
class SegmentationResult:
    """What a finished run put into the scene."""

    segmentation_node: Any
    table_node: Any
    volumes: LiverVolumes
    method: str
    seconds: float


@dataclass
class SegmentationJob:
    """A segmentation running in a child process (``process``) or a worker thread (``thread``). Read
    ``fraction``/``message`` from the main thread."""

    volume_node: Any
    segmentation_node: Any
    segmenter_name: str
    show_3d: bool
    segmentation_name: str
    ct: Volume
    cancel_event: threading.Event = field(default_factory=threading.Event)
    fraction: float = 0.0
    message: str = "starting"
    labels: Optional[np.ndarray] = None
    error: Optional[BaseException] = None
    thread: Optional[threading.Thread] = None
    process: Optional[jobs.Job] = None
    folder: Optional[Path] = None  # the child's copy of the CT and its labels; removed once it ended
    started: float = field(default_factory=time.monotonic)
    result: Optional[SegmentationResult] = None
    finished: bool = False  # poll() has applied or discarded the worker's output

    @property
    def running(self) -> bool:
        """The child process or the worker thread is still segmenting."""
        if self.process is not None:
            return self.process.running
        return self.thread is not None and self.thread.is_alive()

    def _progress(self, fraction: float, message: str) -> None:
        self.fraction, self.message = float(fraction), str(message)


class LiverSegLogic:
    """Segments the liver and liver tumours of a CT volume node into a segmentation node.

    Args:
        ctx: scene and module logics (:func:`mrml.headless_context` or :func:`mrml.context_from_slicer_app`).
        command_builder: the child's command line (default :func:`segment_command`); tests put stand-in children here.
    """

    def __init__(self, ctx: mrml.SlicerContext, command_builder: SegmentCommand = segment_command):
        self.ctx = ctx
        self.command_builder = command_builder
        self._last: Optional[SegmentationJob] = None  # one segmentation at a time: results are never mixed

    # ----------------------------------------------------------------------------------------- input

    def read_input(self, volume_node) -> Volume:
        """The CT of ``volume_node`` as a :class:`Volume` (array (I, J, K), affine = IJK -> RAS), after
        checking that it is a 3D CT in HU. Touches nothing.

        Raises:
            LiverSegError: no volume, a labelmap or other non-scalar node, no image data, a 2D image, or
                intensities that are not CT Hounsfield units; the message says what to do.
        """
        if volume_node is None:
            raise LiverSegError("No input volume selected: load a CT (File > Add Data) and choose it as the input volume")
        name = volume_node.GetName() or volume_node.GetID()
        if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
            raise LiverSegError(f"'{name}' is a labelmap (a segmentation), not a CT: choose the CT volume as input")
        if volume_node.IsA("vtkMRMLSegmentationNode"):
            raise LiverSegError(f"'{name}' is a segmentation, not a CT: choose the CT volume as input")
        if not volume_node.IsA("vtkMRMLScalarVolumeNode"):
            raise LiverSegError(
                f"'{name}' is a {volume_node.GetClassName()}, not a scalar CT volume: choose a greyscale CT as input"
            )
        image = volume_node.GetImageData()
        if image is None or image.GetNumberOfPoints() == 0:
            raise LiverSegError(f"'{name}' holds no image data: load the CT again")
        if image.GetNumberOfScalarComponents() != 1:
            raise LiverSegError(
                f"'{name}' has {image.GetNumberOfScalarComponents()} components per voxel (colour?): "
                "choose a greyscale CT in Hounsfield units"
            )
        dims = tuple(image.GetDimensions())
        if sum(1 for n in dims if n > 1) < 3:
            raise LiverSegError(
                f"'{name}' is a 2D image ({dims[0]} x {dims[1]} x {dims[2]} voxels): LiverSeg needs a 3D CT volume "
                "(load the whole series, not a single slice)"
            )
        ct = mrml.volume_from_node(volume_node)
        check_ct(ct.array, f"'{name}'")
        return ct

    # ----------------------------------------------------------------------------------------- run

    def start(
        self,
        volume_node,
        method: Union[str, Segmenter, None] = None,
        segmentation_node=None,
        model_path: Optional[str] = None,
        device: str = "auto",
        show_3d: bool = True,
        segmentation_name: Optional[str] = None,
    ) -> SegmentationJob:
        """Check the input and start segmenting it; returns at once.

        Args:
            volume_node: the CT (vtkMRMLScalarVolumeNode).
            method: segmenter name (see :data:`SEGMENTERS`), run in a child process; or a ready
                :class:`Segmenter`, run in a worker thread; ``None``: the best measured (:func:`default_method`).
            segmentation_node: fill this existing segmentation (its "Liver"/"Liver tumor" segments are
                replaced, others kept); ``None`` makes a new one.
            model_path, device: the child's ``--model`` and ``--device``.
            show_3d: make closed surfaces so Slicer's 3D view shows the segments.
            segmentation_name: name of a new segmentation node (default "<volume> liver").

        Raises:
            LiverSegError: a segmentation is already running, bad input, an unknown method or device, a
                missing Python package, or the CT copy cannot be written (scene untouched).
        """
        require()
        if self._last is not None and self._last.running:
            raise LiverSegError("a segmentation is already running: wait for it to finish, or cancel it first")
        ct = self.read_input(volume_node)
        method = method if method is not None else default_method()
        if device not in DEVICES:
            raise LiverSegError(f"unknown device '{device}'; choose one of {', '.join(DEVICES)}")
        if not isinstance(method, Segmenter) and method not in SEGMENTERS:
            raise MethodUnavailableError(f"unknown method '{method}'; choose one of {', '.join(SEGMENTERS)}")
        if segmentation_node is not None and not segmentation_node.IsA("vtkMRMLSegmentationNode"):
            raise LiverSegError(f"'{segmentation_node.GetName()}' is not a segmentation node: choose a segmentation as output")
        name = method.name if isinstance(method, Segmenter) else str(method)
        job = SegmentationJob(
            volume_node=volume_node,
            segmentation_node=segmentation_node,
            segmenter_name=name or type(method).__name__,
            show_3d=show_3d,
            segmentation_name=segmentation_name or f"{volume_node.GetName()} liver",
            ct=ct,
        )
        if isinstance(method, Segmenter):
            job.thread = threading.Thread(target=self._work, args=(job, method), name="LiverSeg segmenter", daemon=True)
            job.thread.start()
        else:
            self._launch(job, method, model_path, device)
        self._last = job
        return job

    def _work(self, job: SegmentationJob, segmenter: Segmenter) -> None:
        """Worker thread: numpy only, no MRML."""
        try:
            job._progress(0.0, f"segmenting with {job.segmenter_name}")
            job.labels = segmenter.segment(job.ct, progress=job._progress, cancel=job.cancel_event)
        except BaseException as exc:  # reported on the main thread by poll()
            job.error = exc

    def _launch(self, job: SegmentationJob, method: str, model_path: Optional[str], device: str) -> None:
        """Write the CT where the child reads it and start ``liverseg segment`` on it."""
        job.folder = Path(tempfile.mkdtemp(prefix="liverseg_"))
        ct_path, labels_path = job.folder / "ct.nii", job.folder / "labels.nii"  # uncompressed: quick to write
        try:
            save_volume(job.ct, ct_path)
            job.process = jobs.Job(self.command_builder(str(ct_path), str(labels_path), method, model_path, device),
                                   cwd=job.folder)
        except BaseException:
            shutil.rmtree(job.folder, ignore_errors=True)
            raise

    def _follow(self, job: SegmentationJob) -> None:
        """Main thread: take the child's progress; once it ended, its labels or its error, and remove its files."""
        for event in job.process.poll():
            if event["event"] == "progress":
                job._progress(event.get("fraction", job.fraction), event.get("message", ""))
        outcome = job.process.outcome
        if outcome is None:
            return
        try:
            if outcome.ok:
                job.labels = self._read_labels(job)
            elif not outcome.cancelled:
                job.error = _child_error(job.segmenter_name, outcome)
        except LiverSegError as exc:
            job.error = exc
        finally:
            shutil.rmtree(job.folder, ignore_errors=True)

    @staticmethod
    def _read_labels(job: SegmentationJob) -> np.ndarray:
        """The child's labelmap as an array on the input's grid (its geometry is the input's, in memory)."""
        labels = load_volume(job.folder / "labels.nii")
        if labels.array.shape != job.ct.array.shape:
            raise LiverSegError(f"{job.segmenter_name} returned labels of shape {labels.array.shape} for a CT of "
                                f"shape {job.ct.array.shape}; nothing was changed")
        return np.array(labels.array, dtype=np.uint8)  # a copy: nibabel maps the file, which is removed next

    def cancel(self, job: SegmentationJob) -> None:
        """Stop the job: the child and what it started are killed (within a second), a worker thread is
        asked to stop; the next :meth:`poll` after it stopped raises CancelledError."""
        job.message = "cancelling"
        job.cancel_event.set()
        if job.process is not None:
            job.process.cancel()

    def poll(self, job: SegmentationJob) -> Optional[SegmentationResult]:
        """Call on the main thread. ``None`` while the worker runs (see ``job.fraction``/``job.message``);
        once it finished, puts the result into the scene and returns it (later calls return it again).

        Raises:
            CancelledError: the job was cancelled (scene unchanged).
            LiverSegError: the segmenter or the scene update failed (scene unchanged).
        """
        if job.finished:
            if job.result is None:
                raise CancelledError("segmentation cancelled") if job.cancel_event.is_set() else LiverSegError(
                    f"segmentation failed: {job.error}"
                )
            return job.result
        if job.process is not None:
            self._follow(job)
            if job.process.outcome is None:
                return None
        elif job.running:
            return None
        job.finished = True
        if job.cancel_event.is_set() or isinstance(job.error, CancelledError):
            job.cancel_event.set()
            job.message = "cancelled; nothing was changed"
            raise CancelledError("segmentation cancelled; nothing was changed")
        if job.error is not None:
            job.message = "failed"
            if isinstance(job.error, LiverSegError):
                raise job.error
            if isinstance(job.error, MemoryError):
                raise LiverSegError(NOT_ENOUGH_MEMORY) from job.error
            raise LiverSegError(f"{job.segmenter_name} failed: {type(job.error).__name__}: {job.error}") from job.error
        job._progress(0.95, "updating the scene")
        try:
            job.result = self._apply(job)
        except BaseException as exc:  # _apply rolled the scene back; later polls repeat the error
            job.error = exc
            job.message = "failed"
            raise
        job.message = "done"
        job.fraction = 1.0
        return job.result

    def wait(self, job: SegmentationJob, timeout: float = 600.0, interval: float = 0.05) -> SegmentationResult:
        """Block until ``job`` is done (polling as a QTimer would) and return its result."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.poll(job)
            if result is not None:
                return result
            if time.monotonic() > deadline:
                self.cancel(job)
                if job.thread is not None:
                    job.thread.join(30)
                raise LiverSegError(f"segmentation did not finish within {timeout:g} s; cancelled")
            time.sleep(interval)

    def run(self, volume_node, method: Union[str, Segmenter, None] = None, **kwargs) -> SegmentationResult:
        """:meth:`start` + :meth:`wait`: segment ``volume_node``, blocking."""
        return self.wait(self.start(volume_node, method, **kwargs))

    # ----------------------------------------------------------------------------------------- scene

    def _apply(self, job: SegmentationJob) -> SegmentationResult:
        """Main thread: put the labels into the scene, all or nothing."""
        scene = self.ctx.scene
        for node, what in ((job.volume_node, "input volume"), (job.segmentation_node, "output segmentation")):
            if node is not None and node.GetScene() is not scene:
                raise LiverSegError(f"the {what} was removed from the scene while segmenting; nothing was changed")
        labels = job.ct.with_array(job.labels)
        with SceneTransaction(scene, job.segmentation_node) as transaction:
            segmentation_node = mrml.labelmap_to_segmentation(
                self.ctx,
                labels,
                reference_volume_node=job.volume_node,
                segmentation_node=job.segmentation_node,
                name=job.segmentation_name,
            )
            transaction.track(segmentation_node)
            if job.volume_node.GetParentTransformNode() is not None:
                segmentation_node.SetAndObserveTransformNodeID(job.volume_node.GetTransformNodeID())
            if job.show_3d:
                if not segmentation_node.CreateClosedSurfaceRepresentation():
                    raise LiverSegError("Slicer could not make the 3D surfaces (no segmentations module logic?)")
                display = segmentation_node.GetDisplayNode()
                if display is not None:
                    display.SetVisibility3D(True)
            volumes = liver_volumes(labels.array, labels.voxel_ml)
            table = self._volumes_table(segmentation_node, volumes)
        return SegmentationResult(
            segmentation_node=segmentation_node,
            table_node=table,
            volumes=volumes,
            method=job.segmenter_name,
            seconds=time.monotonic() - job.started,
        )

    def _volumes_table(self, segmentation_node, volumes: LiverVolumes):
        """Fill (or make) the table of volumes that belongs to ``segmentation_node``: the rows of
        :meth:`LiverVolumes.rows`, so it shows what the CLI prints."""
        import vtk

        scene = self.ctx.scene
        table = segmentation_node.GetNodeReference(VOLUMES_TABLE_ROLE)
        if table is None:
            table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"{segmentation_node.GetName()} volumes")
            segmentation_node.SetNodeReferenceID(VOLUMES_TABLE_ROLE, table.GetID())
        was_modifying = table.StartModify()
        try:
            table.RemoveAllColumns()
            columns = (("Structure", vtk.vtkStringArray), ("Volume [ml]", vtk.vtkDoubleArray), ("Voxels", vtk.vtkIntArray))
            arrays = []
            for title, cls in columns:
                array = cls()
                array.SetName(title)
                arrays.append(array)
            for row in volumes.rows():
                for array, value in zip(arrays, row):
                    array.InsertNextValue(value)
            for array in arrays:
                table.AddColumn(array)
            table.SetColumnUnitLabel("Volume [ml]", "ml")
            table.SetColumnDescription("Volume [ml]", "voxel count x voxel volume of the input CT; the liver includes its tumours")
            table.SetUseColumnTitleAsColumnHeader(True)
            table.SetLocked(True)
        finally:
            table.EndModify(was_modifying)
        return table


def _child_error(name: str, outcome: jobs.Outcome) -> LiverSegError:
    """What the panel shows for a child that failed: its last stderr line (the CLI's one-line error, a
    traceback's exception) and how it ended."""
    message = outcome.message
    if "MemoryError" in message:
        return LiverSegError(f"{NOT_ENOUGH_MEMORY} ({name}: {message})")
    detail = "" if message == outcome.status else f": {message}"
    return LiverSegError(f"{name} failed ({outcome.status}){detail}; nothing was changed")


class SceneTransaction:
    """Undo-on-error for one scene update: nodes added inside the block are removed, and an existing
    segmentation node given here gets its segments (and reference geometry) back."""

    def __init__(self, scene, segmentation_node=None):
        self.scene = scene
        self.segmentation_node = segmentation_node
        self._backup = None
        self._ids_before: set = set()
        self._tracked: List[Any] = []

    def track(self, node) -> None:
        """Also remove ``node`` on error if it was created in the block."""
        self._tracked.append(node)

    def __enter__(self) -> "SceneTransaction":
        import slicer

        self._ids_before = {self.scene.GetNthNode(i).GetID() for i in range(self.scene.GetNumberOfNodes())}
        if self.segmentation_node is not None:
            self._backup = slicer.vtkSegmentation()
            self._backup.DeepCopy(self.segmentation_node.GetSegmentation())
            self._references = {
                role: self.segmentation_node.GetNodeReferenceID(role)
                for role in (self.segmentation_node.GetReferenceImageGeometryReferenceRole(), VOLUMES_TABLE_ROLE)
            }
            self._transform = self.segmentation_node.GetTransformNodeID()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            return False
        added = [
            self.scene.GetNthNode(i)
            for i in range(self.scene.GetNumberOfNodes())
            if self.scene.GetNthNode(i).GetID() not in self._ids_before
        ]
        for node in reversed(added):
            if node.GetScene() is not None:
                self.scene.RemoveNode(node)
        if self.segmentation_node is not None and self._backup is not None:
            self.segmentation_node.GetSegmentation().DeepCopy(self._backup)
            for role, node_id in self._references.items():
                self.segmentation_node.SetNodeReferenceID(role, node_id)
            self.segmentation_node.SetAndObserveTransformNodeID(self._transform)
        return False


# --------------------------------------------------------------------------------------------- picture


def offscreen_backend_default() -> None:
    """Pick EGL for offscreen rendering on a Linux machine without a display (before the first render
    window exists); desktop Slicer and machines with a display keep VTK's default."""
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


def render_segmentation_png(
    segmentation_node,
    path: Union[str, os.PathLike],
    volume_node=None,
    size: Tuple[int, int] = (640, 480),
    liver_opacity: float = 0.5,
    background: Sequence[float] = (0.1, 0.1, 0.15),
) -> Dict[str, Any]:
    """Render the segmentation's closed surfaces offscreen, seen from the front (anterior, superior up, the
    patient's right on the left as in Slicer's 3D view), over a coronal CT slice behind the liver when
    ``volume_node`` is given, and write a PNG.

    Returns:
        {"path", "backend" (render window class), "foreground_fraction" (pixels that are not background)}.

    Raises:
        LiverSegError: no closed surface to show, or no offscreen OpenGL here.
    """
    offscreen_backend_default()
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    segmentation = segmentation_node.GetSegmentation()
    if not segmentation_node.CreateClosedSurfaceRepresentation():
        raise LiverSegError("no closed-surface representation could be made (no segmentations logic in this process?)")
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(*background)
    low, high = np.full(3, np.inf), np.full(3, -np.inf)
    for index in range(segmentation.GetNumberOfSegments()):
        segment_id = segmentation.GetNthSegmentID(index)
        polydata = vtk.vtkPolyData()
        segmentation_node.GetClosedSurfaceRepresentation(segment_id, polydata)
        if polydata.GetNumberOfPoints() == 0:
            continue
        transformed = _in_world(segmentation_node, polydata)
        normals = vtk.vtkPolyDataNormals()
        normals.SetInputData(transformed)
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputConnection(normals.GetOutputPort())
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*segmentation.GetSegment(segment_id).GetColor())
        is_liver = segment_id == "liver" or segmentation.GetSegment(segment_id).GetName() == "Liver"
        actor.GetProperty().SetOpacity(liver_opacity if is_liver else 1.0)
        actor.GetProperty().SetSpecular(0.2)
        renderer.AddActor(actor)
        b = np.array(transformed.GetBounds())
        low, high = np.minimum(low, b[0::2]), np.maximum(high, b[1::2])
    if not np.isfinite(low).all():
        raise LiverSegError(f"segmentation '{segmentation_node.GetName()}' has no non-empty segment to show")
    bounds = np.ravel(np.column_stack([low, high]))  # xmin, xmax, ymin, ymax, zmin, zmax
    if volume_node is not None:
        renderer.AddActor(_coronal_slice_actor(volume_node, bounds))
    camera = renderer.GetActiveCamera()
    centre = (low + high) / 2
    camera.SetFocalPoint(*centre)
    camera.SetPosition(centre[0], centre[1] + 1000.0, centre[2])  # RAS +y: anterior
    camera.SetViewUp(0, 0, 1)
    renderer.ResetCamera(*bounds)
    camera.Elevation(20)
    camera.Azimuth(-25)
    camera.OrthogonalizeViewUp()
    renderer.ResetCameraClippingRange()
    camera.Zoom(1.3)

    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetMultiSamples(0)
    window.AddRenderer(renderer)
    window.SetSize(*size)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.ReadFrontBufferOff()
    grab.Update()
    image = grab.GetOutput()
    if image is None or image.GetNumberOfPoints() == 0:
        raise LiverSegError("offscreen rendering failed; install EGL (Debian: libegl1 libegl-mesa0 libgl1-mesa-dri)")
    pixels = vtk_to_numpy(image.GetPointData().GetScalars())[:, :3].astype(int)
    bg = np.round(np.asarray(background) * 255).astype(int)
    foreground = float((np.abs(pixels - bg).sum(axis=1) > 30).mean())
    path = Path(path)
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(image)
    writer.Write()
    backend = window.GetClassName()
    window.Finalize()
    if not path.is_file():
        raise LiverSegError(f"{path}: could not write the PNG")
    return {"path": path, "backend": backend, "foreground_fraction": foreground}


def _in_world(node, polydata):
    """Polydata in world RAS: applies the node's parent transform if any."""
    import vtk

    parent = node.GetParentTransformNode()
    if parent is None:
        return polydata
    transform = vtk.vtkGeneralTransform()
    parent.GetTransformToWorld(transform)
    apply = vtk.vtkTransformPolyDataFilter()
    apply.SetTransform(transform)
    apply.SetInputData(polydata)
    apply.Update()
    return apply.GetOutput()


def _coronal_slice_actor(volume_node, bounds: np.ndarray):
    """The CT slice of constant j just behind the liver (coronal for an axial CT), abdomen window."""
    import vtk

    image = vtk.vtkImageData()
    image.ShallowCopy(volume_node.GetImageData())  # IJK grid: origin 0, spacing 1
    ras_to_ijk = np.linalg.inv(mrml.ijk_to_ras(volume_node))
    behind = np.array([(bounds[0] + bounds[1]) / 2, bounds[2] - 5.0, (bounds[4] + bounds[5]) / 2, 1.0])
    ijk = ras_to_ijk @ behind
    dims = image.GetDimensions()
    j = int(np.clip(round(ijk[1]), 0, dims[1] - 1))
    window_level = vtk.vtkImageMapToWindowLevelColors()
    window_level.SetInputData(image)
    window_level.SetWindow(400)
    window_level.SetLevel(40)
    window_level.SetOutputFormatToRGB()
    window_level.Update()
    actor = vtk.vtkImageActor()
    actor.GetMapper().SetInputConnection(window_level.GetOutputPort())
    actor.SetDisplayExtent(0, dims[0] - 1, j, j, 0, dims[2] - 1)
    actor.SetUserMatrix(mrml.vtk_matrix(mrml.ijk_to_ras(volume_node)))
    actor.ForceOpaqueOn()
    return actor


def offscreen_rendering_available(timeout: float = 60.0) -> Tuple[bool, str]:
    """Try one tiny offscreen render in a child process (a missing OpenGL can crash the process that
    tries). Returns (works, render window class or the reason it does not)."""
    import subprocess

    env = dict(os.environ)
    if sys.platform.startswith("linux") and not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY"):
        env.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    code = (
        "import vtk\n"
        "w = vtk.vtkRenderWindow(); w.SetOffScreenRendering(1); r = vtk.vtkRenderer(); r.SetBackground(1, 0, 0)\n"
        "w.AddRenderer(r); w.SetSize(8, 8); w.Render()\n"
        "f = vtk.vtkWindowToImageFilter(); f.SetInput(w); f.Update()\n"
        "px = f.GetOutput().GetPointData().GetScalars().GetTuple(0)\n"
        "print('OK', w.GetClassName()) if px[0] > 200 and px[1] < 50 else print('BLANK', px)\n"
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"render check could not run: {exc}"
    lines = out.stdout.strip().splitlines()
    if out.returncode == 0 and lines and lines[-1].startswith("OK"):
        return True, lines[-1].split()[1]
    tail = (out.stderr.strip().splitlines() or lines or [f"exit status {out.returncode}"])[-1]
    tail = re.sub(r"\x1b\[[0-9;]*m", "", tail).strip()  # VTK colours its log lines
    return False, f"no offscreen OpenGL (exit {out.returncode}: {tail[:200]}); Debian: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri"


__all__ = [
    "LiverSegLogic",
    "SegmentationJob",
    "SegmentationResult",
    "SceneTransaction",
    "segment_command",
    "available_segmenters",
    "render_segmentation_png",
    "offscreen_rendering_available",
    "offscreen_backend_default",
    "DEVICES",
    "VOLUMES_TABLE_ROLE",
]
