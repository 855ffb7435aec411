"""Live training in Slicer, free of Qt: runs ``liverseg train`` as a subprocess and turns the JSON lines it
prints into a table node (one row per epoch), a plot chart of Dice per epoch and, at the end, a per-case
Dice table.

The training command prints one JSON object per line on stdout (other lines are ignored)::

    {"event": "epoch", "epoch": 1, "loss": 0.52, "dice_liver": 0.81, "dice_tumour": null, "seconds": 12.3}
    {"event": "case", "case": "phantom_001", "dice_liver": 0.9, "dice_tumour": 0.5}
    {"event": "done", "checkpoint": "RUN_DIR/best.pt"}

The process is a :class:`~LiverSegLib.jobs.Job`, the mechanism the segmentation panel uses too. Call
:meth:`TrainingMonitorLogic.poll` on the main thread (a QTimer in Slicer): it moves the events the job
read into MRML. The command is built by an injectable ``command_builder`` so tests can run a small fake
trainer.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from . import mrml
from .errors import LiverSegError
from .jobs import Event, Job, cli_command, parse_event, python_executable

EPOCH_COLUMNS = ("epoch", "loss", "dice_liver", "dice_tumour", "seconds")
CASE_COLUMNS = ("case", "dice_liver", "dice_tumour")


def default_command(
    dataset: str, method: str, run_dir: str, epochs: int, resume: bool = False, device: str = "auto"
) -> List[str]:
    """``python -m LiverSegLib.cli train DATASET --method M -o RUN_DIR --epochs N [--device D] [--resume]``."""
    command = cli_command("train", str(dataset), "--method", method, "-o", str(run_dir), "--epochs", str(int(epochs)))
    if device and device != "auto":
        command += ["--device", device]
    if resume:
        command.append("--resume")
    return command


CommandBuilder = Callable[..., Sequence[str]]


def check_dataset(folder: Union[str, os.PathLike]) -> Path:
    """The dataset folder, if it exists and holds ``dataset.json`` (MSD layout).

    Raises:
        LiverSegError: with the fix in the message.
    """
    if folder is None or not str(folder).strip():
        raise LiverSegError("No dataset folder selected: choose a folder with dataset.json, imagesTr/ and labelsTr/")
    path = Path(folder)
    if not path.is_dir():
        raise LiverSegError(f"{path}: no such folder; choose the dataset folder (with dataset.json, imagesTr/, labelsTr/)")
    if not (path / "dataset.json").is_file():
        raise LiverSegError(
            f"{path}: has no dataset.json; choose the folder of a Medical Segmentation Decathlon style dataset "
            "(dataset.json, imagesTr/, labelsTr/), e.g. one written by `liverseg phantom`"
        )
    return path


@dataclass
class TrainingRun:
    """A training subprocess and what it reported so far."""

    dataset: Path
    method: str
    run_dir: Path
    epochs: int
    command: List[str]
    device: str = "auto"
    extra_args: List[str] = field(default_factory=list)
    job: Optional[Job] = None
    epochs_seen: List[Dict[str, Any]] = field(default_factory=list)
    cases: List[Dict[str, Any]] = field(default_factory=list)
    checkpoint: Optional[str] = None
    returncode: Optional[int] = None
    started: float = field(default_factory=time.monotonic)

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    @property
    def finished(self) -> bool:
        """The process ended and every event it printed has been handled."""
        return self.returncode is not None

    @property
    def stopped(self) -> bool:
        """:meth:`TrainingMonitorLogic.stop` ended it."""
        return self.job is not None and self.job.cancelled

    @property
    def stderr_tail(self) -> List[str]:
        return self.job.stderr_tail if self.job is not None else []


class TrainingMonitorLogic:
    """Runs a training command and shows its progress in MRML tables and a plot chart.

    Args:
        ctx: scene and logics (:func:`mrml.headless_context` or :func:`mrml.context_from_slicer_app`).
        command_builder: (dataset, method, run_dir, epochs, resume, device) -> argv; default
            :func:`default_command`. Tests pass one that runs a fake trainer.
    """

    def __init__(self, ctx: mrml.SlicerContext, command_builder: CommandBuilder = default_command):
        self.ctx = ctx
        self.command_builder = command_builder
        self.run: Optional[TrainingRun] = None
        self.table_node = None
        self.case_table_node = None
        self.chart_node = None
        self.loss_chart_node = None

    # ----------------------------------------------------------------------------------------- control

    def start(
        self,
        dataset: Union[str, os.PathLike],
        method: str = "unet",
        run_dir: Optional[Union[str, os.PathLike]] = None,
        epochs: int = 10,
        device: str = "auto",
        resume: bool = False,
        extra_args: Sequence[str] = (),
    ) -> TrainingRun:
        """Start training; returns at once. A new start (not ``resume``) clears the tables.

        ``extra_args`` are appended to the command (e.g. ``["--patch-size", "64", "64", "64"]``); a
        resumed run repeats them.

        Raises:
            LiverSegError: missing dataset or dataset.json, epochs < 1, a run already going, or the
                command cannot be started. Nothing is added to the scene then.
        """
        if self.run is not None and self.run.running:
            raise LiverSegError("a training run is already going: stop it first")
        dataset = check_dataset(dataset)
        if int(epochs) < 1:
            raise LiverSegError(f"epochs must be at least 1, not {epochs}")
        run_dir = Path(run_dir) if run_dir else dataset.parent / f"liverseg_run_{method}"
        if resume and self.run is not None and run_dir == self.run.run_dir and not self.run.dataset.samefile(dataset):
            raise LiverSegError("resume continues the same dataset; start a new run for another dataset")
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LiverSegError(f"{run_dir}: cannot create the run folder ({exc.strerror}); choose another") from exc
        command = [str(part) for part in self.command_builder(str(dataset), method, str(run_dir), int(epochs), resume, device)]
        command += [str(arg) for arg in extra_args]
        run = TrainingRun(dataset=dataset, method=method, run_dir=run_dir, epochs=int(epochs), command=command,
                          device=device, extra_args=[str(arg) for arg in extra_args])
        run.job = Job(command, cwd=run_dir)
        keep_rows = resume and self.run is not None and self.table_node is not None
        self.run = run
        self._ensure_nodes(method, clear=not keep_rows)
        return run

    def resume(self, epochs: Optional[int] = None) -> TrainingRun:
        """Start again with ``--resume`` in the last run's folder; the epoch table keeps its rows."""
        if self.run is None:
            raise LiverSegError("nothing to resume: start a training run first")
        if self.run.running:
            raise LiverSegError("the training run is still going")
        last = self.run
        return self.start(last.dataset, last.method, last.run_dir, epochs or last.epochs,
                          device=last.device, resume=True, extra_args=last.extra_args)

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate the training process and what it started (killed if not ended within ``timeout`` s:
        the trainer gets that long to finish writing its files)."""
        run = self.run
        if run is None or not run.running:
            return
        run.job.cancel(grace=timeout)

    # ----------------------------------------------------------------------------------------- progress

    def poll(self) -> Optional[TrainingRun]:
        """Main thread: add what the trainer printed since the last call to the tables.

        Returns:
            the run (check ``run.finished``), or None if none was started.

        Raises:
            LiverSegError: the process ended with an error (not after :meth:`stop`); the message has the
                end of its stderr.
        """
        run = self.run
        if run is None or run.finished:
            return run
        for event in run.job.poll():
            self._handle_event(event)
        outcome = run.job.outcome
        if outcome is not None:
            run.returncode = outcome.returncode
            if not outcome.ok and not outcome.cancelled:
                tail = " | ".join(outcome.stderr_tail[-5:]) or "no error output"
                raise LiverSegError(f"training failed ({outcome.status}): {tail}")
        return run

    def wait(self, timeout: float = 600.0, interval: float = 0.05) -> TrainingRun:
        """Block, polling, until the run ends."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.poll()
            if run is None or run.finished:
                return run
            if time.monotonic() > deadline:
                self.stop()
                raise LiverSegError(f"training did not finish within {timeout:g} s; stopped")
            time.sleep(interval)

    def _handle_event(self, record: Event) -> None:
        event = record["event"]
        if event == "epoch":
            self._add_epoch(record)
        elif event == "case":
            self._add_case(record)
        elif event == "done":
            self.run.checkpoint = record.get("checkpoint")

    # ----------------------------------------------------------------------------------------- MRML

    def _ensure_nodes(self, method: str, clear: bool) -> None:
        scene = self.ctx.scene
        if self.table_node is None or self.table_node.GetScene() is not scene:
            self.table_node = scene.AddNewNodeByClass("vtkMRMLTableNode", f"LiverSeg training {method}")
            self._add_columns(self.table_node, EPOCH_COLUMNS, {"epoch": "int", "case": "string"})
            self.table_node.SetUseColumnTitleAsColumnHeader(True)
            self.table_node.SetLocked(True)
            clear = False
        elif clear:
            self.table_node.GetTable().SetNumberOfRows(0)
            self.table_node.SetName(f"LiverSeg training {method}")
            self.table_node.Modified()
        if self.case_table_node is not None and self.case_table_node.GetScene() is scene:
            if clear:
                scene.RemoveNode(self.case_table_node)
                self.case_table_node = None
        if self.chart_node is None or self.chart_node.GetScene() is not scene:
            self.chart_node = self._chart("LiverSeg Dice per epoch", "Dice", (("dice_liver", "Dice liver", (0.87, 0.51, 0.40)),
                                                                          ("dice_tumour", "Dice tumour", (0.94, 0.86, 0.24))))
            self.chart_node.SetYAxisRange(0.0, 1.0)
            self.chart_node.SetYAxisRangeAuto(False)
        if self.loss_chart_node is None or self.loss_chart_node.GetScene() is not scene:
            self.loss_chart_node = self._chart("LiverSeg loss per epoch", "loss", (("loss", "loss", (0.3, 0.5, 0.9)),))

    def _chart(self, name: str, y_title: str, series: Sequence):
        import slicer

        scene = self.ctx.scene
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
        for column, title, rgb in series:
            node = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", title)
            node.SetAndObserveTableNodeID(self.table_node.GetID())
            node.SetXColumnName("epoch")
            node.SetYColumnName(column)
            node.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
            node.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
            node.SetColor(*rgb)
            chart.AddAndObservePlotSeriesNodeID(node.GetID())
        chart.SetTitle(name)
        chart.SetXAxisTitle("epoch")
        chart.SetYAxisTitle(y_title)
        return chart

    @staticmethod
    def _add_columns(table, names: Sequence[str], types: Dict[str, str]) -> None:
        import vtk

        for name in names:
            kind = types.get(name, "double")
            array = {"int": vtk.vtkIntArray, "string": vtk.vtkStringArray}.get(kind, vtk.vtkDoubleArray)()
            array.SetName(name)
            table.AddColumn(array)

    def _add_epoch(self, record: Dict[str, Any]) -> None:
        import vtk

        epoch = _as_int(record.get("epoch"))
        if epoch is None:
            return
        self.run.epochs_seen.append(record)
        table = self.table_node.GetTable()
        epochs = table.GetColumnByName("epoch")
        row = next((r for r in range(table.GetNumberOfRows()) if epochs.GetValue(r) == epoch), None)
        if row is None:  # a resumed run may repeat its last epoch: replace that row instead
            row = self.table_node.AddEmptyRow()
        for column, name in enumerate(EPOCH_COLUMNS):
            value = epoch if name == "epoch" else _as_float(record.get(name))
            table.SetValue(row, column, vtk.vtkVariant(value))
        table.Modified()
        self.table_node.Modified()

    def _add_case(self, record: Dict[str, Any]) -> None:
        import vtk

        if self.case_table_node is None or self.case_table_node.GetScene() is not self.ctx.scene:
            self.case_table_node = self.ctx.scene.AddNewNodeByClass("vtkMRMLTableNode", f"{self.table_node.GetName()} cases")
            self._add_columns(self.case_table_node, CASE_COLUMNS, {"case": "string"})
            self.case_table_node.SetUseColumnTitleAsColumnHeader(True)
            self.case_table_node.SetLocked(True)
        self.run.cases.append(record)
        row = self.case_table_node.AddEmptyRow()
        table = self.case_table_node.GetTable()
        table.SetValue(row, 0, vtk.vtkVariant(str(record.get("case", ""))))
        table.SetValue(row, 1, vtk.vtkVariant(_as_float(record.get("dice_liver"))))
        table.SetValue(row, 2, vtk.vtkVariant(_as_float(record.get("dice_tumour"))))
        table.Modified()
        self.case_table_node.Modified()

    def epoch_rows(self) -> List[Dict[str, float]]:
        """The epoch table as a list of dicts (NaN where the trainer reported null)."""
        if self.table_node is None:
            return []
        table = self.table_node.GetTable()
        return [
            {name: table.GetValue(row, column).ToDouble() for column, name in enumerate(EPOCH_COLUMNS)}
            for row in range(table.GetNumberOfRows())
        ]


def _as_float(value) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number


def _as_int(value) -> Optional[int]:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


__all__ = [
    "TrainingMonitorLogic",
    "TrainingRun",
    "default_command",
    "check_dataset",
    "parse_event",
    "python_executable",
    "EPOCH_COLUMNS",
    "CASE_COLUMNS",
]
