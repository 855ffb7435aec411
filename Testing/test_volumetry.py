"""The one volume definition (LiverSegLib.volumetry) against a labelmap counted by hand, and where it is read.
The Slicer table's side is in Testing/mrml/test_slicer_logic.py (it needs slicer-core)."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from LiverSegLib.volumetry import liver_volumes


@pytest.fixture
def labels() -> np.ndarray:
    """500 liver voxels, 4 of them tumour."""
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[:5] = 1
    labels[0, 0, :4] = 2
    return labels


def test_liver_includes_its_tumours(labels):
    volumes = liver_volumes(labels, voxel_ml=0.002)
    assert volumes.liver_ml == pytest.approx(500 * 0.002)
    assert volumes.parenchyma_ml == pytest.approx(496 * 0.002)
    assert volumes.tumour_ml == pytest.approx(4 * 0.002)
    assert [row[0] for row in volumes.rows()] == ["Liver (including tumours)", "Liver parenchyma", "Liver tumours"]
    assert [row[2] for row in volumes.rows()] == [500, 496, 4]
    assert volumes.summary() == "liver 1 ml (parenchyma 1 ml + tumour 0.0 ml)"


def test_other_label_values_are_no_liver(labels):
    labels[9, 9, 9] = 255  # a training label's "unsure" voxel
    assert liver_volumes(labels, 1.0).liver_voxels == 500


def test_evaluation_reports_volumetry_volumes(labels, tmp_path, monkeypatch):
    """The cohort CSV and report read volumetry: a prediction that calls the tumour liver keeps the
    reference's liver volume and has no tumour."""
    from LiverSegLib import evaluation
    from LiverSegLib.volume import Volume

    affine = np.diag([1.0, 1.0, 2.0, 1.0])  # 0.002 ml voxels
    ct = Volume(np.zeros(labels.shape, np.float32), affine)
    prediction = np.minimum(labels, 1)

    class Fake:
        def segment(self, ct, **kwargs):
            return prediction

    monkeypatch.setattr(evaluation, "load_msd_dataset", lambda dataset: [SimpleNamespace(name="case")])
    monkeypatch.setattr(evaluation, "read_case", lambda case: (ct, ct.with_array(labels)))
    monkeypatch.setattr(evaluation, "create_segmenter", lambda *args, **kwargs: Fake())
    result = evaluation.evaluate("data", "em", tmp_path).results[0]
    assert result.liver_ml == result.reference_liver_ml == pytest.approx(liver_volumes(labels, ct.voxel_ml).liver_ml)
    assert (result.tumour_ml, result.reference_tumour_ml) == pytest.approx((0.0, 4 * 0.002))


def test_volumetry_imports_neither_torch_nor_monai():
    """The Slicer side reads it before torch and MONAI may be installed."""
    code = "import sys, LiverSegLib.volumetry; print(sorted(m for m in ('torch', 'monai') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=str(Path(__file__).resolve().parents[1] / "LiverSeg"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
