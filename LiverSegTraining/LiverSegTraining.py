"""LiverSegTraining: train LiverSeg's deep segmenters from Slicer and watch loss and Dice per epoch live.

The panel starts ``liverseg train`` as a subprocess through the Qt-free
``LiverSegLib.training_monitor.TrainingMonitorLogic`` (tested headless on slicer-core) and polls it with a
QTimer; the epoch table and the Dice chart update in Slicer's table and plot views as the run goes. A
finished run's checkpoint becomes selectable in the LiverSeg module.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
from pathlib import Path

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

try:
    from slicer.i18n import tr as _
except ImportError:  # Slicer < 5.4

    def _(text: str) -> str:
        return text


MODULE_DIR = Path(__file__).resolve().parent
DEEP_METHODS = ("unet", "autoencoder", "vitautoenc", "vae")


def _liverseg():
    """The LiverSeg module file (dependency handling, settings keys); on sys.path inside Slicer."""
    import LiverSeg

    return LiverSeg


#
# Module
#


class LiverSegTraining(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LiverSeg Training")
        self.parent.categories = [_("Segmentation")]
        self.parent.dependencies = ["LiverSeg"]
        self.parent.contributors = ["LiverSeg developers"]
        self.parent.helpText = _(
            "Trains a LiverSeg deep segmenter on a dataset folder in the Medical Segmentation Decathlon layout "
            "(dataset.json, imagesTr/, labelsTr/). Loss and Dice per epoch fill a table and a chart while it "
            "runs; at the end a table gives the Dice of each validation case, and the model becomes selectable "
            "in the LiverSeg module. Stop ends the run; Resume continues it from its last checkpoint."
        )
        self.parent.acknowledgementText = _("Built on 3D Slicer, MONAI and PyTorch.")


#
# Widget
#


class LiverSegTrainingWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    POLL_MS = 500

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._updatingGUIFromParameterNode = False
        self._timer = None

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LiverSegTraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = LiverSegTrainingLogic()
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_MS)
        self._timer.connect("timeout()", self.onPoll)

        for method in DEEP_METHODS:
            self.ui.methodComboBox.addItem(method, method)
        for device, label in (("auto", _("auto (GPU if available)")), ("cpu", _("CPU")), ("cuda", _("GPU (CUDA)"))):
            self.ui.deviceComboBox.addItem(label, device)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.datasetPathLineEdit.connect("currentPathChanged(QString)", self.updateParameterNodeFromGUI)
        self.ui.runFolderPathLineEdit.connect("currentPathChanged(QString)", self.updateParameterNodeFromGUI)
        self.ui.methodComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.epochsSpinBox.connect("valueChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.startButton.connect("clicked(bool)", self.onStartButton)
        self.ui.stopButton.connect("clicked(bool)", self.onStopButton)
        self.ui.resumeButton.connect("clicked(bool)", self.onResumeButton)

        self.initializeParameterNode()
        self.setRunning(False)

    def cleanup(self):
        if self._timer is not None:
            self._timer.stop()
        if self.logic is not None:
            self.logic.stop()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event):
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    # parameter node

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode):
        if inputParameterNode:
            self.logic.setDefaultParameters(inputParameterNode)
        if self._parameterNode is not None:
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        if self._parameterNode is not None:
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)
        self.updateGUIFromParameterNode()

    def updateGUIFromParameterNode(self, caller=None, event=None):
        if self._parameterNode is None or self._updatingGUIFromParameterNode:
            return
        self._updatingGUIFromParameterNode = True
        try:
            p = self._parameterNode
            self.ui.datasetPathLineEdit.currentPath = p.GetParameter("DatasetFolder")
            self.ui.runFolderPathLineEdit.currentPath = p.GetParameter("RunFolder")
            for combo, key in ((self.ui.methodComboBox, "Method"), (self.ui.deviceComboBox, "Device")):
                index = combo.findData(p.GetParameter(key))
                if index >= 0:
                    combo.setCurrentIndex(index)
            self.ui.epochsSpinBox.value = int(p.GetParameter("Epochs") or 50)
        finally:
            self._updatingGUIFromParameterNode = False

    def updateParameterNodeFromGUI(self, caller=None, event=None):
        if self._parameterNode is None or self._updatingGUIFromParameterNode:
            return
        p = self._parameterNode
        wasModified = p.StartModify()
        p.SetParameter("DatasetFolder", self.ui.datasetPathLineEdit.currentPath)
        p.SetParameter("RunFolder", self.ui.runFolderPathLineEdit.currentPath)
        p.SetParameter("Method", self.ui.methodComboBox.currentData or "unet")
        p.SetParameter("Device", self.ui.deviceComboBox.currentData or "auto")
        p.SetParameter("Epochs", str(self.ui.epochsSpinBox.value))
        p.EndModify(wasModified)

    # run

    def onStartButton(self):
        self.startTraining(resume=False)

    def onResumeButton(self):
        self.startTraining(resume=True)

    def startTraining(self, resume: bool):
        if not _liverseg().ensureDependencies():
            self.setStatus(_("Training needs PyTorch and MONAI: not started."), error=True)
            return
        from LiverSegLib.errors import LiverSegError

        p = self._parameterNode
        try:
            if resume and self.logic.hasRun():
                run = self.logic.monitor.resume(int(p.GetParameter("Epochs")))
            else:
                run = self.logic.monitor.start(
                    p.GetParameter("DatasetFolder"),
                    method=p.GetParameter("Method"),
                    run_dir=p.GetParameter("RunFolder") or None,
                    epochs=int(p.GetParameter("Epochs")),
                    device=p.GetParameter("Device"),
                    resume=resume,
                )
        except LiverSegError as exc:
            self.setStatus(str(exc), error=True)
            return
        p.SetParameter("RunFolder", str(run.run_dir))
        self.ui.tableView.setMRMLTableNode(self.logic.monitor.table_node)
        self.logic.showProgress()
        self.setRunning(True)
        self.setStatus(_("Training {method} ({epochs} epochs)...").format(method=run.method, epochs=run.epochs))
        self._timer.start()

    def onStopButton(self):
        self.logic.monitor.stop()
        self.setStatus(_("Stopping..."))

    def onPoll(self):
        from LiverSegLib.errors import LiverSegError

        try:
            run = self.logic.monitor.poll()
        except LiverSegError as exc:
            self.finish(str(exc), error=True)
            return
        if run is None:
            self.finish("")
            return
        rows = self.logic.monitor.epoch_rows()
        if rows:
            last = rows[-1]
            self.ui.progressBar.value = int(100 * min(1.0, last["epoch"] / max(1, run.epochs)))
            self.setStatus(
                _("Epoch {epoch}: loss {loss:.4f}, Dice liver {liver:.3f}").format(
                    epoch=int(last["epoch"]), loss=last["loss"], liver=last["dice_liver"]
                )
            )
        if not run.finished:
            return
        if run.stopped:
            self.finish(_("Stopped after {n} epochs; Resume continues from the last checkpoint.").format(n=len(rows)))
        elif run.checkpoint:
            self.logic.registerModel(run.method, run.checkpoint)
            self.finish(
                _("Done: {checkpoint}. The model is now selectable in the LiverSeg module.").format(checkpoint=run.checkpoint)
            )
        else:
            self.finish(_("Training ended without a checkpoint."), error=True)

    def finish(self, message: str, error: bool = False):
        self._timer.stop()
        self.setRunning(False)
        if message:
            self.setStatus(message, error)

    def setRunning(self, running: bool):
        self.ui.startButton.enabled = not running
        self.ui.resumeButton.enabled = not running and (self.logic.hasRun() or bool(self._parameterNode and self._parameterNode.GetParameter("RunFolder")))
        self.ui.stopButton.enabled = running
        self.ui.progressBar.visible = running
        self.ui.settingsCollapsibleButton.enabled = not running

    def setStatus(self, message: str, error: bool = False):
        self.ui.statusLabel.text = message
        self.ui.statusLabel.setStyleSheet("color: #c03030" if error else "")
        (logging.error if error else logging.info)(f"LiverSegTraining: {message}")


#
# Logic
#


class LiverSegTrainingLogic(ScriptedLoadableModuleLogic):
    """Slicer-side logic around ``LiverSegLib.training_monitor.TrainingMonitorLogic`` on Slicer's scene."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._monitor = None

    @property
    def monitor(self):
        if self._monitor is None:
            from LiverSegLib.mrml import context_from_slicer_app
            from LiverSegLib.training_monitor import TrainingMonitorLogic

            self._monitor = TrainingMonitorLogic(context_from_slicer_app())
        return self._monitor

    def setDefaultParameters(self, parameterNode):
        for key, value in (("Method", "unet"), ("Device", "auto"), ("Epochs", "50")):
            if not parameterNode.GetParameter(key):
                parameterNode.SetParameter(key, value)

    def stop(self):
        if self._monitor is not None:
            self._monitor.stop()

    def hasRun(self) -> bool:
        """A run was started in this session (without importing LiverSegLib)."""
        return self._monitor is not None and self._monitor.run is not None

    def showProgress(self):
        """Show the epoch table and the Dice chart in the view layout."""
        monitor = self.monitor
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            layout = getattr(slicer.vtkMRMLLayoutNode, "SlicerLayoutFourUpPlotTableView", None)
            if layout is not None:
                layoutManager.setLayout(layout)
        appLogic = slicer.app.applicationLogic()
        appLogic.GetSelectionNode().SetActiveTableID(monitor.table_node.GetID())
        appLogic.PropagateTableSelection()
        slicer.modules.plots.logic().ShowChartInLayout(monitor.chart_node)

    def registerModel(self, method: str, checkpoint: str):
        """Make ``checkpoint`` the model the LiverSeg module uses for ``method``."""
        settings = qt.QSettings()
        settings.setValue(f"{_liverseg().SETTINGS_MODELS}/{method}", checkpoint)


#
# Test
#


class LiverSegTrainingTest(ScriptedLoadableModuleTest):
    """The training scenarios of ``Testing/mrml`` (pytest on slicer-core), here on Slicer's own scene."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for name in ("scenario_training_live", "scenario_training_stop_resume", "scenario_training_errors"):
            self.setUp()
            self.runScenario(name)

    def runScenario(self, name):
        self.delayDisplay(f"LiverSegTraining: {name}")
        self.assertTrue(_liverseg().ensureDependencies(install=False), "LiverSeg's Python packages are missing")
        scenarioDir = str(MODULE_DIR / "Testing" / "Python")
        if scenarioDir not in sys.path:
            sys.path.insert(0, scenarioDir)
        import liverseg_training_scenarios
        from LiverSegLib.mrml import context_from_slicer_app

        folder = Path(tempfile.mkdtemp(prefix="LiverSegTrainingTest_", dir=slicer.app.temporaryPath))
        try:
            getattr(liverseg_training_scenarios, name)(context_from_slicer_app(), folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.delayDisplay(f"{name} passed")

    def test_training_live(self):
        self.runScenario("scenario_training_live")

    def test_training_stop_resume(self):
        self.runScenario("scenario_training_stop_resume")

    def test_training_errors(self):
        self.runScenario("scenario_training_errors")
