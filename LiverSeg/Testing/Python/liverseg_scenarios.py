"""Scenarios of the LiverSeg module's logic on a phantom CT, shared by pytest (``Testing/mrml``, on
``slicer-core``) and by the module's self-test in Slicer (``LiverSegTest``).

Each scenario takes a :class:`~LiverSegLib.mrml.SlicerContext` and a scratch folder, works on
``ctx.scene`` and raises AssertionError (or the logic's own error) when something is wrong. They use
no pytest and no Qt.
"""

from __future__ import annotations

import threading
import time
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from LiverSegLib import mrml
from LiverSegLib.errors import CancelledError, LiverSegError
from LiverSegLib.phantom import make_phantom
from LiverSegLib.segmenters.base import Segmenter
from LiverSegLib.slicer_logic import LiverSegLogic, render_segmentation_png
from LiverSegLib.volume import Volume, save_volume

SMALL = {"shape": (64, 64, 32), "spacing": (5.0, 5.0, 8.0)}
"""A phantom that holds liver and a tumour and segments in well under a second with the oracle."""
EM_PHANTOM = {"shape": (96, 80, 40), "spacing": (3.5, 3.5, 6.0)}


def check(condition: bool, message: str) -> None:
    """assert that survives ``python -O`` and reads well in Slicer's test log."""
    if not condition:
        raise AssertionError(message)


# --------------------------------------------------------------------------------------------- fakes


class OracleSegmenter(Segmenter):
    """Returns the labels it was given (the phantom's ground truth), with progress steps and cancel."""

    name = "oracle"
    description = "test double: returns known labels"

    def __init__(self, labels: np.ndarray, steps: int = 4):
        super().__init__()
        self.labels = labels
        self.steps = steps

    def _segment(self, ct: Volume) -> np.ndarray:
        for step in range(self.steps):
            self._step(step / self.steps, f"step {step + 1} of {self.steps}")
        return self.labels.copy()


class BlockingSegmenter(Segmenter):
    """Reports progress and waits until cancelled (or ``limit_s``); sets ``entered`` once running."""

    name = "blocking"

    def __init__(self, labels: np.ndarray, limit_s: float = 30.0):
        super().__init__()
        self.labels = labels
        self.limit_s = limit_s
        self.entered = threading.Event()

    def _segment(self, ct: Volume) -> np.ndarray:
        deadline = time.monotonic() + self.limit_s
        while time.monotonic() < deadline:
            self._step(0.5, "waiting to be cancelled")
            self.entered.set()
            time.sleep(0.01)
        return self.labels.copy()


class FailingSegmenter(Segmenter):
    name = "failing"

    def _segment(self, ct: Volume) -> np.ndarray:
        self._step(0.1, "about to fail")
        raise RuntimeError("simulated segmenter crash")


# --------------------------------------------------------------------------------------------- helpers


def node_summary(scene) -> List[Tuple[str, str]]:
    """(class, name) of every node, sorted: equal before and after means the scene is unchanged."""
    return sorted(
        (scene.GetNthNode(i).GetClassName(), scene.GetNthNode(i).GetName() or "") for i in range(scene.GetNumberOfNodes())
    )


def load_phantom(ctx, folder: Path, seed: int = 0, name: str = "PhantomCT", **kwargs):
    """Write a phantom CT with nibabel and load it as a scalar volume node, as Slicer's Add Data does.

    Returns (volume node, ct Volume, labels Volume).
    """
    params = dict(SMALL, n_tumours=1)
    params.update(kwargs)
    ct, labels = make_phantom(seed=seed, **params)
    path = Path(folder) / f"{name}_{seed}.nii.gz"
    save_volume(ct, path)
    node = ctx.volumes.AddArchetypeVolume(str(path), name)
    check(node is not None, f"Slicer could not load {path}")
    check(node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode"), "not a scalar volume")
    return node, ct, labels


def add_volume_node(ctx, array_ijk: np.ndarray, affine: np.ndarray, name: str, labelmap: bool = False):
    """A volume node straight from an (I, J, K) array (for inputs a file cannot easily hold)."""
    import slicer

    node = ctx.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(mrml.vtk_matrix(affine))
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array_ijk.transpose(2, 1, 0)))
    return node


def check_segmentation(ctx, result, volume_node, expected: Optional[np.ndarray] = None) -> Dict[str, Any]:
    """The checks every successful run must pass; returns a few numbers for the log."""
    node = result.segmentation_node
    check(node.GetScene() is ctx.scene, "segmentation is not in the scene")
    # geometry = the input volume's, and the node says so
    matrix, dims = mrml.reference_geometry(node)
    check(dims == tuple(volume_node.GetImageData().GetDimensions()), f"geometry dims {dims}")
    check(np.allclose(matrix, mrml.ijk_to_ras(volume_node), atol=1e-6), f"geometry {matrix} != volume IJKToRAS")
    check(node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is volume_node,
          "segmentation does not reference the input volume")
    # names, colours, terminology
    summary = mrml.segment_summary(node)
    check(set(summary) == {"Liver", "Liver tumor"}, f"segments {sorted(summary)}")
    for spec in mrml.SEGMENTS:
        got = summary[spec.name]
        check(got["id"] == spec.segment_id, f"{spec.name}: id {got['id']}")
        check(got["color"] == spec.rgb, f"{spec.name}: colour {got['color']} != {spec.rgb}")
        check(got["terminology"] == spec.terminology, f"{spec.name}: terminology {got['terminology']}")
        check(not got["name_auto"] and not got["color_auto"], f"{spec.name}: auto-generated name/colour")
    # voxels on the volume's grid
    labels = mrml.segmentation_to_labels(ctx.scene, node, volume_node)
    if expected is not None:
        check(np.array_equal(labels.array, expected), "segmentation voxels differ from the segmenter's labelmap")
    # closed surfaces (what the 3D view shows)
    import vtk

    points = {}
    for spec in mrml.SEGMENTS:
        polydata = vtk.vtkPolyData()
        node.GetClosedSurfaceRepresentation(spec.segment_id, polydata)
        points[spec.name] = polydata.GetNumberOfPoints()
        if (labels.array == spec.label).any():
            check(polydata.GetNumberOfPoints() > 50 and polydata.GetNumberOfPolys() > 50,
                  f"{spec.name}: closed surface has {polydata.GetNumberOfPoints()} points")
    # table of volumes in ml: liver (tumours included), parenchyma, tumours, counted on the segmentation
    table = result.table_node
    check(table is not None and table.GetScene() is ctx.scene, "no volumes table")
    check(node.GetNodeReference("LiverSegVolumesTable") is table, "table not referenced by the segmentation")
    t = table.GetTable()
    voxel_ml = abs(np.linalg.det(mrml.ijk_to_ras(volume_node)[:3, :3])) / 1000.0
    expected_rows = tuple(int(np.count_nonzero(mask)) * voxel_ml
                          for mask in (labels.array > 0, labels.array == 1, labels.array == 2))
    check(t.GetNumberOfRows() == len(expected_rows), f"table has {t.GetNumberOfRows()} rows")
    for row, (title, ml_from_result, _voxels) in enumerate(result.volumes.rows()):
        name = t.GetValueByName(row, "Structure").ToString()
        ml = t.GetValueByName(row, "Volume [ml]").ToDouble()
        check(name == title, f"table row {row}: {name} != {title}")
        check(abs(ml - expected_rows[row]) < 1e-6 * max(1.0, ml), f"{name}: {ml} ml != {expected_rows[row]}")
        check(abs(ml_from_result - ml) < 1e-9, "result.volumes differs from the table")
    check(table.GetColumnUnitLabel("Volume [ml]") == "ml", "unit label")
    return {"points": points, "liver_ml": result.volumes.liver_ml}


# --------------------------------------------------------------------------------------------- scenarios


def scenario_segment_phantom(ctx, folder: Path) -> Dict[str, Any]:
    """Load a phantom CT, segment it (known labels), check the segmentation, volumes and surfaces."""
    volume_node, ct, labels = load_phantom(ctx, folder)
    logic = LiverSegLogic(ctx)
    progress: List[float] = []
    job = logic.start(volume_node, OracleSegmenter(labels.array))
    while logic.poll(job) is None:
        progress.append(job.fraction)
        time.sleep(0.005)
    result = logic.poll(job)
    check(job.fraction == 1.0 and job.message == "done", f"final progress {job.fraction} {job.message}")
    check((labels.array == 2).any() and (labels.array == 1).any(), "phantom has no liver or no tumour")
    info = check_segmentation(ctx, result, volume_node, expected=labels.array)
    info.update(result=result, volume_node=volume_node, labels=labels)
    return info


def scenario_segment_em(ctx, folder: Path) -> Dict[str, Any]:
    """The real EM segmenter on a phantom through the logic: a sensible liver overlapping the truth."""
    volume_node, ct, labels = load_phantom(ctx, folder, seed=1, **EM_PHANTOM)
    result = LiverSegLogic(ctx).run(volume_node, "em")
    check(result.method == "em", result.method)
    info = check_segmentation(ctx, result, volume_node)
    got = mrml.segmentation_to_labels(ctx.scene, result.segmentation_node, volume_node).array >= 1
    truth = labels.array >= 1
    dice = 2.0 * (got & truth).sum() / max(1, got.sum() + truth.sum())
    check(dice > 0.6, f"EM liver Dice {dice:.3f} on the phantom")
    info["dice_liver"] = float(dice)
    return info


def scenario_seg_nrrd_and_mrb(ctx, folder: Path) -> Dict[str, Any]:
    """Save the segmentation as .seg.nrrd and reload it identical; write the scene as an MRB."""
    folder = Path(folder)
    info = scenario_segment_phantom(ctx, folder)
    node, volume_node = info["result"].segmentation_node, info["volume_node"]
    path = folder / "liver.seg.nrrd"
    storage = ctx.scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    check(storage.WriteData(node), "WriteData failed")
    ctx.scene.RemoveNode(storage)
    reloaded = mrml.load_segmentation(ctx.scene, path, "reloaded")
    check(mrml.segment_summary(reloaded) == mrml.segment_summary(node), "segments differ after reload")
    a = mrml.segmentation_to_labels(ctx.scene, node, volume_node).array
    b = mrml.segmentation_to_labels(ctx.scene, reloaded, volume_node).array
    check(np.array_equal(a, b), "voxels differ after reload")
    matrix, dims = mrml.reference_geometry(reloaded)
    check(np.allclose(matrix, mrml.ijk_to_ras(volume_node), atol=1e-6), "reloaded geometry differs")
    # the .seg.nrrd written outside any scene (the CLI's path) equals it too
    cli_path = mrml.save_segmentation(info["labels"], folder / "cli.seg.nrrd")
    check(np.array_equal(mrml.read_segmentation_labels(cli_path).array, a), "save_segmentation voxels differ")
    ctx.scene.RemoveNode(reloaded)

    mrb = (folder / "scene.mrb").resolve()
    ctx.scene.SetRootDirectory(str(folder.resolve()))
    check(ctx.scene.WriteToMRB(str(mrb)), "WriteToMRB failed")
    names = zipfile.ZipFile(mrb).namelist()
    check(any(n.endswith(".seg.nrrd") for n in names), f"no .seg.nrrd in the MRB: {names}")
    check(any(n.endswith(".mrml") for n in names), "no .mrml in the MRB")
    check(not any("ColorTable" in n for n in names), f"leaked colour tables in the MRB: {names}")
    info.update(seg_nrrd=path, mrb=mrb, mrb_entries=names)
    return info


def scenario_existing_segmentation(ctx, folder: Path) -> None:
    """Re-running into an existing segmentation replaces Liver/Liver tumor, keeps other segments and
    reuses the volumes table."""
    info = scenario_segment_phantom(ctx, folder)
    node, volume_node, labels = info["result"].segmentation_node, info["volume_node"], info["labels"]
    node.GetSegmentation().AddEmptySegment("kidney", "Kidney", (0.2, 0.3, 0.9))
    tables = ctx.scene.GetNumberOfNodesByClass("vtkMRMLTableNode")
    only_liver = (labels.array == 1).astype(np.uint8)
    result = LiverSegLogic(ctx).run(volume_node, OracleSegmenter(only_liver), segmentation_node=node)
    check(result.segmentation_node is node, "a new segmentation was made")
    check(node.GetSegmentation().GetSegment("kidney") is not None, "other segment removed")
    check(ctx.scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == tables, "a second volumes table was made")
    check(np.array_equal(mrml.segmentation_to_labels(ctx.scene, node, volume_node).array, only_liver), "not replaced")
    check(result.volumes.tumour_ml == 0.0, "tumour volume not zero")


def scenario_cancel(ctx, folder: Path) -> None:
    """Cancel halfway: CancelledError, and the scene is as it was (same nodes)."""
    volume_node, ct, labels = load_phantom(ctx, folder)
    before = node_summary(ctx.scene)
    logic = LiverSegLogic(ctx)
    segmenter = BlockingSegmenter(labels.array)
    job = logic.start(volume_node, segmenter)
    check(segmenter.entered.wait(10), "segmenter did not start")
    check(logic.poll(job) is None and job.running, "job should still be running")
    check(node_summary(ctx.scene) == before, "scene changed while segmenting")
    logic.cancel(job)
    job.thread.join(10)
    check(not job.running, "worker did not stop after cancel")
    try:
        logic.poll(job)
    except CancelledError:
        pass
    else:
        raise AssertionError("poll after cancel did not raise CancelledError")
    check(node_summary(ctx.scene) == before, "scene changed by a cancelled run")

    # cancelled after the worker finished but before the main thread applied it: still nothing added
    job = logic.start(volume_node, OracleSegmenter(labels.array))
    job.thread.join(10)
    logic.cancel(job)
    try:
        logic.poll(job)
        raise AssertionError("late cancel was ignored")
    except CancelledError:
        pass
    check(node_summary(ctx.scene) == before, "scene changed by a late-cancelled run")


def bad_input_messages(ctx, folder: Path) -> Dict[str, str]:
    """Each bad input -> the LiverSegError message; checks the scene is unchanged by each."""
    ct, _ = make_phantom(seed=0, n_tumours=1, **SMALL)
    affine = ct.affine
    cases = {
        "no volume": None,
        "labelmap": add_volume_node(ctx, (ct.array > 0).astype(np.uint8), affine, "LabelsNotCT", labelmap=True),
        "2D": add_volume_node(ctx, ct.array[:, :, 10:11], affine, "OneSlice"),
        "non-CT": add_volume_node(ctx, (ct.array.astype(np.float32) + 1024.0) / 4.0, affine, "LooksLikeMR"),
        "empty": ctx.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "NoImage"),
    }
    messages = {}
    logic = LiverSegLogic(ctx)
    for label, node in cases.items():
        before = node_summary(ctx.scene)
        try:
            logic.start(node, "em")
        except LiverSegError as exc:
            messages[label] = str(exc)
        else:
            raise AssertionError(f"{label}: no error")
        check(node_summary(ctx.scene) == before, f"{label}: scene changed")
    return messages


EXPECTED_BAD_INPUT = {
    "no volume": "No input volume selected",
    "labelmap": "is a labelmap",
    "2D": "is a 2D image",
    "non-CT": "do not look like a CT",
    "empty": "holds no image data",
}


def scenario_bad_inputs(ctx, folder: Path) -> Dict[str, str]:
    messages = bad_input_messages(ctx, folder)
    for label, fragment in EXPECTED_BAD_INPUT.items():
        check(fragment in messages[label], f"{label}: message '{messages[label]}' lacks '{fragment}'")
    return messages


def scenario_errors_leave_scene(ctx, folder: Path) -> None:
    """A segmenter crash, and a failure while filling an existing segmentation, change nothing."""
    info = scenario_segment_phantom(ctx, folder)
    node, volume_node = info["result"].segmentation_node, info["volume_node"]
    before_nodes = node_summary(ctx.scene)
    before_voxels = mrml.segmentation_to_labels(ctx.scene, node, volume_node).array
    logic = LiverSegLogic(ctx)
    for segmenter, fragment in ((FailingSegmenter(), "simulated segmenter crash"),
                                (OracleSegmenter(np.full(before_voxels.shape, 3, np.uint8)), "values [3]")):
        job = logic.start(volume_node, segmenter, segmentation_node=node)
        try:
            logic.wait(job, timeout=30)
        except LiverSegError as exc:
            check(fragment in str(exc), f"message '{exc}' lacks '{fragment}'")
        else:
            raise AssertionError(f"{segmenter.name}: no error")
        check(node_summary(ctx.scene) == before_nodes, f"{segmenter.name}: scene nodes changed")
        after = mrml.segmentation_to_labels(ctx.scene, node, volume_node).array
        check(np.array_equal(after, before_voxels), f"{segmenter.name}: existing segmentation changed")
        check(set(mrml.segment_summary(node)) == {"Liver", "Liver tumor"}, "segments changed")

    # a failure late in the scene update (after the segments were filled): everything is rolled back
    class LateFailure(LiverSegLogic):
        def _volumes_table(self, *args):
            raise LiverSegError("simulated failure while making the table")

    late = LateFailure(ctx)
    new_labels = np.where(info["labels"].array == 2, 0, info["labels"].array).astype(np.uint8)
    for target in (node, None):
        try:
            late.run(volume_node, OracleSegmenter(new_labels), segmentation_node=target)
            raise AssertionError("late failure not reported")
        except LiverSegError as exc:
            check("simulated failure while making the table" in str(exc), str(exc))
        check(node_summary(ctx.scene) == before_nodes, "late failure: scene nodes changed")
        after = mrml.segmentation_to_labels(ctx.scene, node, volume_node).array
        check(np.array_equal(after, before_voxels), "late failure: existing segmentation not restored")

    # an input removed while segmenting
    segmenter = BlockingSegmenter(info["labels"].array, limit_s=0.2)
    job = logic.start(volume_node, segmenter)
    ctx.scene.RemoveNode(volume_node)
    before_nodes = node_summary(ctx.scene)
    try:
        logic.wait(job, timeout=30)
        raise AssertionError("removed input not noticed")
    except LiverSegError as exc:
        check("removed from the scene" in str(exc), str(exc))
    check(node_summary(ctx.scene) == before_nodes, "scene changed after the input was removed")


def scenario_render(ctx, folder: Path, png: Optional[Path] = None) -> Dict[str, Any]:
    """Offscreen PNG of the 3D surfaces over a CT slice; most pixels are not background."""
    info = scenario_segment_phantom(ctx, folder)
    out = render_segmentation_png(info["result"].segmentation_node, png or Path(folder) / "liver_3d.png",
                                  volume_node=info["volume_node"], size=(320, 240))
    check(out["path"].is_file() and out["path"].stat().st_size > 1000, "PNG missing or tiny")
    check(out["foreground_fraction"] > 0.05, f"only {out['foreground_fraction']:.1%} of the pixels are not background")
    return out
