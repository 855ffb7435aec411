"""LiverSeg.json, the extension's Slicer ExtensionsIndex entry, and the top-level CMakeLists.txt metadata.

The index validates the entry against Slicer's catalog-entry schema and builds the extension from the
repository it names; the Extensions Manager then shows the CMakeLists.txt metadata (icon, screenshots).
These tests catch an entry the index would reject and metadata that disagrees with the entry or points
at images that are not in the repository (a broken icon in the catalog).
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Dict, List

import pytest

REPOSITORY = Path(__file__).resolve().parents[1]
ENTRY = REPOSITORY / "LiverSeg.json"
CMAKELISTS = REPOSITORY / "CMakeLists.txt"
SCHEMAS = REPOSITORY.parent / "shared" / "docs" / "slicer-schemas"
SCHEMA = SCHEMAS / "slicer-extension-catalog-entry-schema-v1.0.2.json"
RAW_PREFIX = "https://raw.githubusercontent.com/liverseg/SlicerLiverSeg/main/"

# set(EXTENSION_NAME "value") on one line, as the Slicer extension template writes them
SET_LINE = re.compile(r'^\s*set\(\s*(EXTENSION_\w+)\s+"([^"]*)"\s*\)', re.MULTILINE)


def load_entry() -> Dict:
    return json.loads(ENTRY.read_text(encoding="utf-8"))


def cmake_metadata(text: str) -> Dict[str, str]:
    """EXTENSION_* values of the top-level CMakeLists.txt, by name."""
    return dict(SET_LINE.findall(text))


def metadata_problems(entry: Dict, cmake: Dict[str, str], repository: Path) -> List[str]:
    """Each way the CMakeLists.txt metadata disagrees with the catalog entry or names a missing file."""
    problems = []
    if cmake.get("EXTENSION_CATEGORY") != entry.get("category"):
        problems.append(f"EXTENSION_CATEGORY {cmake.get('EXTENSION_CATEGORY')!r} != category {entry.get('category')!r}")
    # CMake lists are space- or semicolon-separated; the index builds these extensions first
    depends = re.split(r"[;\s]+", cmake.get("EXTENSION_DEPENDS", "").strip())
    depends = [name for name in depends if name and name != "NA"]
    if depends != entry.get("build_dependencies", []):
        problems.append(f"EXTENSION_DEPENDS {depends} != build_dependencies {entry.get('build_dependencies', [])}")
    if cmake.get("EXTENSION_HOMEPAGE") != entry.get("scm_url"):
        problems.append(f"EXTENSION_HOMEPAGE {cmake.get('EXTENSION_HOMEPAGE')!r} != scm_url {entry.get('scm_url')!r}")
    urls = cmake.get("EXTENSION_ICONURL", "").split() + cmake.get("EXTENSION_SCREENSHOTURLS", "").split()
    if not urls:
        problems.append("no EXTENSION_ICONURL or EXTENSION_SCREENSHOTURLS")
    for url in urls:
        if not url.startswith(RAW_PREFIX):
            problems.append(f"{url} is not a file of this repository's main branch ({RAW_PREFIX}...)")
        elif not (repository / url[len(RAW_PREFIX) :]).is_file():
            problems.append(f"{url}: {url[len(RAW_PREFIX):]} is not in the repository")
    return problems


@pytest.fixture(scope="module")
def validator():
    """A validator for Slicer's catalog-entry schema; skips where the shared schema folder is absent."""
    jsonschema = pytest.importorskip("jsonschema")
    if not SCHEMA.is_file():
        pytest.skip(f"Slicer catalog-entry schema not found at {SCHEMA} (clone the project beside its shared/ folder)")
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_entry_matches_schema(validator) -> None:
    entry = load_entry()
    errors = [error.message for error in validator.iter_errors(entry)]
    assert errors == []
    # the index reads $schema to pick the schema version: it must name this one
    assert entry["$schema"] == validator.schema["$id"]


def test_schema_rejects_a_broken_entry(validator) -> None:
    """The schema check can fail: an out-of-range tier and an unknown field are both reported."""
    entry = load_entry()
    entry["tier"] = 6
    entry["homepage"] = entry["scm_url"]
    messages = " ".join(error.message for error in validator.iter_errors(entry))
    assert "6 is greater than the maximum of 5" in messages
    assert "homepage" in messages


def test_entry_is_honest_for_a_new_extension() -> None:
    """Tier 1 is 'experimental' in the schema; higher tiers claim community or core-developer support."""
    entry = load_entry()
    assert entry["tier"] == 1
    assert entry["scm_revision"] == "main"


def test_cmakelists_agrees_with_entry() -> None:
    cmake = cmake_metadata(CMAKELISTS.read_text(encoding="utf-8"))
    assert metadata_problems(load_entry(), cmake, REPOSITORY) == []


def test_disagreements_are_reported() -> None:
    """A wrong category, an extra dependency and an icon that is not in the repository are each caught."""
    cmake = cmake_metadata(CMAKELISTS.read_text(encoding="utf-8"))
    entry = copy.deepcopy(load_entry())
    entry["category"] = "Quantification"
    cmake["EXTENSION_DEPENDS"] = "PyTorch SlicerElastix"
    cmake["EXTENSION_ICONURL"] = RAW_PREFIX + "Resources/Icons/Missing.png"
    problems = metadata_problems(entry, cmake, REPOSITORY)
    assert len(problems) == 3, problems
