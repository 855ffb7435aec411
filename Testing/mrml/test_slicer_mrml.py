"""LiverSegLib.mrml on a real MRML scene: labelmap -> segmentation node, and .seg.nrrd files."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from liverseg_scenarios import node_summary

from LiverSegLib import mrml
from LiverSegLib.errors import LiverSegError
from LiverSegLib.volume import Volume


def rotation(ax: float, az: float) -> np.ndarray:
    cx, sx, cz, sz = math.cos(ax), math.sin(ax), math.cos(az), math.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ rx


def affine_of(kind: str) -> np.ndarray:
    a = np.eye(4)
    if kind == "diagonal":
        a[:3, :3] = np.diag([0.8, 0.75, 2.5])
    elif kind == "lps_flipped":  # as a DICOM/NRRD in LPS arrives in RAS: x and y negated
        a[:3, :3] = np.diag([-0.8, -0.75, 2.5])
    elif kind == "oblique":
        a[:3, :3] = rotation(0.3, 0.5) @ np.diag([0.8, 0.75, 2.5])
    elif kind == "permuted":
        a[:3, :3] = np.array([[0, 0, 2.0], [0.9, 0, 0], [0, -0.9, 0]])
    a[:3, 3] = [12.5, -40.25, 101.0]
    return a


def labelmap(shape=(40, 30, 20), tumour=True) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[5:30, 4:25, 3:15] = 1
    lab[7, 6, 4] = 0  # a hole: asymmetric content catches any axis flip
    if tumour:
        lab[10:15, 10:16, 5:9] = 2
        lab[28, 5, 13] = 2
    return lab


EXPECTED = {
    "Liver": {"id": "liver", "color": mrml.LIVER_RGB, "terminology": mrml.LIVER},
    "Liver tumor": {"id": "liver_tumor", "color": mrml.TUMOR_RGB, "terminology": mrml.TUMOR},
}


def check_segments(node):
    summary = mrml.segment_summary(node)
    assert set(summary) == set(EXPECTED)
    for name, want in EXPECTED.items():
        got = summary[name]
        assert (got["id"], got["color"], got["terminology"]) == (want["id"], want["color"], want["terminology"])
        assert not got["name_auto"] and not got["color_auto"]


def test_terminology_codes():
    assert "SCT^10200004^Liver" in mrml.LIVER
    assert "SCT^108369006^Neoplasm" in mrml.TUMOR and mrml.TUMOR.endswith("SCT^10200004^Liver~^^")
    assert mrml.LIVER_RGB == (221, 130, 101) and mrml.TUMOR_RGB != mrml.LIVER_RGB


def test_terminology_strings_parse(ctx):
    import slicer

    for text, code in ((mrml.LIVER, "10200004"), (mrml.TUMOR, "108369006")):
        entry = slicer.vtkSlicerTerminologyEntry()
        assert slicer.vtkSlicerTerminologiesModuleLogic.DeserializeTerminologyEntry(text, entry)
        assert entry.GetTypeObject().GetCodeValue() == code


def test_headless_context_is_cached(ctx):
    import slicer

    assert mrml.headless_context() is ctx
    assert len(slicer.vtkSegmentationConverterFactory.GetInstance().GetConverterRules()) == 4
    with pytest.raises(LiverSegError, match="not running inside the 3D Slicer application"):
        mrml.context_from_slicer_app()


@pytest.mark.parametrize("kind", ["diagonal", "lps_flipped", "oblique", "permuted"])
def test_labelmap_to_segmentation(scene, ctx, kind):
    lab = labelmap()
    labels = Volume(lab, affine_of(kind))
    ref = mrml.add_labelmap_node(scene, Volume(np.zeros_like(lab), labels.affine), "reference")
    before = node_summary(scene)
    node = mrml.labelmap_to_segmentation(ctx, labels, reference_volume_node=ref)
    check_segments(node)
    matrix, dims = mrml.reference_geometry(node)
    assert dims == lab.shape
    np.testing.assert_allclose(matrix, labels.affine, atol=1e-12)
    assert node.GetNodeReference(node.GetReferenceImageGeometryReferenceRole()) is ref
    # only the segmentation and its display node were added: no temporary labelmaps or colour tables left
    added = sorted(set(node_summary(scene)) - set(before))
    assert added == [("vtkMRMLSegmentationDisplayNode", "SegmentationDisplay"),
                     ("vtkMRMLSegmentationNode", "Liver segmentation")], added
    assert len(node_summary(scene)) == len(before) + 2
    back = mrml.segmentation_to_labels(scene, node, ref)
    assert np.array_equal(back.array, lab)
    np.testing.assert_allclose(back.affine, labels.affine, atol=1e-12)
    assert len(node_summary(scene)) == len(before) + 2


def test_segmentation_node_reused_and_segments_replaced(scene, ctx):
    affine = affine_of("diagonal")
    node = mrml.labelmap_to_segmentation(ctx, Volume(labelmap(), affine))
    other = node.GetSegmentation().AddEmptySegment("kidney", "Kidney", (0.2, 0.3, 0.9))
    second = labelmap(tumour=False)
    same = mrml.labelmap_to_segmentation(ctx, Volume(second, affine), segmentation_node=node)
    assert same is node
    assert node.GetSegmentation().GetSegment(other) is not None  # other segments are kept
    back = mrml.segmentation_to_labels(scene, node)
    assert np.array_equal(back.array, second)  # tumour voxels from the first run are gone


def test_empty_labelmap_gives_empty_segments(scene, ctx):
    node = mrml.labelmap_to_segmentation(ctx, Volume(np.zeros((10, 12, 8), np.uint8), affine_of("oblique")))
    check_segments(node)
    assert not mrml.segmentation_to_labels(scene, node).array.any()


@pytest.mark.parametrize("array, message", [
    (np.zeros((10, 10), np.uint8), "3D"),
    (np.full((4, 4, 4), 3, np.uint8), r"values \[3\]"),
    (np.zeros((4, 4, 4), np.float32), "integer labels"),
])
def test_bad_labels_refused_scene_unchanged(scene, ctx, array, message):
    before = node_summary(scene)
    with pytest.raises(LiverSegError, match=message):
        mrml.labelmap_to_segmentation(ctx, Volume(array, np.eye(4)))
    assert node_summary(scene) == before


def test_labels_off_the_reference_grid_refused(scene, ctx):
    lab = labelmap()
    ref = mrml.add_labelmap_node(scene, Volume(np.zeros_like(lab), affine_of("diagonal")), "reference")
    before = node_summary(scene)
    with pytest.raises(LiverSegError, match="not on the voxel grid"):
        mrml.labelmap_to_segmentation(ctx, Volume(lab, affine_of("oblique")), reference_volume_node=ref)
    assert node_summary(scene) == before


@pytest.mark.parametrize("kind", ["diagonal", "lps_flipped", "oblique", "permuted"])
def test_save_segmentation_round_trip(tmp_path, scene, kind):
    lab = labelmap()
    labels = Volume(lab, affine_of(kind))
    path = mrml.save_segmentation(labels, tmp_path / "out.seg.nrrd")
    assert path == tmp_path / "out.seg.nrrd" and path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.seg.nrrd"]  # no temp file left
    header = path.read_bytes()[:20000].split(b"\n\n")[0].decode()
    assert "space: left-posterior-superior" in header
    assert "Segment0_Name:=Liver\n" in header and "Segment1_Name:=Liver tumor\n" in header
    assert "Segment0_LabelValue:=1" in header and "Segment1_LabelValue:=2" in header  # one layer: a plain 0/1/2 NRRD

    # as Slicer loads it: a segmentation node with the same segments
    before = len(node_summary(scene))
    node = mrml.load_segmentation(scene, path)
    check_segments(node)
    matrix, dims = mrml.reference_geometry(node)
    assert dims == lab.shape
    np.testing.assert_allclose(matrix, labels.affine, atol=1e-9)
    back = mrml.segmentation_to_labels(scene, node)
    assert np.array_equal(back.array, lab)
    np.testing.assert_allclose(back.affine, labels.affine, atol=1e-9)
    assert len(node_summary(scene)) == before + 2  # node + display node; no storage or temp nodes left

    # and through the file-only helper
    again = mrml.read_segmentation_labels(path)
    assert np.array_equal(again.array, lab)


def test_save_segmentation_matches_independent_reader(tmp_path):
    """The .seg.nrrd voxels and LPS geometry as SimpleITK reads them, not through our own code."""
    import SimpleITK as sitk

    lab = labelmap()
    affine = affine_of("oblique")
    path = mrml.save_segmentation(Volume(lab, affine), tmp_path / "x.seg.nrrd")
    image = sitk.ReadImage(str(path))
    assert np.array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), lab)
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3]
    direction = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    np.testing.assert_allclose(direction, lps, atol=1e-9)
    np.testing.assert_allclose(image.GetOrigin(), [-affine[0, 3], -affine[1, 3], affine[2, 3]], atol=1e-9)


def test_save_segmentation_failure_leaves_no_file(tmp_path, monkeypatch):
    path = tmp_path / "out.seg.nrrd"

    def broken(scene, node, temp):
        temp.write_bytes(b"NRRD0004\npartial")
        raise LiverSegError("disk full")

    monkeypatch.setattr(mrml, "_write_segmentation_file", broken)
    with pytest.raises(LiverSegError, match="disk full"):
        mrml.save_segmentation(Volume(labelmap(), np.eye(4)), path)
    assert list(tmp_path.iterdir()) == []

    path.write_bytes(b"previous result")  # an existing file is not clobbered by a failed write
    with pytest.raises(LiverSegError):
        mrml.save_segmentation(Volume(labelmap(), np.eye(4)), path)
    assert path.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.seg.nrrd"]


def test_save_segmentation_write_returns_false(tmp_path, monkeypatch):
    """Slicer's writer itself failing (WriteData returns False) is reported, and no file is left."""
    import vtk

    original = mrml._write_segmentation_file

    def write_into_missing_folder(scene, node, temp):
        original(scene, node, temp.parent / "missing" / temp.name)

    monkeypatch.setattr(mrml, "_write_segmentation_file", write_into_missing_folder)
    vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_OFF)
    try:
        with pytest.raises(LiverSegError, match="could not write"):
            mrml.save_segmentation(Volume(labelmap(), np.eye(4)), tmp_path / "out.seg.nrrd")
    finally:
        vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_ERROR)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name, message", [("out.nii.gz", "must end in .seg.nrrd"),
                                           ("missing/out.seg.nrrd", "does not exist")])
def test_save_segmentation_bad_path(tmp_path, name, message):
    with pytest.raises(LiverSegError, match=message):
        mrml.save_segmentation(Volume(labelmap(), np.eye(4)), tmp_path / name)
    assert list(tmp_path.iterdir()) == []


def test_volume_from_node_transposes(scene, ctx, tmp_path):
    import nibabel as nib

    from LiverSegLib.phantom import make_phantom

    ct, _ = make_phantom(shape=(48, 40, 24), spacing=(6.0, 7.0, 10.0), seed=0, n_tumours=1)
    nib.save(nib.Nifti1Image(ct.array, ct.affine), str(tmp_path / "ct.nii.gz"))  # sform code 2: Slicer agrees
    node = ctx.volumes.AddArchetypeVolume(str(tmp_path / "ct.nii.gz"), "CT")
    assert node is not None
    vol = mrml.volume_from_node(node)
    assert vol.array.shape == ct.array.shape
    assert np.array_equal(vol.array, ct.array)
    np.testing.assert_allclose(vol.affine, ct.affine, atol=1e-5)
    assert os.path.exists(tmp_path / "ct.nii.gz")
