"""`liverseg` end to end: outputs overlay the input exactly; bad input exits 2 with one line and writes nothing."""

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from LiverSegLib.cli import main
from LiverSegLib.phantom import make_phantom
from LiverSegLib.volume import load_volume, save_volume

from test_volume import oblique_lps_affine

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def phantom_ct(tmp_path_factory):
    """A contrast phantom on an oblique LPS grid, saved as NIfTI."""
    ct, labels = make_phantom((112, 112, 48), (3.0, 3.0, 5.0), seed=1, affine=oblique_lps_affine())
    folder = tmp_path_factory.mktemp("ct")
    return save_volume(ct, folder / "ct.nii.gz"), labels


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_segment_writes_a_labelmap_on_the_ct_grid(tmp_path, phantom_ct, suffix, capsys):
    ct_path, reference = phantom_ct
    out = tmp_path / f"liver{suffix}"
    assert main(["segment", str(ct_path), "-o", str(out), "--preview", str(tmp_path / "preview.png")]) == 0
    labels = load_volume(out)
    assert labels.array.shape == reference.array.shape
    assert set(np.unique(labels.array)) <= {0, 1, 2} and (labels.array == 1).sum() > 1000
    np.testing.assert_allclose(labels.affine, nib.load(str(ct_path)).affine, atol=1e-5)
    assert (tmp_path / "preview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "liver" in printed


def test_segment_writes_a_slicer_segmentation(tmp_path, phantom_ct):
    pytest.importorskip("slicer", reason="slicer-core is needed to write .seg.nrrd")
    from LiverSegLib.mrml import read_segmentation_labels

    ct_path, _ = phantom_ct
    out = tmp_path / "liver.seg.nrrd"
    labelmap = tmp_path / "liver.nii.gz"
    assert main(["segment", str(ct_path), "-o", str(out), "-o", str(labelmap)]) == 0
    from_seg = read_segmentation_labels(out)
    expected = load_volume(labelmap)
    np.testing.assert_array_equal(from_seg.array, expected.array)
    np.testing.assert_allclose(from_seg.affine, expected.affine, atol=1e-4)


def test_evaluate_writes_csv_markdown_and_plot(tmp_path, capsys):
    assert main(["phantom", "-o", str(tmp_path / "ds"), "--cases", "2"]) == 0
    assert main(["evaluate", str(tmp_path / "ds"), "--method", "em", "-o", str(tmp_path / "report")]) == 0
    csv = (tmp_path / "report" / "em.csv").read_text().splitlines()
    assert csv[0].startswith("case,dice_liver,dice_tumour") and len(csv) == 3
    assert "| phantom_000 |" in (tmp_path / "report" / "em.md").read_text()
    assert (tmp_path / "report" / "em.png").stat().st_size > 1000
    assert "mean liver Dice" in capsys.readouterr().out


def test_evaluate_with_synthetic_tumours_scores_lesions_and_leaves_the_data_alone(tmp_path, capsys):
    assert main(["phantom", "-o", str(tmp_path / "ds"), "--cases", "1"]) == 0
    before = {p: p.read_bytes() for p in (tmp_path / "ds").rglob("*.nii.gz")}
    args = ["evaluate", str(tmp_path / "ds"), "--method", "em", "--synthetic-tumours", "7"]
    assert main([*args, "-o", str(tmp_path / "a")]) == 0
    assert "with synthetic tumours (seed 7)" in capsys.readouterr().out
    assert main([*args, "-o", str(tmp_path / "b")]) == 0
    rows = (tmp_path / "a" / "em.csv").read_text().splitlines()
    header, row = rows[0].split(","), dict(zip(rows[0].split(","), rows[1].split(",")))
    again = dict(zip(header, (tmp_path / "b" / "em.csv").read_text().splitlines()[1].split(",")))
    assert "lesions_found" in header
    assert {k: v for k, v in row.items() if k != "seconds"} == {k: v for k, v in again.items() if k != "seconds"}
    # The phantom's own tumours plus the synthetic ones: more tumour than the phantom label holds.
    plain = main(["evaluate", str(tmp_path / "ds"), "--method", "em", "-o", str(tmp_path / "c")])
    assert plain == 0
    plain_row = dict(zip(*(line.split(",") for line in (tmp_path / "c" / "em.csv").read_text().splitlines())))
    assert float(row["reference_tumour_ml"]) > float(plain_row["reference_tumour_ml"])
    lesions = (tmp_path / "a" / "em_lesions.csv").read_text().splitlines()
    assert lesions[0] == "case,diameter_mm,found" and len(lesions) >= 2
    assert {p: p.read_bytes() for p in (tmp_path / "ds").rglob("*.nii.gz")} == before, "nothing written into the dataset"


def run_cli(*args):
    env = dict(os.environ, PYTHONPATH=str(REPOSITORY / "LiverSeg"))
    return subprocess.run([sys.executable, "-m", "LiverSegLib.cli", *map(str, args)], capture_output=True, text=True, env=env)


def bad_inputs(tmp_path, ct_path):
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(ct_path.read_bytes()[:5000])
    mr = tmp_path / "mr.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).integers(0, 900, (30, 30, 10)).astype(np.int16), np.eye(4)), str(mr))
    flat = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((30, 30), np.int16), np.eye(4)), str(flat))
    return {
        "missing file": ([tmp_path / "absent.nii.gz"], "no such file"),
        "corrupt file": ([corrupt], "truncated"),
        "not a CT": ([mr], "Hounsfield"),
        "2D image": ([flat], "2D image"),
        "unwritable output": ([ct_path, "--method", "em"], "does not exist"),
        "unknown output type": ([ct_path], "unknown output type"),
    }


def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, phantom_ct):
    ct_path, _ = phantom_ct
    out = tmp_path / "out"
    out.mkdir()
    existing = out / "liver.nii.gz"
    existing.write_bytes(b"earlier result")
    for problem, (args, message) in bad_inputs(tmp_path, ct_path).items():
        target = {"unwritable output": tmp_path / "no" / "such" / "dir.nii.gz",
                  "unknown output type": out / "liver.png"}.get(problem, existing)
        result = run_cli("segment", *args, "-o", target)
        assert result.returncode == 2, (problem, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.startswith("liverseg: error:")]
        assert len(lines) == 1 and message in lines[0], (problem, result.stderr)
    assert existing.read_bytes() == b"earlier result"
    assert sorted(p.name for p in out.iterdir()) == ["liver.nii.gz"]


def test_method_without_a_model_says_so_and_fails(tmp_path, phantom_ct, monkeypatch):
    ct_path, _ = phantom_ct
    result = run_cli("segment", ct_path, "-o", tmp_path / "l.nii.gz", "--method", "vae", "--model", tmp_path / "none.pt")
    assert result.returncode != 0
    assert "liverseg: error:" in result.stderr and not (tmp_path / "l.nii.gz").exists()


def test_segment_each_real_ct_aligned_with_its_input(tmp_path, shared_data):
    images = sorted((shared_data / "imagesTr").glob("*.nii.gz")) + sorted((shared_data / "imagesTs").glob("*.nii.gz"))
    for image in images:
        out = tmp_path / f"{image.name}"
        assert main(["segment", str(image), "-o", str(out)]) == 0
        written, source = nib.load(str(out)), nib.load(str(image))
        assert written.shape == source.shape
        np.testing.assert_allclose(written.affine, source.affine, atol=1e-5)
        assert (np.asarray(written.dataobj) == 1).sum() > 0, f"no liver found in {image.name}"
