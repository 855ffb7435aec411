"""LiverSeg: one-click segmentation of the liver and liver tumours in abdominal CT (3D Slicer module).

The panel (Widget) only moves values between the GUI and the parameter node and polls the running job;
all the work is in ``LiverSegLib.slicer_logic.LiverSegLogic``, which is free of Qt and tested headless
on slicer-core (``Testing/mrml/``). The segmentation itself runs in a child process (``liverseg
segment``): a crash or an out-of-memory there is a message in the status line, and Slicer and the scene
stay as they were. ``LiverSegLib`` is imported lazily so that the module loads even
before its Python dependencies are installed.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict

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
SETTINGS_MODELS = "LiverSeg/TrainedModels"
"""QSettings group: deep method name -> checkpoint path, written by the LiverSegTraining module."""


#
# Module
#


class LiverSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("LiverSeg")
        self.parent.categories = [_("Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LiverSeg developers"]
        self.parent.helpText = _(
            "Segments the liver and liver tumours in an abdominal CT with one click. Choose the CT, a segmenter "
            "and press <b>Segment liver</b>: the result is a segmentation with the segments <i>Liver</i> and "
            "<i>Liver tumor</i> (SNOMED CT coded), shown in 3D, and a table of their volumes in ml. "
            "The same segmenters run from the command line as <code>liverseg segment</code>."
        )
        self.parent.acknowledgementText = _(
            "Built on 3D Slicer, MONAI and PyTorch. The module layout follows Slicer's scripted module template "
            "and the SlicerMONAIAuto3DSeg extension."
        )


#
# Dependencies
#


def ensureDependencies(ask: bool = True, install: bool = True) -> bool:
    """True when every package of ``LiverSegLib.dependencies.REQUIREMENTS`` imports here (torch and MONAI
    included: every method needs them). With ``install``, what is missing is installed first, after asking
    when ``ask``: torch through the PyTorch extension's helper when that extension is installed (it picks
    the build for the machine's GPU), everything else with pip."""
    from LiverSegLib.dependencies import missing

    absent = missing()
    if not absent:
        return True
    return install and _install(absent, ask) and not missing()


def _install(packages: Dict[str, str], ask: bool) -> bool:
    """Install ``packages`` (import name -> requirement, in table order: torch before MONAI)."""
    names = ", ".join(packages.values())
    if ask and not slicer.util.confirmOkCancelDisplay(
        _("LiverSeg needs these Python packages for every method: {names}.\n"
          "Install them now? (This can take several minutes.)").format(names=names),
        windowTitle=_("LiverSeg dependencies"),
    ):
        return False
    try:
        with slicer.util.WaitCursor():
            for name, requirement in packages.items():
                if name == "torch" and _installTorchWithPyTorchUtils():
                    continue
                slicer.util.pip_install(requirement)
    except Exception as exc:  # noqa: BLE001 - pip and network errors of every kind
        slicer.util.errorDisplay(_("Installing {names} failed: {error}").format(names=names, error=exc))
        return False
    importlib.invalidate_caches()
    return True


def _installTorchWithPyTorchUtils() -> bool:
    """Install torch through SlicerPyTorch's helper (picks the right CUDA build); False if that extension is absent."""
    try:
        import PyTorchUtils
    except ImportError:
        return False
    torchLogic = PyTorchUtils.PyTorchUtilsLogic()
    if torchLogic.torchInstalled():
        return True
    return torchLogic.installTorch(askConfirmation=False) is not None


def trainedModels() -> dict:
    """Checkpoints registered by the LiverSegTraining module: {method: path} (missing files left out)."""
    settings = qt.QSettings()
    settings.beginGroup(SETTINGS_MODELS)
    models = {key: settings.value(key) for key in settings.childKeys()}
    settings.endGroup()
    return {method: path for method, path in models.items() if path and os.path.isfile(path)}


#
# Widget
#


class LiverSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    POLL_MS = 200

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._updatingGUIFromParameterNode = False
        self._job = None
        self._timer = None
        self._methodsListed = False

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LiverSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = LiverSegLogic()
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_MS)
        self._timer.connect("timeout()", self.onPoll)

        self.ui.deviceComboBox.clear()
        for device, label in (("auto", _("auto (GPU if available)")), ("cpu", _("CPU")), ("cuda", _("GPU (CUDA)"))):
            self.ui.deviceComboBox.addItem(label, device)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        self.ui.outputSegmentationSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateParameterNodeFromGUI)
        self.ui.methodComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.updateParameterNodeFromGUI)
        self.ui.show3DCheckBox.connect("toggled(bool)", self.updateParameterNodeFromGUI)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancelButton)
        self.ui.refreshMethodsButton.connect("clicked(bool)", self.onRefreshMethods)

        self.setRunning(False)
        self.initializeParameterNode()

    def cleanup(self):
        if self._job is not None:
            self.logic.cancel(self._job)
        if self._timer is not None:
            self._timer.stop()
        self.removeObservers()

    def enter(self):
        self.initializeParameterNode()
        if not self._methodsListed:
            qt.QTimer.singleShot(0, lambda: self.refreshMethods(install=False))

    def exit(self):
        self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event):
        if self._job is not None:
            self.onCancelButton()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.initializeParameterNode()

    # parameter node

    def initializeParameterNode(self):
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.GetNodeReference("InputVolume"):
            volume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            selection = slicer.app.applicationLogic().GetSelectionNode()
            shown = slicer.mrmlScene.GetNodeByID(selection.GetActiveVolumeID()) if selection.GetActiveVolumeID() else None
            volume = shown or volume
            if volume is not None and not volume.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.SetNodeReferenceID("InputVolume", volume.GetID())

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
            self.ui.inputVolumeSelector.setCurrentNode(p.GetNodeReference("InputVolume"))
            self.ui.outputSegmentationSelector.setCurrentNode(p.GetNodeReference("OutputSegmentation"))
            for combo, key in ((self.ui.methodComboBox, "Method"), (self.ui.deviceComboBox, "Device")):
                index = combo.findData(p.GetParameter(key))
                if index >= 0:
                    combo.setCurrentIndex(index)
            self.ui.show3DCheckBox.checked = p.GetParameter("Show3D") == "true"
            ready = p.GetNodeReference("InputVolume") is not None
            self.ui.applyButton.enabled = ready and self._job is None
            self.ui.applyButton.toolTip = _("Segment the liver and tumours") if ready else _("Select the CT first")
        finally:
            self._updatingGUIFromParameterNode = False

    def updateParameterNodeFromGUI(self, caller=None, event=None):
        if self._parameterNode is None or self._updatingGUIFromParameterNode:
            return
        p = self._parameterNode
        wasModified = p.StartModify()
        p.SetNodeReferenceID("InputVolume", self.ui.inputVolumeSelector.currentNodeID)
        p.SetNodeReferenceID("OutputSegmentation", self.ui.outputSegmentationSelector.currentNodeID)
        if self.ui.methodComboBox.currentIndex >= 0:
            p.SetParameter("Method", self.ui.methodComboBox.currentData)
        p.SetParameter("Device", self.ui.deviceComboBox.currentData or "auto")
        p.SetParameter("Show3D", "true" if self.ui.show3DCheckBox.checked else "false")
        p.EndModify(wasModified)

    # segmenters

    def onRefreshMethods(self):
        self.refreshMethods(install=True)

    def refreshMethods(self, install: bool) -> bool:
        """List the segmenters that can run here; with ``install``, offer to install missing packages first.
        While a package is missing the list stays empty and the status line names what is missing."""
        self._methodsListed = True
        if not ensureDependencies(install=install):
            from LiverSegLib.dependencies import missing

            self.setStatus(
                _("Every method needs these Python packages: {names}. Press Refresh or Segment liver to install them.").format(
                    names=", ".join(missing())
                ),
                error=True,
            )
            return False
        from LiverSegLib.slicer_logic import available_segmenters

        with slicer.util.WaitCursor():
            methods = available_segmenters(trainedModels(), self._parameterNode.GetParameter("Device") or "auto")
        self.ui.methodComboBox.blockSignals(True)
        self.ui.methodComboBox.clear()
        for name, description in methods:
            self.ui.methodComboBox.addItem(f"{name}: {description}", name)
            self.ui.methodComboBox.setItemData(self.ui.methodComboBox.count - 1, description, qt.Qt.ToolTipRole)
        self.ui.methodComboBox.blockSignals(False)
        if not methods:
            self.setStatus(_("No segmenter can be created here, not even EM (which needs no model)."), error=True)
        self.updateParameterNodeFromGUI()
        self.updateGUIFromParameterNode()
        return self.ui.methodComboBox.count > 0

    # run

    def onApplyButton(self):
        if self.ui.methodComboBox.count == 0 and not self.refreshMethods(install=True):
            return
        p = self._parameterNode
        method = p.GetParameter("Method")
        if not ensureDependencies():
            self.setStatus(_("Missing Python packages: not started."))
            return
        from LiverSegLib.errors import LiverSegError

        try:
            self._job = self.logic.start(
                p.GetNodeReference("InputVolume"),
                method=method,
                segmentationNode=p.GetNodeReference("OutputSegmentation"),
                modelPath=trainedModels().get(method),
                device=p.GetParameter("Device") or "auto",
                show3D=p.GetParameter("Show3D") == "true",
            )
        except LiverSegError as exc:
            self.setStatus(str(exc), error=True)
            return
        self.setRunning(True)
        self.setStatus(_("Segmenting..."))
        self._timer.start()

    def onCancelButton(self):
        if self._job is not None:
            self.logic.cancel(self._job)
            self.setStatus(_("Cancelling..."))

    def onPoll(self):
        from LiverSegLib.errors import CancelledError, LiverSegError

        job = self._job
        if job is None:
            self._timer.stop()
            return
        try:
            result = self.logic.poll(job)
        except CancelledError:
            self.finish(_("Cancelled; the scene was not changed."))
            return
        except LiverSegError as exc:
            self.finish(str(exc), error=True)
            return
        if result is None:
            self.ui.progressBar.value = int(round(100 * job.fraction))
            self.setStatus(job.message)
            return
        self._parameterNode.SetNodeReferenceID("OutputSegmentation", result.segmentation_node.GetID())
        self.logic.showResult(result)
        self.finish(
            _("{volumes} ({method}, {seconds:.0f} s)").format(
                volumes=result.volumes.summary(), method=result.method, seconds=result.seconds
            )
        )

    def finish(self, message: str, error: bool = False):
        self._timer.stop()
        self._job = None
        self.setRunning(False)
        self.setStatus(message, error)
        self.updateGUIFromParameterNode()

    def setRunning(self, running: bool):
        self.ui.progressBar.visible = running
        self.ui.progressBar.value = 0
        self.ui.cancelButton.enabled = running
        self.ui.applyButton.enabled = not running
        for widget in (self.ui.inputsCollapsibleButton, self.ui.outputsCollapsibleButton):
            widget.enabled = not running

    def setStatus(self, message: str, error: bool = False):
        self.ui.statusLabel.text = message
        self.ui.statusLabel.setStyleSheet("color: #c03030" if error else "")
        (logging.error if error else logging.info)(f"LiverSeg: {message}")


#
# Logic
#


class LiverSegLogic(ScriptedLoadableModuleLogic):
    """Slicer-side logic: wraps the Qt-free ``LiverSegLib.slicer_logic.LiverSegLogic`` with Slicer's own
    scene and module logics. Use it from Slicer's Python console too::

        logic = slicer.util.getModuleLogic("LiverSeg")
        result = logic.run(getNode("CT"), method="em")
    """

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        self._core = None

    @property
    def core(self):
        if self._core is None:
            from LiverSegLib.mrml import context_from_slicer_app
            from LiverSegLib.slicer_logic import LiverSegLogic as CoreLogic

            self._core = CoreLogic(context_from_slicer_app())
        return self._core

    def setDefaultParameters(self, parameterNode):
        from LiverSegLib.segmenters import default_method

        for key, value in (("Method", default_method()), ("Device", "auto"), ("Show3D", "true")):
            if not parameterNode.GetParameter(key):
                parameterNode.SetParameter(key, value)

    def start(self, volumeNode, method=None, segmentationNode=None, modelPath=None, device="auto", show3D=True):
        return self.core.start(volumeNode, method, segmentation_node=segmentationNode, model_path=modelPath,
                               device=device, show_3d=show3D)

    def poll(self, job):
        return self.core.poll(job)

    def cancel(self, job):
        self.core.cancel(job)

    def run(self, volumeNode, method=None, **kwargs):
        """Blocking run (scripts and tests); the GUI freezes meanwhile."""
        return self.core.run(volumeNode, method, **kwargs)

    def showResult(self, result):
        """Show the segmentation in 3D and the volumes table in the layout."""
        node = result.segmentation_node
        display = node.GetDisplayNode()
        if display is not None:
            display.SetVisibility(True)
        appLogic = slicer.app.applicationLogic()
        appLogic.GetSelectionNode().SetActiveTableID(result.table_node.GetID())
        appLogic.PropagateTableSelection()
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None and layoutManager.threeDViewCount > 0:
            layoutManager.threeDWidget(0).threeDView().resetFocalPoint()


#
# Test
#


class LiverSegTest(ScriptedLoadableModuleTest):
    """The scenarios of ``Testing/mrml`` (pytest on slicer-core), here on Slicer's own scene."""

    SCENARIOS = (
        "scenario_segment_phantom",
        "scenario_seg_nrrd_and_mrb",
        "scenario_existing_segmentation",
        "scenario_cancel",
        "scenario_bad_inputs",
        "scenario_errors_leave_scene",
        "scenario_render",
        "scenario_segment_em",
    )

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for name in self.SCENARIOS:
            self.setUp()
            self.runScenario(name)

    def runScenario(self, name):
        self.delayDisplay(f"LiverSeg: {name}")
        self.assertTrue(ensureDependencies(install=False), "LiverSeg's Python packages are not installed")
        scenarioDir = str(MODULE_DIR / "Testing" / "Python")
        if scenarioDir not in sys.path:
            sys.path.insert(0, scenarioDir)
        import liverseg_scenarios
        from LiverSegLib.mrml import context_from_slicer_app

        folder = Path(tempfile.mkdtemp(prefix="LiverSegTest_", dir=slicer.app.temporaryPath))
        try:
            getattr(liverseg_scenarios, name)(context_from_slicer_app(), folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.delayDisplay(f"{name} passed")

    def test_segment_phantom(self):
        self.runScenario("scenario_segment_phantom")

    def test_seg_nrrd_and_mrb(self):
        self.runScenario("scenario_seg_nrrd_and_mrb")

    def test_existing_segmentation(self):
        self.runScenario("scenario_existing_segmentation")

    def test_cancel(self):
        self.runScenario("scenario_cancel")

    def test_bad_inputs(self):
        self.runScenario("scenario_bad_inputs")

    def test_errors_leave_scene(self):
        self.runScenario("scenario_errors_leave_scene")

    def test_render(self):
        self.runScenario("scenario_render")

    def test_segment_em(self):
        self.runScenario("scenario_segment_em")
