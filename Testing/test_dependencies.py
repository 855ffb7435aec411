"""The dependency contract: torch and MONAI are required for every method, stated once in
LiverSegLib/dependencies.py, equal to pyproject.toml, and enforced with one clear line where they are missing."""

import json
import os
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from LiverSegLib.dependencies import REQUIREMENTS, MissingDependenciesError, missing

REPOSITORY = Path(__file__).resolve().parents[1]
BLOCK_TORCH_AND_MONAI = """
import sys

class Blocked:
    '''An environment without torch and MONAI: importing them (or looking them up) fails as if absent.'''

    def find_spec(self, name, path=None, target=None):
        if name.partition('.')[0] in ('torch', 'monai'):
            raise ModuleNotFoundError(f'No module named {name!r}', name=name)
        return None

sys.meta_path.insert(0, Blocked())
"""


def without_torch(code: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY / "LiverSeg")}
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH_AND_MONAI + code, *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_table_is_pyproject_dependencies():
    """Same names, pins and markers in both places, so neither can drift."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python >= 3.11")
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]
    declared = {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}
    table = {canonicalize_name(r.name): r for r in map(Requirement, REQUIREMENTS.values())}
    assert sorted(table) == sorted(declared)
    for name, requirement in table.items():
        assert (requirement.specifier, str(requirement.marker)) == (declared[name].specifier, str(declared[name].marker)), name


def test_import_names_belong_to_their_distributions():
    """Each import name is a module of the distribution its requirement installs (sklearn <- scikit-learn)."""
    installed = packages_distributions()
    for module, requirement in REQUIREMENTS.items():
        name = canonicalize_name(Requirement(requirement).name)
        assert name in {canonicalize_name(d) for d in installed.get(module, [])}, (module, requirement)


def test_nothing_is_missing_here():
    assert missing() == {}


def test_cli_without_torch_says_what_is_missing_in_one_line(tmp_path):
    from LiverSegLib.volume import Volume, save_volume

    ct = tmp_path / "ct.nii.gz"
    save_volume(Volume(np.zeros((8, 8, 8), np.int16), np.eye(4)), ct)
    out = tmp_path / "labels.nii.gz"
    result = without_torch("import runpy; runpy.run_module('LiverSegLib.cli', run_name='__main__', alter_sys=True)",
                           "segment", str(ct), "-o", str(out), "--method", "em")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "liverseg: error: missing Python packages: torch, monai (LiverSeg needs them for every method); "
        "install them with: pip install torch==2.13.0 monai==1.6.1"
    ]
    assert not out.exists()


def test_panel_check_without_torch_lists_torch_and_monai():
    """What the panel calls: the module file's ensureDependencies reads dependencies.missing(), and the
    method list refuses to come out empty without saying why."""
    result = without_torch(
        "import json\n"
        "from LiverSegLib import dependencies, slicer_logic\n"
        "try:\n"
        "    slicer_logic.available_segmenters()\n"
        "    raised = None\n"
        "except dependencies.MissingDependenciesError as error:\n"
        "    raised = error.missing\n"
        "print(json.dumps({'missing': dependencies.missing(), 'raised': raised}))\n"
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    expected = {"torch": REQUIREMENTS["torch"], "monai": REQUIREMENTS["monai"]}
    assert report == {"missing": expected, "raised": expected}


def test_error_names_each_package_and_quotes_shell_characters():
    error = MissingDependenciesError({"skimage": "scikit-image>=0.21", "torch": "torch==2.13.0"})
    assert str(error).endswith("pip install 'scikit-image>=0.21' torch==2.13.0")
