"""The ``liverseg`` command: segment a CT, evaluate a segmenter on a dataset, train a deep segmenter.

Exit status: 0 success, 1 a cohort run in which a case failed (the others are done), 2 bad input,
unavailable method or missing Python packages (one line on stderr naming the problem and the fix),
130 interrupted (Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional

from . import __version__
from .dependencies import require
from .errors import LiverSegError
from .outputs import describe_outputs, output_suffixes
from .segmenters import SEGMENTERS, default_method


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="liverseg",
        description="Segment the liver and liver tumours in abdominal CT (labels: 0 background, 1 liver, 2 tumour).",
    )
    parser.add_argument("--version", action="version", version=f"liverseg {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    segment = commands.add_parser(
        "segment",
        help="segment one CT, or a cohort of them into one folder",
        description=f"Segment one CT: the output type follows OUT's suffix: {describe_outputs()}. Or segment a cohort "
        "(several inputs, or OUT a folder): each case into OUT/<case_id>/ (labels.nii.gz, liver.seg.nrrd, "
        "preview.png, result.json), a rerun skipping the cases already done, and the table OUT/volumes.csv.",
    )
    segment.add_argument("inputs", nargs="+", metavar="INPUT",
                         help="CT as a NIfTI (.nii/.nii.gz) or NRRD file, a folder holding one DICOM series, or (for a "
                         "cohort) a CSV manifest with the columns id,path")
    segment.add_argument("-o", "--output", required=True, action="append",
                         help=f"output file: {output_suffixes()} (repeat -o to write several); for a cohort, "
                         "one folder")
    _add_method_arguments(segment)
    segment.add_argument("--preview", help="also write an image with axial and coronal overlays, in the format "
                         "its suffix names (.png, .jpg, .pdf, ...)")
    segment.add_argument("--progress", choices=["bar", "json"], default="bar",
                         help="bar: a progress bar on stderr (when it is a terminal); json: one JSON line per step on "
                         'stdout, {"event": "progress", "fraction": F, "message": M}, and {"event": "done", ...} once '
                         "the outputs are written, for a program that follows the run (the Slicer panel)")
    segment.add_argument("--num-parts", type=int, default=1, metavar="P",
                         help="cohort in a job array: split the sorted cases into P parts (case i in part i %% P); "
                         "`liverseg collect` then writes the table")
    segment.add_argument("--part-id", type=int, default=0, metavar="I", help="the part this run segments (0..P-1)")
    segment.set_defaults(run=run_segment)

    collect = commands.add_parser(
        "collect",
        help="rebuild a cohort's volumes.csv from its cases",
        description="Rebuild OUT_DIR/volumes.csv from every OUT_DIR/<case_id>/result.json: after the parts of a job "
        "array (liverseg segment --num-parts P --part-id I) have run.",
    )
    collect.add_argument("out_dir", metavar="OUT_DIR", help="the -o folder of a cohort run")
    collect.set_defaults(run=run_collect)

    evaluate = commands.add_parser(
        "evaluate",
        help="segment every labelled case of a dataset and report Dice",
        description="Segment every labelled case of an MSD Task03-layout dataset and write per-case Dice, "
        "volumes and seconds as CSV, Markdown and a PNG plot.",
    )
    evaluate.add_argument("dataset", help="folder holding dataset.json (MSD layout)")
    evaluate.add_argument("-o", "--output", required=True, help="report folder (created if missing)")
    _add_method_arguments(evaluate)
    evaluate.add_argument("--previews", action="store_true", help="also write one overlay PNG per case")
    evaluate.add_argument("--synthetic-tumours", type=int, metavar="SEED",
                          help="paint synthetic tumours into each reference liver first (in memory; a seed no training "
                               "run used) to measure tumour Dice and lesion detection on CT without tumour labels")
    evaluate.set_defaults(run=run_evaluate)

    phantom = commands.add_parser(
        "phantom",
        help="write synthetic abdominal CT phantoms as an MSD dataset",
        description="Write synthetic abdominal CT phantoms (liver, tumours, neighbouring organs) with their labels "
        "as an MSD Task03-layout dataset: a way to try every command without patient data.",
    )
    phantom.add_argument("-o", "--output", required=True, help="dataset folder (created if missing)")
    phantom.add_argument("--cases", type=int, default=3, help="number of cases (default: 3)")
    phantom.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    phantom.add_argument("--overwrite", action="store_true",
                         help="replace the dataset.json and cases an earlier run wrote into the folder")
    phantom.set_defaults(run=run_phantom)

    from .training import add_train_arguments, run_train

    train = commands.add_parser("train", help="train a deep segmenter on an MSD-layout dataset")
    add_train_arguments(train)
    train.set_defaults(run=run_train)

    from .crossval import add_crossval_arguments, add_table_arguments, run_crossval, run_table

    crossval = commands.add_parser("crossval", help="K-fold cross-validation of a deep segmenter: per-case Dice, summary")
    add_crossval_arguments(crossval)
    crossval.set_defaults(run=run_crossval)
    table = commands.add_parser("table", help="cross-validation runs of several methods as one table beside the paper's")
    add_table_arguments(table)
    table.set_defaults(run=run_table)
    return parser


def _add_method_arguments(parser: argparse.ArgumentParser) -> None:
    default = default_method()
    parser.add_argument("--method", default=default, choices=list(SEGMENTERS),
                        help=f"segmenter (default: {default}, the best measured in Resources/Models/REPORT.md)")
    parser.add_argument("--model", help="checkpoint of a deep segmenter (default: the shipped model)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where deep segmenters run")


class ProgressBar:
    """A tqdm bar on stderr fed by a segmenter's progress callback (silent when stderr is not a terminal)."""

    def __init__(self, description: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=100, desc=description, unit="%", disable=None, leave=False, file=sys.stderr)

    def __call__(self, fraction: float, message: str) -> None:
        self.bar.set_postfix_str(message)
        self.bar.update(max(0, round(fraction * 100) - self.bar.n))

    def close(self) -> None:
        self.bar.close()


class JsonProgress:
    """``--progress json``: a segmenter's progress callback that prints each step as a JSON line on stdout."""

    def __call__(self, fraction: float, message: str) -> None:
        self.event("progress", fraction=round(float(fraction), 4), message=message)

    def close(self) -> None:
        """Nothing to release (the bar's counterpart)."""

    @staticmethod
    def event(name: str, **fields) -> None:
        print(json.dumps({"event": name, **fields}), flush=True)


def run_segment(args: argparse.Namespace) -> int:
    if _is_cohort(args):
        return _run_cohort(args)
    if args.num_parts != 1:
        raise LiverSegError("--num-parts splits a cohort; give several inputs or an output folder")
    return _segment_one(args)


def _is_cohort(args: argparse.Namespace) -> bool:
    """A cohort run: several inputs, a manifest, or an output folder (an existing one, or a path without a
    suffix); one input to files keeps the single-CT command."""
    from .volume import suffix_of

    output = Path(args.output[0])
    return (len(args.inputs) > 1 or Path(args.inputs[0]).suffix.lower() == ".csv" or output.is_dir()
            or not suffix_of(output))


def _run_cohort(args: argparse.Namespace) -> int:
    from .cohort import Run, model_sha256, run_cohort

    if len(args.output) > 1:
        raise LiverSegError(f"a cohort writes into one output folder; got -o {' -o '.join(args.output)}")
    if args.preview or args.progress == "json":
        raise LiverSegError("--preview and --progress json are for one CT; a cohort writes each case's preview.png "
                            "and one line per case")
    run = Run(args.method, args.model, args.device, model_sha256(args.method, args.model))
    return run_cohort([Path(path) for path in args.inputs], Path(args.output[0]), run,
                      num_parts=args.num_parts, part_id=args.part_id)


def run_collect(args: argparse.Namespace) -> int:
    from .cohort import write_table

    print(f"wrote {write_table(Path(args.out_dir))}")
    return 0


def _segment_one(args: argparse.Namespace) -> int:
    from .outputs import Provenance, check_output, write_output
    from .preview import preview_format, save_preview
    from .segmenters import create_segmenter
    from .volume import check_writable, load_ct, output_set

    source = Path(args.inputs[0])
    outputs = [Path(path) for path in args.output]
    destinations = outputs + ([Path(args.preview)] if args.preview else [])
    # Check every destination before minutes of work, so a bad path fails fast and writes nothing; first
    # whether it is the input, the one mistake that would destroy data (whatever its suffix).
    _check_outputs_apart(source, destinations)
    for output in outputs:
        check_output(output, source)
    if args.preview:
        preview_format(args.preview)
    for path in destinations:
        check_writable(path)
    # Locked from here, so a concurrent run on these outputs is refused before its work, not after it.
    with output_set(destinations):
        segmenter = create_segmenter(args.method, model_path=args.model, device=args.device)
        ct = load_ct(source)

        started = time.perf_counter()
        progress = ProgressBar(f"{args.method}") if args.progress == "bar" else JsonProgress()
        try:
            labels = segmenter.segment(ct, progress=progress)
        finally:
            progress.close()
        seconds = time.perf_counter() - started

        provenance = Provenance(source, args.method)
        for output in outputs:
            write_output(ct.with_array(labels), output, provenance)
        if args.preview:
            save_preview(ct, labels, args.preview, title=f"{source.name} - {args.method}")

    from .volumetry import status_line

    print(f"{status_line(args.method, labels, ct.voxel_ml)}, {seconds:.1f} s")
    for path in destinations:
        print(f"wrote {path}")
    if args.progress == "json":
        JsonProgress.event("done", outputs=[str(path) for path in destinations], seconds=round(seconds, 3))
    return 0


def _check_outputs_apart(ct: Path, outputs: List[Path]) -> None:
    """Refuse an output that is the input CT, lies inside its DICOM folder, or is another output: writing
    it would replace the CT (or a slice of it), or one output of this run would replace another."""
    for index, output in enumerate(outputs):
        if _same_file(output, ct):
            raise LiverSegError(f"{output}: is the input CT {ct}; writing it would replace the CT, give another output path")
        if ct.is_dir() and output.resolve().is_relative_to(ct.resolve()):
            raise LiverSegError(f"{output}: inside the DICOM input folder {ct}; writing there could replace a slice "
                                "or add a file to the series, give a path outside that folder")
        for earlier in outputs[:index]:
            if _same_file(output, earlier):
                raise LiverSegError(f"{output}: given twice as an output (also as {earlier}); give each output its own path")


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same path, or one file reached through a symlink or hard link."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): then only the same resolved path is the same file
        return a.resolve() == b.resolve()


def run_evaluate(args: argparse.Namespace) -> int:
    from .evaluation import evaluate

    report = evaluate(args.dataset, args.method, Path(args.output), model_path=args.model, device=args.device,
                      previews=args.previews, synthetic_tumour_seed=args.synthetic_tumours)
    print(report.summary())
    for path in report.files:
        print(f"wrote {path}")
    return 0


def run_phantom(args: argparse.Namespace) -> int:
    from .phantom import phantom_dataset_files, write_phantom_dataset

    existing = [path for path in phantom_dataset_files(args.output, args.cases) if path.exists()]
    if existing and not args.overwrite:
        more = f" (and {len(existing) - 1} more of the files this would write)" if len(existing) > 1 else ""
        raise LiverSegError(f"{existing[0]}: already exists{more}; write into another folder, or add --overwrite "
                            "to replace them")
    folder = write_phantom_dataset(args.output, n_cases=args.cases, seed=args.seed)
    print(f"wrote {args.cases} phantom case(s) to {folder} (dataset.json, imagesTr/, labelsTr/)")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    try:
        with _sigterm_as_interrupt():
            require()  # before the parser, which imports the training module and so torch
            args = build_parser().parse_args(argv)
            return args.run(args)
    except LiverSegError as error:
        print(f"liverseg: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("liverseg: interrupted; no output was written for the unfinished step", file=sys.stderr)
        return 130


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Handle SIGTERM (``kill``, a job scheduler) as Ctrl-C: KeyboardInterrupt, so temporary files are removed
    and the same message and status follow. Only the main thread may set handlers; the old one is restored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
