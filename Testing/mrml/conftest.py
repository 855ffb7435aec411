"""Fixtures for the tests that run LiverSeg's Slicer logics on a real MRML scene (PyPI ``slicer-core``).

The folder is called ``mrml``, not ``slicer``: slicer-core's ``slicer`` package extends its ``__path__``
with every ``slicer`` folder on ``sys.path`` (pytest puts ``Testing/`` there) and would import these files
as ``slicer.<name>``.

One headless context (scene + module logics) per session -- Slicer allows one segmentations logic per
process -- and a clean scene for every test. The whole folder is skipped where ``slicer-core`` is not
installed (Python < 3.10).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Offscreen rendering: must be set before VTK creates its first render window.
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

ROOT = Path(__file__).resolve().parents[2]
for folder in (ROOT / "LiverSeg", ROOT / "LiverSeg" / "Testing" / "Python", ROOT / "LiverSegTraining" / "Testing" / "Python"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

slicer = pytest.importorskip("slicer", reason="slicer-core (Slicer's MRML as a wheel, Python >= 3.10) is not installed")
import vtk  # noqa: E402

from LiverSegLib import mrml  # noqa: E402

vtk.vtkLogger.SetStderrVerbosity(vtk.vtkLogger.VERBOSITY_ERROR)


@pytest.fixture(scope="session")
def ctx() -> mrml.SlicerContext:
    return mrml.headless_context()


@pytest.fixture
def scene(ctx):
    """The session scene, emptied after each test (singletons such as the colour tables stay)."""
    ctx.scene.Clear(0)
    # Slicer always has a subject hierarchy node; Clear removes it and the first export makes a new one,
    # which would look like a leaked node to the before/after counts.
    slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(ctx.scene)
    yield ctx.scene
    ctx.scene.Clear(0)
