"""What a user installs: a wheel of the project in a fresh virtual environment, outside the source tree,
segments a CT with every shipped model (the models are package data, not files of the repository)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from LiverSegLib.checkpoint import MANIFEST, MODELS_DIR
from LiverSegLib.phantom import make_phantom
from LiverSegLib.volume import save_volume

REPOSITORY = Path(__file__).resolve().parent.parent
SHIPPED = sorted(json.loads((MODELS_DIR / MANIFEST).read_text()))


def _run(*command: str | Path, cwd: Path) -> str:
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(map(str, command))}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh environment holding only the wheel; the dependencies come from the test's own environment
    through a ``.pth`` line (installing torch again would take minutes), whose editable install of the
    source tree is not carried over: nested ``.pth`` files are not processed."""
    root = tmp_path_factory.mktemp("wheel")
    # Built from a copy: setuptools' build/ folder in the source tree keeps files deleted since, which a
    # later wheel would ship.
    source = root / "source"
    shutil.copytree(REPOSITORY / "LiverSeg" / "LiverSegLib", source / "LiverSeg" / "LiverSegLib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPOSITORY / name, source / name)
    _run(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", root / "dist",
         source, cwd=root)
    (wheel,) = (root / "dist").glob("liverseg-*.whl")
    venv.create(root / "env", with_pip=False)
    python = root / "env" / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=root).strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-compile", "--target", site, wheel, cwd=root)
    return root


def test_the_wheel_is_imported_from_the_environment_not_the_source_tree(installed: Path) -> None:
    where = _run(installed / "env" / "bin" / "python", "-c", "import LiverSegLib; print(LiverSegLib.__file__)", cwd=installed)
    assert Path(where.strip()).is_relative_to(installed / "env"), where


def test_the_installed_package_segments_with_every_shipped_model(installed: Path) -> None:
    python = installed / "env" / "bin" / "python"
    ct_path = installed / "phantom.nii.gz"
    ct, _ = make_phantom(shape=(96, 96, 48), spacing=(3.5, 3.5, 5.0), seed=0)
    save_volume(ct, ct_path)
    assert SHIPPED, "no shipped model listed in models.json"
    # The command a user types, once; then every shipped model in one process (one torch import).
    _run(python, "-m", "LiverSegLib.cli", "segment", ct_path, "-o", installed / "unet.nii.gz", "--method", "unet",
         "--device", "cpu", cwd=installed)
    assert np.count_nonzero(np.asarray(nib.load(installed / "unet.nii.gz").dataobj)) > 0
    script = ("import sys, numpy as np\n"
              "from LiverSegLib.segmenters import create_segmenter\n"
              "from LiverSegLib.volume import load_ct\n"
              "ct = load_ct(sys.argv[1])\n"
              "for method in sys.argv[2:]:\n"
              "    labels = create_segmenter(method, device='cpu').segment(ct)\n"
              "    print(method, labels.shape == ct.array.shape, int(np.count_nonzero(labels)))\n")
    lines = _run(python, "-c", script, ct_path, *SHIPPED, cwd=installed).splitlines()
    results = {line.split()[0]: line.split()[1:] for line in lines if line.split() and line.split()[0] in SHIPPED}
    assert set(results) == set(SHIPPED), lines
    for method, (same_shape, liver_voxels) in results.items():
        assert same_shape == "True" and int(liver_voxels) > 0, method
