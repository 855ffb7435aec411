"""Shared fixtures. The core library is imported as `LiverSegLib`, as Slicer does (LiverSeg/ is on sys.path)."""

import sys
import warnings
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "LiverSeg"))

SHARED_DATA = REPOSITORY.parent / "shared" / "data"

warnings.filterwarnings("ignore", category=FutureWarning, module="monai")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real CT sample (MSD layout) beside the repository; tests that need it skip without it."""
    if not (SHARED_DATA / "dataset.json").is_file():
        pytest.skip(f"real CT sample not found at {SHARED_DATA} (clone the project beside its shared/ folder)")
    return SHARED_DATA
