"""Nothing lost, nothing invented: no output replaces the input or another output, `liverseg phantom` does not
overwrite a dataset unasked, and what the outputs say (preview colours and format, DICOM errors) is true."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from LiverSegLib import segmenters, volume
from LiverSegLib.cli import main
from LiverSegLib.errors import LiverSegError
from LiverSegLib.mrml import SEGMENTS
from LiverSegLib.phantom import make_phantom, write_phantom_dataset
from LiverSegLib.preview import save_preview
from LiverSegLib.volume import load_ct, save_volume

SHAPE, SPACING = (40, 40, 20), (8.0, 8.0, 12.0)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A small phantom CT and its labels (in memory)."""
    return make_phantom(SHAPE, SPACING, seed=4)


@pytest.fixture
def ct_path(tmp_path, phantom):
    """The phantom CT as NIfTI, alone in a folder of its own."""
    folder = tmp_path / "in"
    folder.mkdir()
    return save_volume(phantom[0], folder / "ct.nii.gz")


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if the command loads a model or the CT: refusals must come before any work."""
    def work(*args, **kwargs):
        raise AssertionError("work started before the outputs were checked")

    monkeypatch.setattr(segmenters, "create_segmenter", work)
    monkeypatch.setattr(volume, "load_ct", work)


def write_dicom_series(ct, folder: Path, uid: str, description: str, prefix: str = "slice") -> None:
    """Write a CT volume as one DICOM series (one file per axial slice) with SimpleITK."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(ct.array.transpose(2, 1, 0))
    image.SetSpacing(tuple(float(s) for s in ct.spacing))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()  # else the writer makes a new SeriesInstanceUID per slice
    for k in range(image.GetDepth()):
        slice_ = image[:, :, k]
        for tag, value in (("0020|000e", uid), ("0008|103e", description), ("0008|0060", "CT"),
                           ("0020|0013", str(k + 1)), ("0020|0032", f"0\\0\\{k * ct.spacing[2]:g}"),
                           ("0020|0037", "1\\0\\0\\0\\1\\0"), ("0028|1052", "0"), ("0028|1053", "1")):
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
        writer.Execute(slice_)


def snapshot(folder: Path) -> dict:
    return {path: path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def assert_refused(capsys, args, message: str) -> str:
    """The command exits 2 with one error line holding ``message``; returns that line."""
    assert main([str(a) for a in args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("liverseg: error:") and message in lines[0], lines
    return lines[0]


# --------------------------------------------------------------------------------------------- 1. output = input


def test_an_output_that_is_the_input_ct_is_refused_before_any_work(tmp_path, ct_path, capsys, no_work):
    folder = ct_path.parent
    (folder / "symlink.nii.gz").symlink_to(ct_path)
    os.link(ct_path, folder / "hardlink.nii.gz")
    (folder / "ct_preview.png").symlink_to(ct_path)
    before = snapshot(folder)
    cases = {
        "same path": ["-o", ct_path],
        "same path, other spelling": ["-o", folder / ".." / "in" / "ct.nii.gz"],
        "symlink": ["-o", folder / "symlink.nii.gz"],
        "hard link": ["-o", folder / "hardlink.nii.gz"],
        "second output": ["-o", tmp_path / "liver.nii.gz", "-o", ct_path],
        "preview": ["-o", tmp_path / "liver.nii.gz", "--preview", ct_path],
        "preview through a symlink": ["-o", tmp_path / "liver.nii.gz", "--preview", folder / "ct_preview.png"],
    }
    for problem, outputs in cases.items():
        assert main(["segment", str(ct_path), *map(str, outputs)]) == 2, problem
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "is the input CT" in lines[0] and "give another output path" in lines[0], (problem, lines)
    assert snapshot(folder) == before
    assert not (tmp_path / "liver.nii.gz").exists()


def test_an_output_inside_the_dicom_input_folder_is_refused(tmp_path, phantom, capsys, no_work):
    dicom = tmp_path / "series"
    write_dicom_series(phantom[0], dicom, "1.2.826.0.1.3680043.2.1125.7.1", "portal venous")
    before = snapshot(dicom)
    for outputs in (["-o", dicom / "liver.nii.gz"], ["-o", tmp_path / "liver.nii.gz", "--preview", dicom / "p.png"],
                    ["-o", dicom / ".." / "series" / "liver.seg.nrrd"], ["-o", dicom]):
        assert main(["segment", str(dicom), *map(str, outputs)]) == 2, outputs
        error = capsys.readouterr().err
        assert "DICOM input folder" in error or "is the input CT" in error, error
    assert snapshot(dicom) == before and not (tmp_path / "liver.nii.gz").exists()


def test_two_outputs_that_are_one_file_are_refused(tmp_path, ct_path, capsys, no_work):
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.nii.gz").write_bytes(b"earlier result")
    (out / "link.nii.gz").symlink_to(out / "earlier.nii.gz")
    for outputs in (["-o", out / "a.nii.gz", "-o", out / "a.nii.gz"],
                    ["-o", out / "a.nii.gz", "-o", out / "." / "a.nii.gz"],
                    ["-o", out / "earlier.nii.gz", "-o", out / "link.nii.gz"]):
        assert_refused(capsys, ["segment", ct_path, *outputs], "given twice as an output")
    assert sorted(p.name for p in out.iterdir()) == ["earlier.nii.gz", "link.nii.gz"]
    assert (out / "earlier.nii.gz").read_bytes() == b"earlier result"


# --------------------------------------------------------------------------------------------- 2. phantom datasets


def test_phantom_refuses_to_overwrite_a_dataset_unless_asked(tmp_path, capsys):
    dataset = write_phantom_dataset(tmp_path / "ds", n_cases=2, shape=SHAPE, spacing=SPACING)
    (dataset / "notes.txt").write_text("mine")
    before = snapshot(dataset)
    error = assert_refused(capsys, ["phantom", "-o", dataset, "--cases", "1"], f"{dataset / 'dataset.json'}: already exists")
    assert "another folder" in error and "--overwrite" in error
    (dataset / "dataset.json").unlink()
    del before[dataset / "dataset.json"]
    # Without dataset.json (an interrupted run, say) its cases are still someone's data.
    assert_refused(capsys, ["phantom", "-o", dataset, "--cases", "1"], "phantom_000.nii.gz: already exists")
    assert snapshot(dataset) == before

    assert main(["phantom", "-o", str(dataset), "--cases", "1", "--overwrite"]) == 0
    assert json.loads((dataset / "dataset.json").read_text())["numTraining"] == 1
    assert (dataset / "imagesTr" / "phantom_000.nii.gz").read_bytes() != before[dataset / "imagesTr" / "phantom_000.nii.gz"]
    assert (dataset / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------------------------- 3. what outputs say


def test_preview_outlines_and_legend_use_the_segmentation_colours(tmp_path, phantom):
    import matplotlib.image

    ct, labels = phantom
    assert (labels.array == 2).any(), "the phantom needs a tumour"
    path = tmp_path / "preview.png"
    save_preview(ct, labels.array, path, title="phantom")
    pixels = matplotlib.image.imread(str(path))[..., :3]

    def pixels_near(rgb) -> int:
        return int((np.abs(pixels - np.asarray(rgb)).max(axis=-1) < 0.06).sum())

    for segment in SEGMENTS:  # the colours the .seg.nrrd gives its segments (orange liver, yellow tumour)
        assert pixels_near(segment.color) >= 10, segment.name
    assert pixels_near((0.2, 0.9, 0.3)) == 0, "the old green tumour colour is back"


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG"), (".jpg", b"\xff\xd8\xff"), (".JPEG", b"\xff\xd8\xff"),
                                           (".tif", b"II*\x00"), (".pdf", b"%PDF"), (".svg", b"<?xml")])
def test_preview_is_written_in_the_format_its_suffix_names(tmp_path, phantom, suffix, magic):
    ct, labels = phantom
    path = tmp_path / f"preview{suffix}"
    save_preview(ct, labels.array, path)
    assert path.read_bytes().startswith(magic)
    assert [p.name for p in tmp_path.iterdir()] == [path.name], "no temporary file left behind"


def test_an_unknown_preview_type_is_refused_before_any_work(tmp_path, ct_path, capsys, no_work):
    for name in ("preview.gif", "preview.nii.gz", "preview"):
        error = assert_refused(capsys, ["segment", ct_path, "-o", tmp_path / "liver.nii.gz", "--preview", tmp_path / name],
                               "unknown preview type")
        assert ".png" in error and ".jpg" in error
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_two_dicom_series_in_one_folder_are_both_named(tmp_path, phantom):
    ct = phantom[0]
    single = tmp_path / "single"
    write_dicom_series(ct, single, "1.2.826.0.1.3680043.2.1125.7.2", "venous")
    assert load_ct(single).array.shape == ct.array.shape  # the helper writes a series LiverSeg reads

    both = tmp_path / "both"
    # GDCM gives a series without a SeriesInstanceUID the id "", which once printed as an empty name.
    write_dicom_series(ct, both, "", "arterial", prefix="a")
    write_dicom_series(ct, both, "1.2.826.0.1.3680043.2.1125.7.3", "portal venous", prefix="b")
    with pytest.raises(LiverSegError) as error:
        load_ct(both)
    message = str(error.value)
    assert "\n" not in message and "holds 2 DICOM series" in message and "one series per folder" in message
    assert 'SeriesInstanceUID (none) "arterial"' in message, message
    assert 'SeriesInstanceUID 1.2.826.0.1.3680043.2.1125.7.3 "portal venous"' in message, message
    assert message.count(f"({SHAPE[2]} files)") == 2, message
