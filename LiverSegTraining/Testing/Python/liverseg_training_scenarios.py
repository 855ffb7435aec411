"""Scenarios of the LiverSegTraining module's logic, shared by pytest (``Testing/mrml``) and by the
module's self-test in Slicer (``LiverSegTrainingTest``).

A fake trainer (written to the scratch folder) prints the same JSON lines as ``liverseg train``; a gate
file holds it after the first epoch so a scenario can see the table grow while the process runs.
"""

from __future__ import annotations

import math
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List

from LiverSegLib.errors import LiverSegError
from LiverSegLib.phantom import write_phantom_dataset
from LiverSegLib.training_monitor import TrainingMonitorLogic, python_executable

FAKE_TRAINER = textwrap.dedent(
    '''
    """Prints what `liverseg train` prints, for tests. Usage: fake_trainer.py DATASET RUN_DIR EPOCHS GATE [--resume] [--fail]"""
    import json, os, sys, time
    dataset, run_dir, epochs, gate = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    resume, fail = "--resume" in sys.argv, "--fail" in sys.argv
    assert os.path.isfile(os.path.join(dataset, "dataset.json"))
    print("loading 2 cases ...", flush=True)               # not JSON: ignored
    state = os.path.join(run_dir, "last_epoch.txt")
    first = int(open(state).read()) + 1 if resume and os.path.exists(state) else 1
    for epoch in range(first, epochs + 1):
        if fail and epoch == 2:
            print("CUDA out of memory (simulated)", file=sys.stderr, flush=True)
            sys.exit(3)
        dice_tumour = None if epoch == 1 else round(0.1 * epoch, 3)
        print(json.dumps({"event": "epoch", "epoch": epoch, "loss": round(1.0 / epoch, 4),
                          "dice_liver": round(1 - 0.5 / epoch, 4), "dice_tumour": dice_tumour, "seconds": 0.01}), flush=True)
        print("{not json", flush=True)                      # broken JSON: ignored
        open(state, "w").write(str(epoch))
        while epoch == first and not os.path.exists(gate):  # hold after the first epoch until the test says go
            time.sleep(0.01)
    for case in ("phantom_000", "phantom_001"):
        print(json.dumps({"event": "case", "case": case, "dice_liver": 0.9, "dice_tumour": None if case.endswith("0") else 0.5}), flush=True)
    open(os.path.join(run_dir, "best.pt"), "w").write("fake")
    print(json.dumps({"event": "done", "checkpoint": os.path.join(run_dir, "best.pt")}), flush=True)
    '''
)


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def fake_trainer(folder: Path, fail: bool = False):
    """(command builder that runs the fake trainer, gate file path)."""
    folder = Path(folder)
    script = folder / "fake_trainer.py"
    script.write_text(FAKE_TRAINER)
    gate = folder / "gate"

    def build(dataset, method, run_dir, epochs, resume=False, device="auto") -> List[str]:
        command = [python_executable(), "-u", str(script), dataset, run_dir, str(epochs), str(gate)]
        return command + (["--resume"] if resume else []) + (["--fail"] if fail else [])

    return build, gate


def small_dataset(folder: Path) -> Path:
    return write_phantom_dataset(Path(folder) / "dataset", n_cases=2, seed=0, shape=(32, 32, 16), spacing=(10.0, 10.0, 16.0))


def poll_until(logic, condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        logic.poll()
        check(time.monotonic() < deadline, "timed out waiting for the trainer")
        time.sleep(0.01)


def scenario_training_live(ctx, folder: Path, epochs: int = 4) -> Dict[str, Any]:
    """The epoch table grows row by row while the trainer runs; then the per-case table, the chart and
    the checkpoint."""
    folder = Path(folder)
    dataset = small_dataset(folder)
    build, gate = fake_trainer(folder)
    logic = TrainingMonitorLogic(ctx, command_builder=build)
    run = logic.start(dataset, "unet", folder / "run", epochs)
    table = logic.table_node
    rows_seen: List[int] = []
    import vtk

    table.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda *_: rows_seen.append(table.GetNumberOfRows()))
    poll_until(logic, lambda: table.GetNumberOfRows() >= 1)
    check(run.running, "the trainer should still be running (held after epoch 1)")
    check(table.GetNumberOfRows() == 1, f"{table.GetNumberOfRows()} rows while held after epoch 1")
    check(logic.case_table_node is None, "per-case table before the end")
    gate.write_text("go")
    logic.wait(timeout=60)
    check(run.finished and run.returncode == 0, f"exit status {run.returncode}: {run.stderr_tail}")
    rows = logic.epoch_rows()
    check([r["epoch"] for r in rows] == list(range(1, epochs + 1)), f"epochs {rows}")
    check(all(sorted(set(rows_seen))[i] == i + 1 for i in range(epochs)), f"rows not added one by one: {rows_seen}")
    for r in rows:
        e = int(r["epoch"])
        check(abs(r["loss"] - round(1.0 / e, 4)) < 1e-9 and abs(r["dice_liver"] - round(1 - 0.5 / e, 4)) < 1e-9, str(r))
        check(math.isnan(r["dice_tumour"]) if e == 1 else abs(r["dice_tumour"] - round(0.1 * e, 3)) < 1e-9, str(r))
    cases = logic.case_table_node
    check(cases is not None and cases.GetNumberOfRows() == 2, "per-case table")
    check(cases.GetTable().GetValue(0, 0).ToString() == "phantom_000", "case name")
    check(math.isnan(cases.GetTable().GetValue(0, 2).ToDouble()), "null Dice should be NaN")
    check(abs(cases.GetTable().GetValue(1, 2).ToDouble() - 0.5) < 1e-9, "case Dice tumour")
    chart = logic.chart_node
    series = [chart.GetNthPlotSeriesNode(i) for i in range(chart.GetNumberOfPlotSeriesNodes())]
    check([s.GetYColumnName() for s in series] == ["dice_liver", "dice_tumour"], "chart series")
    check(all(s.GetTableNode() is table and s.GetXColumnName() == "epoch" for s in series), "series not on the table")
    check(run.checkpoint == str(folder / "run" / "best.pt") and Path(run.checkpoint).is_file(), f"checkpoint {run.checkpoint}")
    return {"logic": logic, "rows": rows, "rows_seen": rows_seen}


def scenario_training_stop_resume(ctx, folder: Path, epochs: int = 3) -> None:
    """Stop terminates the trainer (no error); Resume adds --resume and continues the same table."""
    folder = Path(folder)
    dataset = small_dataset(folder)
    build, gate = fake_trainer(folder)
    logic = TrainingMonitorLogic(ctx, command_builder=build)
    run = logic.start(dataset, "unet", folder / "run", epochs)
    poll_until(logic, lambda: logic.table_node.GetNumberOfRows() >= 1)
    logic.stop()
    logic.wait(timeout=30)
    check(run.finished and run.stopped and not run.running, "not stopped")
    check(run.checkpoint is None, "a stopped run reported a checkpoint")
    table = logic.table_node
    gate.write_text("go")
    resumed = logic.resume()
    check("--resume" in resumed.command, f"resume command {resumed.command}")
    check(logic.table_node is table, "resume made a new table")
    logic.wait(timeout=60)
    check(resumed.returncode == 0, f"exit status {resumed.returncode}: {resumed.stderr_tail}")
    check([int(r["epoch"]) for r in logic.epoch_rows()] == list(range(1, epochs + 1)), f"{logic.epoch_rows()}")
    check(resumed.checkpoint is not None, "no checkpoint after resume")


def scenario_training_errors(ctx, folder: Path) -> Dict[str, str]:
    """Missing dataset.json and a crashing trainer: clear messages; a bad start adds nothing."""
    folder = Path(folder)
    build, gate = fake_trainer(folder, fail=True)
    logic = TrainingMonitorLogic(ctx, command_builder=build)
    empty = folder / "not_a_dataset"
    empty.mkdir()
    messages = {}
    nodes = ctx.scene.GetNumberOfNodes()
    for label, path in (("no dataset.json", empty), ("missing folder", folder / "nowhere"), ("none", "")):
        try:
            logic.start(path, "unet", folder / "run", 2)
            raise AssertionError(f"{label}: no error")
        except LiverSegError as exc:
            messages[label] = str(exc)
    check("has no dataset.json" in messages["no dataset.json"], messages["no dataset.json"])
    check("no such folder" in messages["missing folder"], messages["missing folder"])
    check("No dataset folder selected" in messages["none"], messages["none"])
    check(ctx.scene.GetNumberOfNodes() == nodes, "a refused start changed the scene")

    gate.write_text("go")
    logic.start(small_dataset(folder), "unet", folder / "run", 3)
    try:
        logic.wait(timeout=30)
        raise AssertionError("crash not reported")
    except LiverSegError as exc:
        messages["crash"] = str(exc)
    check("exit status 3" in messages["crash"] and "CUDA out of memory (simulated)" in messages["crash"], messages["crash"])
    check(logic.table_node.GetNumberOfRows() == 1, "rows before the crash are kept")
    return messages


def scenario_training_real_cli(ctx, folder: Path) -> Dict[str, Any]:
    """The real `liverseg train` (default command) for one epoch on a tiny phantom dataset."""
    folder = Path(folder)
    dataset = small_dataset(folder)
    logic = TrainingMonitorLogic(ctx)
    # small patches and one sample per volume keep one CPU epoch to a few seconds
    run = logic.start(dataset, "unet", folder / "run", 1, device="cpu",
                      extra_args=["--patch-size", "32", "32", "32", "--samples", "1", "--spacing", "10", "10", "16"])
    logic.wait(timeout=300)
    check(run.returncode == 0, f"exit status {run.returncode}: {run.stderr_tail[-5:]}")
    rows = logic.epoch_rows()
    check(len(rows) == 1 and rows[0]["epoch"] == 1, f"rows {rows}")
    check(run.checkpoint is not None and Path(run.checkpoint).is_file(), f"checkpoint {run.checkpoint}")
    check(logic.case_table_node is not None and logic.case_table_node.GetNumberOfRows() >= 1, "no per-case table")
    return {"rows": rows, "checkpoint": run.checkpoint, "command": run.command}
