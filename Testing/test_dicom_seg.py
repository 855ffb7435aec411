"""DICOM SEG out (issue 15): `liverseg segment DICOM_FOLDER -o liver.dcm` writes a BINARY DICOM Segmentation over
the source series, read back here with pydicom alone: the two SNOMED CT-coded segments, the algorithm, the
source series, study and frame of reference, and frames that name the slice at their position and reproduce
the labelmap there exactly. Without a DICOM series to refer to (a NIfTI input, a tilt-resampled grid) the
output is refused with one line and nothing is written.

The series is a phantom written with SimpleITK, one file per slice, with shuffled file names and instance
numbers so that only the positions order the slices; the segmenter returns the phantom's own labels."""

from pathlib import Path

import numpy as np
import pydicom
import pytest

from LiverSegLib import __version__, segmenters
from LiverSegLib.cli import main
from LiverSegLib.phantom import make_phantom
from LiverSegLib.volume import save_volume

SHAPE, SPACING = (48, 48, 24), (6.0, 6.0, 12.0)
START = np.array([10.0, -20.0, -100.0])  # IPP of the first slice, LPS mm
AXIAL = np.array([[1.0, 0, 0], [0, 1.0, 0]])
UID_ROOT = "1.2.826.0.1.3680043.2.1125.15."  # series 1, study 2, frame of reference 3
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
# (label, name, category code, type code, anatomic region code or None): SNOMED CT, as the .seg.nrrd has them.
EXPECTED_SEGMENTS = [(1, "Liver", "123037004", "10200004", None),
                     (2, "Liver tumor", "49755003", "108369006", "10200004")]


@pytest.fixture(scope="module")
def phantom():
    ct, labels = make_phantom(SHAPE, SPACING, seed=3)
    assert {1, 2} <= set(np.unique(labels.array))  # both segments have voxels to check
    return ct, labels


@pytest.fixture
def segmenter_runs(monkeypatch, phantom):
    """The segmenter returns the phantom's labels (on the series' grid: slices written in order, axial);
    counts how often one was created."""
    runs = []

    class Truth:
        def segment(self, ct, progress):
            return phantom[1].array if ct.array.shape == SHAPE else np.zeros(ct.array.shape, np.uint8)

    def create(*args, **kwargs):
        runs.append(args)
        return Truth()

    monkeypatch.setattr(segmenters, "create_segmenter", create)
    return runs


def write_series(ct, folder: Path, orientation: np.ndarray = AXIAL) -> None:
    """ct's axial slices as one CT file each, slice k at START + k * 12 mm along z."""
    import SimpleITK as sitk

    folder.mkdir()
    image = sitk.GetImageFromArray(ct.array.transpose(2, 1, 0))
    image.SetSpacing(SPACING)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # else each slice gets its own series and study
    order = np.random.default_rng(0).permutation(SHAPE[2])
    for k in range(SHAPE[2]):
        slice_ = image[:, :, k]
        position = START + [0, 0, SPACING[2] * k]
        for tag, value in (("0008|0016", "1.2.840.10008.5.1.4.1.1.2"), ("0008|0060", "CT"),
                           ("0020|000e", UID_ROOT + "1"), ("0020|000d", UID_ROOT + "2"), ("0020|0052", UID_ROOT + "3"),
                           ("0020|0013", str(order[k] + 1)), ("0018|0050", f"{SPACING[2]:g}"),
                           ("0020|0032", "\\".join(f"{x:g}" for x in position)),
                           ("0020|0037", "\\".join(f"{x:.6f}" for x in orientation.ravel())),
                           ("0028|1052", "0"), ("0028|1053", "1")):
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{order[k]:04d}.dcm"))
        writer.Execute(slice_)


@pytest.fixture
def series(tmp_path, phantom) -> Path:
    folder = tmp_path / "series"
    write_series(phantom[0], folder)
    return folder


def source_slices(folder: Path) -> dict:
    """SOPInstanceUID -> (slice index k, IPP) of every file, k from the position alone."""
    slices = {}
    for file in folder.iterdir():
        source = pydicom.dcmread(file, stop_before_pixels=True)
        position = np.array(source.ImagePositionPatient, dtype=float)
        slices[source.SOPInstanceUID] = (int(round((position[2] - START[2]) / SPACING[2])), position)
    return slices


def code(item) -> str:
    return f"{item.CodingSchemeDesignator}^{item.CodeValue}"


def test_dicom_seg_over_the_source_series(tmp_path, series, phantom, segmenter_runs, capsys):
    out = tmp_path / "liver.dcm"
    assert main(["segment", str(series), "-o", str(out), "--method", "em"]) == 0, capsys.readouterr().err
    seg = pydicom.dcmread(out)
    source = pydicom.dcmread(next(series.iterdir()), stop_before_pixels=True)

    assert (seg.SOPClassUID, seg.Modality, seg.SegmentationType) == (SEGMENTATION_STORAGE, "SEG", "BINARY")
    assert (seg.StudyInstanceUID, seg.FrameOfReferenceUID) == (source.StudyInstanceUID, source.FrameOfReferenceUID)
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    slices = source_slices(series)
    (referenced,) = seg.ReferencedSeriesSequence
    assert referenced.SeriesInstanceUID == source.SeriesInstanceUID
    assert sorted(item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence) == sorted(slices)

    for segment, (label, name, category, kind, region) in zip(seg.SegmentSequence, EXPECTED_SEGMENTS, strict=True):
        assert (segment.SegmentNumber, segment.SegmentLabel) == (label, name)
        assert code(segment.SegmentedPropertyCategoryCodeSequence[0]) == f"SCT^{category}"
        assert code(segment.SegmentedPropertyTypeCodeSequence[0]) == f"SCT^{kind}"
        regions = [code(item) for item in segment.get("AnatomicRegionSequence", [])]
        assert regions == ([f"SCT^{region}"] if region else [])
        assert (segment.SegmentAlgorithmType, segment.SegmentAlgorithmName) == ("AUTOMATIC", "LiverSeg")
        (algorithm,) = segment.SegmentationAlgorithmIdentificationSequence
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("LiverSeg", __version__)
        assert code(algorithm.AlgorithmFamilyCodeSequence[0]) == "DCM^123110"  # artificial intelligence
        assert "method=em" in algorithm.AlgorithmParameters

    # Rebuild each segment's mask from the frames: each frame on the source slice it names, at that slice's place.
    masks = np.zeros((len(EXPECTED_SEGMENTS), SHAPE[2], seg.Rows, seg.Columns), dtype=np.uint8)
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns)
    for pixels, frame in zip(frames, seg.PerFrameFunctionalGroupsSequence, strict=True):
        (derivation,) = frame.DerivationImageSequence
        (image,) = derivation.SourceImageSequence
        k, position = slices[image.ReferencedSOPInstanceUID]
        np.testing.assert_allclose(np.array(frame.PlanePositionSequence[0].ImagePositionPatient, float), position)
        number = frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber
        assert not masks[number - 1, k].any()  # one frame per segment and slice
        masks[number - 1, k] = pixels
    labels = phantom[1].array.transpose(2, 1, 0)  # (k, row j, column i), as the frames are
    for label, *_ in EXPECTED_SEGMENTS:
        assert np.array_equal(masks[label - 1], labels == label), label


def test_dicom_seg_of_a_nifti_is_refused_before_any_work(tmp_path, phantom, segmenter_runs, capsys):
    ct = save_volume(phantom[0], tmp_path / "ct.nii.gz")
    out = tmp_path / "liver.dcm"
    assert main(["segment", str(ct), "-o", str(out), "--method", "em"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"liverseg: error: {out}: ") and "not a DICOM series folder" in line
    assert "segment the DICOM series folder instead, or write .seg.nrrd" in line
    assert segmenter_runs == [] and sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def test_dicom_seg_of_a_tilt_resampled_series_is_refused(tmp_path, phantom, segmenter_runs, capsys):
    """A gantry tilt of atan(1/2): the slices are shifted in-plane onto a wider grid, whose frames would lie on
    no source slice's pixels."""
    tilt = np.arctan(0.5)
    folder = tmp_path / "tilted"
    write_series(phantom[0], folder, np.array([[1.0, 0, 0], [0, np.cos(tilt), np.sin(tilt)]]))
    out = tmp_path / "liver.dcm"
    assert main(["segment", str(folder), "-o", str(out), "--method", "em"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("liverseg: error:")]
    assert len(lines) == 1 and "gantry tilt" in lines[0] and "write .seg.nrrd or .nii.gz instead" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tilted"]
