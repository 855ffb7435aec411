"""`liverseg segment INPUT... -o OUT_DIR` over a cohort, and `liverseg collect` (issue 15).

The segmenter is a stub that returns each tiny phantom's own labels (or a variant the test chose), so the
tests exercise the cohort machinery, not a segmenter's seconds.
"""

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest

from LiverSegLib import segmenters
from LiverSegLib.cli import main
from LiverSegLib.phantom import make_phantom
from LiverSegLib.volume import save_volume
from LiverSegLib.volumetry import quality_flags
from test_output_protection import write_dicom_series

SHAPE, SPACING = (48, 48, 24), (8.0, 8.0, 12.0)


class StubSegmenter:
    """Returns the labels the test stored for a CT (looked up by its voxels), or raises the exception stored,
    counting the calls."""

    def __init__(self, answers):
        self.answers, self.calls = answers, 0

    def segment(self, ct, progress=None, cancel=None):
        self.calls += 1
        answer = self.answers[_key(ct.array)]
        if isinstance(answer, Exception):
            raise answer
        return answer


def _key(array: np.ndarray) -> bytes:
    return np.asarray(array, dtype=np.float32).tobytes()


@pytest.fixture
def cohort(tmp_path, monkeypatch):
    """Three phantom CTs (one whose stub answer is empty, one whose liver reaches the scan's edge) and a
    corrupt file; the stub in place of every method."""
    answers = {}
    inputs = tmp_path / "inputs"
    inputs.mkdir()

    def add(name: str, seed: int, variant=None) -> Path:
        ct, labels = make_phantom(shape=SHAPE, spacing=SPACING, seed=seed, n_tumours=1)
        path = save_volume(ct, inputs / name)
        answers[_key(ct.array)] = variant(labels.array) if variant else labels.array
        return path

    paths = [add("alpha.nii.gz", 1), add("beta.nrrd", 2, lambda labels: np.zeros_like(labels)),
             add("gamma.nii.gz", 3, lambda labels: np.where(np.arange(SHAPE[2]) == 0, 1, labels).astype(np.uint8))]
    corrupt = inputs / "delta.nii.gz"
    corrupt.write_bytes(b"not a NIfTI file")
    stub = StubSegmenter(answers)
    monkeypatch.setattr(segmenters, "create_segmenter", lambda *args, **kwargs: stub)
    return {"paths": [*paths, corrupt], "stub": stub, "add": add, "out": tmp_path / "out"}


def _segment(inputs, out, *extra) -> int:
    return main(["segment", *map(str, inputs), "-o", str(out), "--method", "em", *extra])


def _table(out: Path):
    with open(out / "volumes.csv", newline="") as handle:
        return {row["case_id"]: row for row in csv.DictReader(handle)}


def test_cohort_records_a_failed_case_goes_on_and_a_rerun_resumes(cohort, capsys):
    out, stub = cohort["out"], cohort["stub"]
    assert _segment(cohort["paths"], out) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == ["alpha", "beta", "delta", "gamma"]
    assert lines[4] == "4 case(s): 3 done, 0 skipped, 1 failed"
    table = _table(out)
    assert {case: row["status"] for case, row in table.items()} == {
        "alpha": "done", "beta": "done", "gamma": "done", "delta": "failed"}
    assert table["alpha"]["flags"] == "" and float(table["alpha"]["liver_ml"]) > 500
    assert int(table["alpha"]["tumour_count"]) == 1
    assert table["beta"]["flags"] == "no_liver" and float(table["beta"]["liver_ml"]) == 0
    assert "partial_liver" in table["gamma"]["flags"].split(";")
    assert "delta.nii.gz" in table["delta"]["error"] and table["delta"]["model_sha256"] == ""
    for case in ("alpha", "beta", "gamma"):
        assert sorted(path.name for path in (out / case).iterdir()) == [
            "labels.nii.gz", "liver.seg.nrrd", "preview.png", "result.json"]
    assert stub.calls == 3

    # The rerun skips the done cases and retries the failed one; a changed input is redone.
    assert _segment(cohort["paths"], out) == 1
    assert stub.calls == 3
    assert capsys.readouterr().out.splitlines()[-2] == "4 case(s): 0 done, 3 skipped, 1 failed"
    cohort["add"]("alpha.nii.gz", 7)
    assert _segment(cohort["paths"], out) == 1
    assert stub.calls == 4
    assert capsys.readouterr().out.splitlines()[0].startswith("alpha: liver")


def test_parts_are_disjoint_cover_every_case_and_collect_merges_them(cohort, capsys):
    out = cohort["out"]
    written = []
    for part in (0, 1):
        before = set(out.iterdir()) if out.exists() else set()
        _segment(cohort["paths"], out, "--num-parts", "2", "--part-id", str(part))
        written.append({path.name for path in set(out.iterdir()) - before})
    assert written == [{"alpha", "delta"}, {"beta", "gamma"}]
    assert not (out / "volumes.csv").exists()  # a part leaves the table to collect
    assert main(["collect", str(out)]) == 0
    assert {case: row["status"] for case, row in _table(out).items()} == {
        "alpha": "done", "beta": "done", "gamma": "done", "delta": "failed"}


def test_a_manifest_names_the_cases_and_another_model_redoes_them(cohort, tmp_path):
    manifest = tmp_path / "inputs" / "cohort.csv"
    manifest.write_text("id,path\npatient 1,alpha.nii.gz\npatient/2,beta.nrrd\n")
    model = tmp_path / "model.pt"
    for weights, calls in ((b"weights 1", 2), (b"weights 1", 2), (b"weights 2", 4)):
        model.write_bytes(weights)
        assert _segment([manifest], cohort["out"], "--method", "unet", "--model", str(model)) == 0
        assert cohort["stub"].calls == calls
    table = _table(cohort["out"])
    assert set(table) == {"patient_1", "patient_2"}
    assert table["patient_1"]["model_sha256"] == hashlib.sha256(b"weights 2").hexdigest()


def test_case_id_clash_is_refused_before_any_work(cohort, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    copy = other / "alpha.nii.gz"
    copy.write_bytes(cohort["paths"][0].read_bytes())
    assert _segment([cohort["paths"][0], copy, cohort["paths"][1]], cohort["out"]) == 2
    error = capsys.readouterr().err
    assert "'alpha'" in error and str(copy) in error and str(cohort["paths"][0]) in error
    assert not cohort["out"].exists() and cohort["stub"].calls == 0


def test_a_dicom_series_folder_is_a_case_named_by_its_folder(cohort, tmp_path):
    ct, labels = make_phantom(shape=SHAPE, spacing=SPACING, seed=4, n_tumours=0)
    ct = ct.with_array(np.round(ct.array).astype(np.int16))
    write_dicom_series(ct, tmp_path / "study 5", "1.2.826.0.1.3680043.2.1125.7.5", "portal venous")
    cohort["stub"].answers[_key(ct.array)] = labels.array
    assert _segment([tmp_path / "study 5", cohort["paths"][0]], cohort["out"]) == 0
    assert {case: row["status"] for case, row in _table(cohort["out"]).items()} == {"study_5": "done", "alpha": "done"}
    assert _segment([tmp_path / "study 5"], cohort["out"]) == 0 and cohort["stub"].calls == 2


def test_a_segmenter_crash_fails_its_case_in_one_line(cohort, capsys):
    cohort["stub"].answers = {key: RuntimeError("CUDA out of\nmemory") for key in cohort["stub"].answers}
    assert _segment(cohort["paths"][:1], cohort["out"]) == 1
    assert capsys.readouterr().out.splitlines()[0] == "alpha: failed: RuntimeError: CUDA out of memory"
    assert _table(cohort["out"])["alpha"]["error"] == "RuntimeError: CUDA out of memory"
    assert not (cohort["out"] / "alpha" / "labels.nii.gz").exists()


def test_quality_flags_name_an_implausible_volume():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[2:8, 2:8, 2:8] = 1  # 216 voxels, away from every edge
    assert quality_flags(labels, voxel_ml=10.0) == []  # 2160 mL
    assert quality_flags(labels, voxel_ml=1.0) == ["implausible_volume"]  # 216 mL
    assert quality_flags(labels, voxel_ml=30.0) == ["implausible_volume"]  # 6480 mL
