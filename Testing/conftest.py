"""Shared fixtures. The core library is imported as `LiverSegLib`, as Slicer does (LiverSeg/ is on sys.path)."""

import os
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "LiverSeg"))

SHARED_DATA = REPOSITORY.parent / "shared" / "data"

warnings.filterwarnings("ignore", category=FutureWarning, module="monai")

# Training's default preprocessing cache lives in the user's cache folder: the suite (and the
# subprocesses it starts, which inherit the environment) keeps its entries out of the home folder.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="liverseg-test-cache-")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real CT sample (MSD layout) beside the repository; tests that need it skip without it."""
    if not (SHARED_DATA / "dataset.json").is_file():
        pytest.skip(f"real CT sample not found at {SHARED_DATA} (clone the project beside its shared/ folder)")
    return SHARED_DATA
