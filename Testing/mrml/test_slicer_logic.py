"""LiverSegLogic (the LiverSeg module's Qt-free logic) on a real MRML scene from slicer-core.

The scenarios live in ``LiverSeg/Testing/Python/liverseg_scenarios.py`` and are run by the module's
self-test in Slicer too.
"""

from __future__ import annotations

import numpy as np
import pytest

import liverseg_scenarios as scenarios
from LiverSegLib import mrml, slicer_logic
from LiverSegLib.errors import CancelledError, LiverSegError
from LiverSegLib.segmenters import create_segmenter


def test_segment_phantom(ctx, scene, tmp_path):
    info = scenarios.scenario_segment_phantom(ctx, tmp_path)
    assert info["points"]["Liver"] > 50 and info["points"]["Liver tumor"] > 50
    assert info["liver_ml"] > 100


def test_segment_phantom_oblique_lps(ctx, scene, tmp_path):
    """An LPS-flipped, rotated grid: the segmentation still sits exactly on the CT's grid."""
    c, s = np.cos(0.25), np.sin(0.25)
    affine = np.eye(4)
    affine[:3, :3] = np.array([[-c, s, 0], [-s, -c, 0], [0, 0, 1]]) @ np.diag([5.0, 5.0, 8.0])
    affine[:3, 3] = [150.0, 160.0, -120.0]
    node, ct, labels = scenarios.load_phantom(ctx, tmp_path, affine=affine)
    np.testing.assert_allclose(mrml.ijk_to_ras(node), affine, atol=1e-5)
    result = slicer_logic.LiverSegLogic(ctx).run(node, scenarios.OracleSegmenter(labels.array))
    scenarios.check_segmentation(ctx, result, node, expected=labels.array)


def test_segment_em(ctx, scene, tmp_path):
    try:
        create_segmenter("em")
    except LiverSegError as exc:
        pytest.skip(f"EM segmenter not available: {exc}")
    info = scenarios.scenario_segment_em(ctx, tmp_path)
    assert info["dice_liver"] > 0.6


def test_seg_nrrd_and_mrb(ctx, scene, tmp_path):
    info = scenarios.scenario_seg_nrrd_and_mrb(ctx, tmp_path)
    assert info["seg_nrrd"].is_file() and info["mrb"].is_file()


def test_existing_segmentation(ctx, scene, tmp_path):
    scenarios.scenario_existing_segmentation(ctx, tmp_path)


def test_cancel_leaves_scene_unchanged(ctx, scene, tmp_path):
    scenarios.scenario_cancel(ctx, tmp_path)


def test_bad_inputs(ctx, scene, tmp_path):
    messages = scenarios.scenario_bad_inputs(ctx, tmp_path)
    assert set(messages) == set(scenarios.EXPECTED_BAD_INPUT)


def test_errors_leave_scene_unchanged(ctx, scene, tmp_path):
    scenarios.scenario_errors_leave_scene(ctx, tmp_path)


def test_poll_is_repeatable_and_progress_reported(ctx, scene, tmp_path):
    node, ct, labels = scenarios.load_phantom(ctx, tmp_path)
    logic = slicer_logic.LiverSegLogic(ctx)
    seen = []
    segmenter = scenarios.OracleSegmenter(labels.array, steps=5)
    original = segmenter._step
    segmenter._step = lambda f, m: (seen.append((f, m)), original(f, m))
    job = logic.start(node, segmenter)
    first = logic.wait(job, timeout=30)
    assert logic.poll(job) is first  # a second poll does not add a second segmentation
    assert ctx.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1
    assert [f for f, _ in seen] == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def test_cancelled_poll_repeats_cancelled(ctx, scene, tmp_path):
    node, ct, labels = scenarios.load_phantom(ctx, tmp_path)
    logic = slicer_logic.LiverSegLogic(ctx)
    job = logic.start(node, scenarios.BlockingSegmenter(labels.array))
    logic.cancel(job)
    job.thread.join(10)
    for _ in range(2):
        with pytest.raises(CancelledError):
            logic.poll(job)


def test_unknown_method_and_device(ctx, scene, tmp_path):
    node, ct, labels = scenarios.load_phantom(ctx, tmp_path)
    logic = slicer_logic.LiverSegLogic(ctx)
    with pytest.raises(LiverSegError, match="unknown device"):
        logic.start(node, "em", device="tpu")
    with pytest.raises(LiverSegError, match="unknown method 'nope'"):
        logic.run(node, "nope")
    assert ctx.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 0


def test_table_and_cli_report_the_same_liver_volume(ctx, scene, tmp_path, monkeypatch, capsys):
    """One labelmap with a tumour inside the liver: the Slicer table, the CLI's line and metrics give the
    same liver volume, its tumour included (the table used to count label 1 only)."""
    from LiverSegLib import cli, segmenters
    from LiverSegLib.volumetry import liver_volumes

    node, ct, labels = scenarios.load_phantom(ctx, tmp_path)
    tumour_ml = np.count_nonzero(labels.array == 2) * ct.voxel_ml
    assert tumour_ml > 2  # larger than the CLI's rounding to whole ml
    result = slicer_logic.LiverSegLogic(ctx).run(node, scenarios.OracleSegmenter(labels.array), show_3d=False)
    table_liver_ml = result.table_node.GetTable().GetValueByName(0, "Volume [ml]").ToDouble()
    assert table_liver_ml == pytest.approx(np.count_nonzero(labels.array) * ct.voxel_ml)
    assert liver_volumes(labels.array, ct.voxel_ml).liver_ml == pytest.approx(table_liver_ml)

    monkeypatch.setattr(segmenters, "create_segmenter", lambda *args, **kwargs: scenarios.OracleSegmenter(labels.array))
    ct_file = next(tmp_path.glob("*.nii.gz"))
    assert cli.main(["segment", str(ct_file), "-o", str(tmp_path / "labels.nii.gz"), "--method", "em"]) == 0
    assert f": liver {table_liver_ml:.0f} ml (" in capsys.readouterr().out


def test_available_segmenters_lists_only_creatable():
    names = [name for name, _ in slicer_logic.available_segmenters()]
    for name in names:
        create_segmenter(name)  # each listed one really can be created
    try:
        create_segmenter("em")
        assert "em" in names
    except LiverSegError:
        assert "em" not in names


@pytest.fixture(scope="module")
def rendering():
    ok, detail = slicer_logic.offscreen_rendering_available()
    if not ok:
        pytest.skip(f"offscreen OpenGL unavailable: {detail}")
    return detail


def test_render_png(ctx, scene, tmp_path, rendering):
    out = scenarios.scenario_render(ctx, tmp_path)
    assert out["backend"] in ("vtkEGLRenderWindow", "vtkOSOpenGLRenderWindow", "vtkXOpenGLRenderWindow")
    assert out["foreground_fraction"] > 0.05


def test_available_segmenters_show_their_measured_dice(tmp_path, monkeypatch):
    from LiverSegLib import checkpoint

    monkeypatch.setattr(checkpoint, "MODELS_DIR", tmp_path)
    (tmp_path / "measured.json").write_text('{"em": 0.913}')
    descriptions = dict(slicer_logic.available_segmenters())
    assert descriptions["em"].endswith("(liver Dice 0.91 on unseen real CT)")


def test_the_default_method_is_the_best_measured(tmp_path, monkeypatch):
    from LiverSegLib import checkpoint
    from LiverSegLib.segmenters import default_method

    monkeypatch.setattr(checkpoint, "MODELS_DIR", tmp_path)
    assert default_method() == "em", "nothing measured: EM, which needs no model"
    (tmp_path / "measured.json").write_text('{"em": 0.913, "unet": 0.931, "vae": 0.5, "retired": 0.99}')
    assert default_method() == "unet"
    (tmp_path / "measured.json").write_text('{"em": 0.913, "unet": 0.899}')
    assert default_method() == "em"
