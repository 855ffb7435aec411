"""The Python packages LiverSeg needs, stated once: import name -> pip requirement.

Every segmenter needs torch and MONAI, EM included (it works on MONAI's working grid and label clean-up),
so there is one list, not a "core" and a "deep" one. The ``liverseg`` command checks it before doing
anything, the Slicer panel offers to install what is missing before any method is listed or run, and the
README describes it. It says what pyproject.toml's ``[project] dependencies`` say
(``Testing/test_dependencies.py`` keeps the two equal); it is a table here because Slicer runs the module
from its source folder, where no installed project metadata can be read. Imports only the standard
library, so it works before any of the packages is there.
"""

from __future__ import annotations

import importlib.util
import shlex
from typing import Dict

from .errors import LiverSegError

REQUIREMENTS: Dict[str, str] = {
    "numpy": "numpy>=1.24",
    "scipy": "scipy>=1.10",
    "nibabel": "nibabel>=5.0",
    "SimpleITK": "SimpleITK>=2.3",
    "highdicom": "highdicom>=0.28",
    "sklearn": "scikit-learn>=1.3",
    "skimage": "scikit-image>=0.21",
    "torch": "torch==2.13.0",
    "monai": "monai==1.6.1",
    "einops": "einops>=0.7",
    "matplotlib": "matplotlib>=3.7",
    "tqdm": "tqdm>=4.60",
    "slicer": "slicer-core==5.13.31053.0; python_version >= '3.10'",
}
"""Import name -> requirement (PEP 508, as in pyproject.toml), torch before the packages that need it.
Inside Slicer ``slicer`` is Slicer's own and always importable, so slicer-core is never installed there."""


class MissingDependenciesError(LiverSegError):
    """Packages of :data:`REQUIREMENTS` that cannot be imported here; ``missing`` maps their import names
    to what ``pip install`` takes."""

    def __init__(self, missing: Dict[str, str]):
        self.missing = missing
        super().__init__(
            f"missing Python packages: {', '.join(missing)} (LiverSeg needs them for every method); "
            f"install them with: pip install {' '.join(map(shlex.quote, missing.values()))}"
        )


def missing() -> Dict[str, str]:
    """Import name -> requirement (without its environment marker, which holds here) of each package
    that applies to this Python and cannot be imported.

    Presence only, not versions: inside Slicer, replacing Slicer's own numpy or another extension's torch
    to satisfy a pin could break them; pip applies the pins when it installs what is missing.
    """
    found = {}
    for name, requirement in REQUIREMENTS.items():
        spec, _, marker = (part.strip() for part in requirement.partition(";"))
        if not _importable(name) and _applies(marker):
            found[name] = spec
    return found


def require() -> None:
    """Stop before any work when a package is missing, naming them all and the fix, rather than with an
    ImportError traceback half-way.

    Raises:
        MissingDependenciesError: something of :func:`missing`.
    """
    absent = missing()
    if absent:
        raise MissingDependenciesError(absent)


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a finder refused the name, or a module half-imported without a spec
        return False


def _applies(marker: str) -> bool:
    """Whether a PEP 508 environment marker holds in this Python (an empty one always does)."""
    if not marker:
        return True
    try:
        from packaging.markers import Marker  # comes with pip and matplotlib
    except ImportError:  # pip evaluates the marker itself when it installs
        return True
    return Marker(marker).evaluate()
