"""``liverseg segment`` over many inputs: one folder of outputs per case and one volumetry table.

Each case writes ``OUT_DIR/<case_id>/`` (the files of :data:`CASE_FILES`) as one atomic output set, its
``result.json`` last among them, so a case folder holds either a whole result or its previous one. The
table ``OUT_DIR/volumes.csv`` is never appended to: it is rebuilt from every ``result.json``, so parts of a
job array writing into one folder share no file, and ``liverseg collect`` merges them afterwards.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .errors import LiverSegError

LABELS, SEGMENTATION, PREVIEW, RESULT = "labels.nii.gz", "liver.seg.nrrd", "preview.png", "result.json"
CASE_FILES = (LABELS, SEGMENTATION, PREVIEW, RESULT)
TABLE = "volumes.csv"
COLUMNS = ("case_id", "source", "method", "model_sha256", "liver_ml", "parenchyma_ml", "tumour_ml",
           "tumour_count", "flags", "seconds", "status", "error")
"""The table's columns, which are also the keys of each ``result.json`` (with ``input_sha256``)."""


@dataclass(frozen=True)
class Case:
    case_id: str  # the name of its output folder
    source: Path  # a CT file or a DICOM series folder


@dataclass(frozen=True)
class Run:
    """What identifies a result beside its input: a rerun with the same method and model may skip it."""

    method: str
    model: Optional[str]  # --model, None for the shipped one
    device: str
    model_sha256: str  # "" for methods without a model (EM)


# ------------------------------------------------------------------------------------------ the cases


def gather_cases(inputs: Sequence[Path]) -> List[Case]:
    """The cases of ``inputs`` (CT files, DICOM series folders, ``id,path`` CSV manifests), sorted by id.

    Raises:
        LiverSegError: a manifest that cannot be read, or case ids that clash (all clashes listed at once).
    """
    cases = [case for path in inputs for case in _cases_of(path)]
    by_id: Dict[str, List[Case]] = {}
    for case in cases:
        by_id.setdefault(case.case_id, []).append(case)
    clashes = {case_id: same for case_id, same in by_id.items() if len(same) > 1}
    if clashes:
        listed = "; ".join(f"'{case_id}' from {', '.join(str(case.source) for case in same)}"
                           for case_id, same in clashes.items())
        raise LiverSegError(f"case ids clash: {listed}; give each input its own name, or list them in a "
                            "manifest CSV (id,path) with distinct ids")
    return sorted(cases, key=lambda case: case.case_id)


def _cases_of(path: Path) -> List[Case]:
    from .volume import suffix_of

    if path.suffix.lower() == ".csv":
        return _manifest_cases(path)
    name = path.name if path.is_dir() else path.name[: len(path.name) - len(suffix_of(path))]
    return [Case(_safe_id(name, path), path)]


def _manifest_cases(manifest: Path) -> List[Case]:
    """The rows of an ``id,path`` CSV; a relative path is read from the manifest's folder, as a dataset's is."""
    try:
        with open(manifest, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise LiverSegError(f"{manifest}: could not be read as a CSV manifest ({error})") from error
    if rows and not {"id", "path"} <= set(rows[0]):
        raise LiverSegError(f"{manifest}: a manifest needs the columns id,path (a header line); it has "
                            f"{', '.join(rows[0])}")
    return [Case(_safe_id(row["id"], manifest), manifest.parent / row["path"]) for row in rows]


def _safe_id(name: str, source: Path) -> str:
    """``name`` as a folder name on any filesystem: runs of other characters than letters, digits, ``.``,
    ``_`` and ``-`` become ``_``, and no leading dot (hidden folders, ``..``)."""
    case_id = re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip()).lstrip(".")
    if not case_id:
        raise LiverSegError(f"{source}: gives the case id '{name}', which leaves no usable folder name; rename it "
                            "or give it an id in a manifest CSV (id,path)")
    return case_id


def part_of(cases: Sequence[Case], num_parts: int, part_id: int) -> List[Case]:
    """Part ``part_id`` of ``num_parts`` (nnU-Net's convention): case i of the sorted list goes to part
    i % num_parts, so the parts are disjoint, cover every case, and each machine of a job array finds its
    share without talking to the others."""
    if num_parts < 1 or not 0 <= part_id < num_parts:
        raise LiverSegError(f"--num-parts {num_parts} --part-id {part_id}: needs num-parts >= 1 and "
                            "0 <= part-id < num-parts")
    return list(cases[part_id::num_parts])


def content_sha256(source: Path) -> str:
    """The sha256 of a file's content, or of a DICOM folder's files by name (the files reading the series
    scans: any of them may be a slice of it)."""
    from .dataset import file_sha256

    try:
        if not source.is_dir():
            return file_sha256(source)
        files = sorted(path for path in source.iterdir() if path.is_file())
        listing = "".join(f"{path.name}\0{file_sha256(path)}\n" for path in files)
    except OSError as error:
        raise LiverSegError(f"{source}: could not be read ({error.strerror or error})") from error
    return hashlib.sha256(listing.encode()).hexdigest()


def model_sha256(method: str, model: Optional[str]) -> str:
    """The sha256 of the model a run uses: the ``--model`` file, or the shipped one as ``models.json`` states
    it (the segmenter checks the file against it); "" for a method without a model (EM)."""
    if model is not None:
        return content_sha256(Path(model))
    from .checkpoint import MANIFEST, MODELS_DIR

    manifest = MODELS_DIR / MANIFEST
    shipped = json.loads(manifest.read_text()) if manifest.is_file() else {}
    return shipped.get(method, {}).get("sha256", "")


# ------------------------------------------------------------------------------------------- the run


def run_cohort(inputs: Sequence[Path], out_dir: Path, run: Run, num_parts: int = 1, part_id: int = 0) -> int:
    """Segment this part's cases into ``out_dir``, one line per case on stdout, then the summary.

    Returns:
        The exit status: 1 when any case failed, else 0.
    """
    cases = gather_cases(inputs)
    _check_out_dir(cases, out_dir)
    mine = part_of(cases, num_parts, part_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    segmenter = _LazySegmenter(run)
    outcomes: Counter = Counter()
    for case in mine:
        outcome, line = _run_case(case, out_dir, run, segmenter)
        outcomes[outcome] += 1
        print(f"{case.case_id}: {line}", flush=True)
    print(f"{len(mine)} case(s): {outcomes['done']} done, {outcomes['skipped']} skipped, {outcomes['failed']} failed")
    if num_parts == 1:  # a part of a job array leaves the table to `liverseg collect`
        print(f"wrote {write_table(out_dir)}")
    return 1 if outcomes["failed"] else 0


def _check_out_dir(cases: Sequence[Case], out_dir: Path) -> None:
    """Refuse an output folder inside a DICOM input folder: its case files would join the series there."""
    for case in cases:
        if case.source.is_dir() and out_dir.resolve().is_relative_to(case.source.resolve()):
            raise LiverSegError(f"{out_dir}: inside the DICOM input folder {case.source}; writing there would add "
                                "files to the series, give an output folder outside it")


class _LazySegmenter:
    """The run's segmenter, built at the first case that needs it: a rerun that skips every case loads no
    model."""

    def __init__(self, run: Run) -> None:
        self.run, self.segmenter = run, None

    def __call__(self):
        if self.segmenter is None:
            from .segmenters import create_segmenter

            self.segmenter = create_segmenter(self.run.method, model_path=self.run.model, device=self.run.device)
        return self.segmenter


def _run_case(case: Case, out_dir: Path, run: Run, segmenter: Callable[[], Any]) -> Tuple[str, str]:
    """Segment one case unless its result is current: ('done' | 'skipped' | 'failed', what to print)."""
    folder = out_dir / case.case_id
    started = time.perf_counter()
    result: Dict[str, Any] = {"case_id": case.case_id, "source": str(case.source), "method": run.method,
                              "model_sha256": run.model_sha256}
    try:
        result["input_sha256"] = content_sha256(case.source)
    except LiverSegError as error:
        return _failed(folder, result, error, started)
    if _is_current(folder, result):
        return "skipped", "skipped (done earlier with the same input, method and model)"
    ready = segmenter()  # outside the case's try: a method that cannot run here stops the run, not each case
    try:
        folder.mkdir(exist_ok=True)
        result = _segment_case(case, folder, ready, result, started)
    except Exception as error:  # noqa: BLE001 - any failure of one case is recorded and the run goes on
        return _failed(folder, result, error, started)
    flags = f" [{', '.join(result['flags'])}]" if result["flags"] else ""
    volumes = f"liver {result['liver_ml']:.0f} ml, tumour {result['tumour_ml']:.1f} ml"
    return "done", f"{volumes}{flags}, {result['seconds']} s"


def _failed(folder: Path, result: Dict[str, Any], error: Exception, started: float) -> Tuple[str, str]:
    """Record a failed case in its ``result.json`` (its earlier files, if any, are left as they were)."""
    # A LiverSegError says what to do in one line; anything else (a segmenter's crash) is named by its type,
    # and kept on one line for the run's log and the table.
    message = str(error) if isinstance(error, LiverSegError) else f"{type(error).__name__}: {error}"
    message = " ".join(message.split())
    folder.mkdir(exist_ok=True)
    _write_result(folder, {**result, "status": "failed", "error": message,
                           "seconds": round(time.perf_counter() - started, 1)})
    return "failed", f"failed: {message}"


def _is_current(folder: Path, result: Dict[str, Any]) -> bool:
    """Whether ``folder`` holds a done result of this input, method and model, with all its files."""
    previous = read_result(folder)
    keys = ("input_sha256", "method", "model_sha256")
    same = previous is not None and all(previous.get(key) == result[key] for key in keys)
    return same and previous.get("status") == "done" and all((folder / name).is_file() for name in CASE_FILES)


def _segment_case(case: Case, folder: Path, segmenter, result: Dict[str, Any], started: float) -> Dict[str, Any]:
    """Segment one case and write its files together (one output set): ``result`` with its measures."""
    from .outputs import Provenance, write_output
    from .preview import save_preview
    from .volume import load_ct, output_set
    from .volumetry import liver_volumes, quality_flags, tumour_count

    with output_set([folder / name for name in CASE_FILES]):
        ct = load_ct(case.source)
        labels = segmenter.segment(ct)
        provenance = Provenance(case.source, result["method"])
        for name in (LABELS, SEGMENTATION):
            write_output(ct.with_array(labels), folder / name, provenance)
        save_preview(ct, labels, folder / PREVIEW, title=f"{case.case_id} - {result['method']}")
        volumes = liver_volumes(labels, ct.voxel_ml)
        result = {**result, "liver_ml": round(volumes.liver_ml, 1), "parenchyma_ml": round(volumes.parenchyma_ml, 1),
                  "tumour_ml": round(volumes.tumour_ml, 1), "tumour_count": tumour_count(labels),
                  "flags": quality_flags(labels, ct.voxel_ml), "status": "done", "error": "",
                  "seconds": round(time.perf_counter() - started, 1)}
        _write_result(folder, result)
    return result


def _write_result(folder: Path, result: Dict[str, Any]) -> None:
    from .volume import atomic_output

    with atomic_output(folder / RESULT) as temp:
        temp.write_text(json.dumps(result, indent=2) + "\n")


def read_result(folder: Path) -> Optional[Dict[str, Any]]:
    """A case folder's ``result.json``; None when there is none (or it is unreadable: the case is redone)."""
    try:
        return json.loads((folder / RESULT).read_text())
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------------------- the table


def write_table(out_dir: Path) -> Path:
    """Rebuild ``out_dir/volumes.csv`` from every case folder's ``result.json``, atomically, sorted by case id.

    Raises:
        LiverSegError: ``out_dir`` is not a folder.
    """
    from .volume import atomic_output

    if not out_dir.is_dir():
        raise LiverSegError(f"{out_dir}: is not a folder; give the OUT_DIR of `liverseg segment INPUT... -o OUT_DIR`")
    results = [result for folder in sorted(out_dir.iterdir()) if folder.is_dir()
               for result in [read_result(folder)] if result is not None]
    path = out_dir / TABLE
    with atomic_output(path) as temp, open(temp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for result in results:
            writer.writerow({**result, "flags": ";".join(result.get("flags", []))})
    return path
