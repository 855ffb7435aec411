"""The Slicer module files (LiverSeg.py, LiverSegTraining.py), their .ui, icons and CMakeLists, checked
without desktop Slicer: Python 3.9 syntax, widget names, the desktop-globals rule, resources listed, and
the Logic and self-test classes run with stand-ins for Qt and ScriptedLoadableModule."""

from __future__ import annotations

import ast
import importlib.util
import re
import sys
import types
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODULES = {"LiverSeg": ROOT / "LiverSeg", "LiverSegTraining": ROOT / "LiverSegTraining"}
SLICER_LIB = [ROOT / "LiverSeg" / "LiverSegLib" / name for name in ("mrml.py", "slicer_logic.py", "training_monitor.py")]
SCENARIO_FILES = {
    "LiverSeg": ROOT / "LiverSeg" / "Testing" / "Python" / "liverseg_scenarios.py",
    "LiverSegTraining": ROOT / "LiverSegTraining" / "Testing" / "Python" / "liverseg_training_scenarios.py",
}


def python_files():
    files = [folder / f"{name}.py" for name, folder in MODULES.items()] + SLICER_LIB + list(SCENARIO_FILES.values())
    return files + sorted(Path(__file__).parent.glob("*.py"))


@pytest.mark.parametrize("path", python_files(), ids=lambda p: p.name)
def test_python39_syntax(path):
    """Slicer 5.8 bundles Python 3.9: no match statements, no parenthesised context managers, etc."""
    source = path.read_text()
    ast.parse(source, filename=str(path), feature_version=(3, 9))
    tree = ast.parse(source)
    if "from __future__ import annotations" not in source:
        pytest.fail(f"{path.name}: add `from __future__ import annotations` (annotations like `X | None`)")
    # `X | Y` of types evaluated at run time (outside annotations) needs Python 3.10
    in_annotation = set()
    for node in ast.walk(tree):
        for part in (getattr(node, "annotation", None), getattr(node, "returns", None)):
            if part is not None:
                in_annotation |= {id(n) for n in ast.walk(part)}
    types_ = {"int", "float", "str", "bool", "bytes", "list", "dict", "tuple", "set", "Path", "Volume"}
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr) and id(node) not in in_annotation:
            for side in (node.left, node.right):
                if (isinstance(side, ast.Constant) and side.value is None) or (isinstance(side, ast.Name) and side.id in types_):
                    pytest.fail(f"{path.name}:{node.lineno}: type union `|` outside an annotation needs Python 3.10")


@pytest.mark.parametrize("path", SLICER_LIB, ids=lambda p: p.name)
def test_library_never_reads_desktop_globals(path):
    """Only mrml.context_from_slicer_app may touch slicer.mrmlScene / slicer.modules / slicer.app."""
    tree = ast.parse(path.read_text())
    allowed = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "context_from_slicer_app":
            allowed |= {id(n) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr in ("mrmlScene", "modules", "app")
                and isinstance(node.value, ast.Name) and node.value.id == "slicer" and id(node) not in allowed):
            pytest.fail(f"{path.name}:{node.lineno}: slicer.{node.attr} outside context_from_slicer_app")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            assert not any(n.split(".")[0] in ("qt", "ctk") for n in names), f"{path.name}:{node.lineno} imports Qt"


@pytest.mark.parametrize("name", list(MODULES))
def test_ui_has_every_widget_the_module_uses(name):
    folder = MODULES[name]
    ui = folder / "Resources" / "UI" / f"{name}.ui"
    widgets = {w.get("name") for w in ET.parse(ui).iter("widget")}
    used = set(re.findall(r"self\.ui\.(\w+)", (folder / f"{name}.py").read_text()))
    assert used, "no self.ui.<widget> found"
    assert used <= widgets, f"missing in {ui.name}: {sorted(used - widgets)}"
    root = ET.parse(ui).getroot()
    assert root.find("widget").get("class") == "qMRMLWidget" and root.find("widget").get("name") == name


@pytest.mark.parametrize("name", list(MODULES))
def test_icons_and_cmake(name):
    import vtk

    folder = MODULES[name]
    icon = folder / "Resources" / "Icons" / f"{name}.png"
    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(icon))
    reader.Update()
    assert reader.GetOutput().GetDimensions()[:2] == (128, 128)
    cmake = (folder / "CMakeLists.txt").read_text()
    assert f"set(MODULE_NAME {name})" in cmake
    assert re.search(r"slicerMacroBuildScriptedModule\((?s:.*?)WITH_GENERIC_TESTS", cmake)
    assert "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in cmake
    for listed in re.findall(r"^\s+((?:Resources|Testing)/\S+)$", cmake, re.M):
        assert (folder / listed.replace("${MODULE_NAME}", name)).is_file(), listed
    assert (folder / "Testing" / "CMakeLists.txt").is_file() and (folder / "Testing" / "Python" / "CMakeLists.txt").is_file()


def test_liverseg_cmake_globs_the_whole_library():
    cmake = (MODULES["LiverSeg"] / "CMakeLists.txt").read_text()
    assert "GLOB_RECURSE" in cmake and "${MODULE_NAME}Lib/*.py" in cmake


def test_liverseg_cmake_installs_every_shipped_model_file():
    """The module's CMake globs that install the models (MODULE_MODEL_FILES) match every file the library
    loads from its models folder, and the list is installed as a resource."""
    import fnmatch
    import json

    from LiverSegLib.checkpoint import MANIFEST, MEASURED, MODELS_DIR

    cmake = (MODULES["LiverSeg"] / "CMakeLists.txt").read_text()
    block = re.search(r"file\(GLOB MODULE_MODEL_FILES(?s:(.*?))\)", cmake).group(1)
    patterns = [p.replace("${CMAKE_CURRENT_SOURCE_DIR}/", "").replace("${MODULE_NAME}", "LiverSeg")
                for p in re.findall(r"\$\{CMAKE_CURRENT_SOURCE_DIR\}/\S+", block)]
    assert re.search(r"set\(MODULE_PYTHON_RESOURCES(?s:.*?)\$\{MODULE_MODEL_FILES\}", cmake)
    manifest = json.loads((MODELS_DIR / MANIFEST).read_text())
    needed = [MANIFEST, MEASURED] + [entry["file"] for entry in manifest.values()] + [f"{m}.md" for m in manifest]
    files = sorted(p.name for p in MODELS_DIR.iterdir())
    assert set(needed) <= set(files)
    for name in files:
        relative = (MODELS_DIR / name).relative_to(MODULES["LiverSeg"]).as_posix()
        assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns), f"{relative} is not installed by CMake"


@pytest.mark.parametrize("name", list(MODULES))
def test_every_scenario_runs_in_pytest_and_in_the_self_test(name):
    scenarios = set(re.findall(r"^def (scenario_\w+)\(", SCENARIO_FILES[name].read_text(), re.M))
    assert scenarios
    self_test = (MODULES[name] / f"{name}.py").read_text()
    pytests = "".join(p.read_text() for p in Path(__file__).parent.glob("test_slicer_*.py"))
    for scenario in scenarios:
        assert f"scenarios.{scenario}(" in pytests, f"{scenario} is not run by pytest"
        if scenario != "scenario_training_real_cli":  # needs torch in Slicer's Python; pytest runs it
            assert f'"{scenario}"' in self_test, f"{scenario} is not run by {name}Test"


# --------------------------------------------------------------------------------------------- stand-ins


class _Settings:
    """qt.QSettings as far as the modules use it (groups are prefixes, as in Qt)."""

    store: dict = {}

    def __init__(self):
        self._group = None

    def _key(self, key):
        return f"{self._group}/{key}" if self._group else key

    def setValue(self, key, value):
        self.store[self._key(key)] = value

    def value(self, key, default=None):
        return self.store.get(self._key(key), default)

    def beginGroup(self, group):
        self._group = group

    def endGroup(self):
        self._group = None

    def childKeys(self):
        prefix = self._group + "/"
        return [k[len(prefix):] for k in self.store if k.startswith(prefix)]


@pytest.fixture
def desktop(ctx, scene, monkeypatch, tmp_path):
    """Just enough of desktop Slicer for the module files' Logic and Test classes: qt.QSettings,
    ScriptedLoadableModule base classes, and slicer.app / slicer.modules / slicer.mrmlScene over the
    headless context."""
    import slicer

    qt = types.ModuleType("qt")
    qt.QSettings = _Settings
    slm = types.ModuleType("slicer.ScriptedLoadableModule")

    class Base:
        def __init__(self, parent=None):
            self.parent = parent

    class Logic(Base):
        def getParameterNode(self):
            return ctx.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")

    class Test(unittest.TestCase):
        def delayDisplay(self, message, msec=0):
            pass

    slm.ScriptedLoadableModule = slm.ScriptedLoadableModuleWidget = Base
    slm.ScriptedLoadableModuleLogic, slm.ScriptedLoadableModuleTest = Logic, Test
    monkeypatch.setattr(_Settings, "store", {})
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", slm)
    logic = types.SimpleNamespace
    monkeypatch.setattr(slicer, "mrmlScene", ctx.scene, raising=False)
    monkeypatch.setattr(slicer, "app", logic(applicationLogic=lambda: ctx.app, temporaryPath=str(tmp_path)), raising=False)
    monkeypatch.setattr(slicer, "modules", logic(**{
        name: logic(logic=lambda value=value: value) for name, value in (
            ("volumes", ctx.volumes), ("segmentations", ctx.segmentations), ("colors", ctx.colors),
            ("tables", ctx.tables), ("plots", ctx.plots))}), raising=False)
    loaded = {}
    for name, folder in MODULES.items():
        spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        loaded[name] = module
    return loaded


def test_liverseg_logic_wrapper(desktop, ctx, tmp_path):
    import liverseg_scenarios as scenarios

    module = desktop["LiverSeg"]
    logic = module.LiverSegLogic()
    parameters = logic.getParameterNode()
    logic.setDefaultParameters(parameters)
    assert (parameters.GetParameter("Method"), parameters.GetParameter("Device"), parameters.GetParameter("Show3D")) == (
        "em", "auto", "true")
    node, ct, labels = scenarios.load_phantom(ctx, tmp_path)
    job = logic.start(node, scenarios.OracleSegmenter(labels.array), segmentationNode=None, device="cpu", show3D=True)
    result = logic.core.wait(job, timeout=30)
    assert logic.poll(job) is result
    scenarios.check_segmentation(ctx, result, node, expected=labels.array)
    assert module.ensureDependencies(install=False)


def test_liverseg_self_test_class(desktop):
    """LiverSegTest runs a scenario through its own plumbing (scenario path, context, temp folder)."""
    test = desktop["LiverSeg"].LiverSegTest()
    test.runScenario("scenario_segment_phantom")
    assert set(test.SCENARIOS) == set(re.findall(r"^def (scenario_\w+)\(", SCENARIO_FILES["LiverSeg"].read_text(), re.M))


def test_training_self_test_class_and_model_registry(desktop):
    training = desktop["LiverSegTraining"]
    training.LiverSegTrainingTest().runScenario("scenario_training_errors")
    logic = training.LiverSegTrainingLogic()
    assert not logic.hasRun()
    checkpoint = Path(desktop["LiverSeg"].__file__)  # any existing file stands for a checkpoint
    logic.registerModel("unet", str(checkpoint))
    assert desktop["LiverSeg"].trainedModels() == {"unet": str(checkpoint)}


def test_library_imports_without_slicer_vtk_or_qt():
    """The Slicer-facing library files import slicer/vtk only inside functions: `liverseg` stays fast and
    they import where slicer-core is missing."""
    import subprocess

    code = ("import sys, LiverSegLib.mrml, LiverSegLib.slicer_logic, LiverSegLib.training_monitor\n"
            "print(sorted(m for m in ('slicer', 'vtk', 'qt', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "LiverSeg")})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
