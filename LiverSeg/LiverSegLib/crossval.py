"""``liverseg crossval``: K-fold cross-validation of a deep segmenter; ``liverseg table``: several of them
beside the paper's figures.

    liverseg crossval DATASET_DIR --method unet --folds 5 -o RUN_DIR [--epochs N] [--cache-dir DIR] [train options]
    liverseg table RUN_DIR [RUN_DIR ...] [-o TABLE.md]

The labelled cases of ``dataset.json`` (its ``training`` and, if any, ``validation`` lists) are split into
K folds by a seeded shuffle (``--seed``) written to ``RUN_DIR/splits.json`` in nnU-Net's
``splits_final.json`` form, ``[{"train": [...], "val": [...]}, ...]``; an existing one (nnU-Net's, say) is
used as it is. Fold ``k`` is a ``liverseg train`` run in ``RUN_DIR/fold_k/`` with the fold's held-out
cases as its fixed validation list; its last-epoch model (``last.pt``: the best epoch would be chosen on
the very cases it is scored on) then segments them through ``liverseg evaluate``
(``RUN_DIR/fold_k/evaluation/``). Rerunning the command continues: a finished fold is skipped, an
interrupted one resumed from its ``last.pt``, a fold already scored is not scored again.

Output: ``RUN_DIR/crossval.csv`` (fold, case, dice_liver, dice_tumour, liver_ml, tumour_ml, seconds: one
row per case) and ``RUN_DIR/summary.json`` (method, folds, epochs, mean and sample sd of each Dice over
the cases, training and segmentation seconds, hardware). Dice is per volume, at the CT's own
resolution, background never counted (:mod:`LiverSegLib.metrics`); a case without reference tumour
has no tumour Dice and is left out of the tumour figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import random
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import __version__
from .checkpoint import Checkpoint
from .dataset import Case, load_msd_dataset
from .errors import LiverSegError
from .evaluation import evaluate
from .segmenters import PAPER_DICE
from .segmenters.deep import choose_device
from .training import LAST, _emit, add_train_arguments, run_train
from .volume import atomic_output

SPLITS, CSV_NAME, SUMMARY = "splits.json", "crossval.csv", "summary.json"
CSV_COLUMNS = ("fold", "case", "dice_liver", "dice_tumour", "liver_ml", "tumour_ml", "seconds")


# --------------------------------------------------------------------------------------------- arguments


def add_crossval_arguments(parser: argparse.ArgumentParser) -> None:
    """``liverseg train``'s arguments, less the two a cross-validation sets itself, plus ``--folds``."""
    add_train_arguments(parser)
    for action in parser._actions:  # argparse has no public way to edit an added argument
        if action.dest == "output":
            action.help = "folder for splits.json, fold_k/, crossval.csv and summary.json"
        elif action.dest in ("resume", "val_fraction"):  # a rerun resumes; each fold's held-out cases are fixed
            action.help = argparse.SUPPRESS
    parser.add_argument("--folds", type=int, default=5, metavar="K", help="number of folds (default: 5)")


def add_table_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="folders of finished liverseg crossval runs")
    parser.add_argument("-o", "--output", metavar="TABLE.md",
                        help="write the Markdown table here and a bar chart beside it (.png); default: print the table")


# --------------------------------------------------------------------------------------------- splits


def make_splits(names: Sequence[str], folds: int, seed: int) -> List[Dict[str, List[str]]]:
    """K folds of the case names: a seeded shuffle dealt round-robin, so fold sizes differ by at most one.

    Raises:
        LiverSegError: fewer than 2 folds, or more folds than cases.
    """
    if not 2 <= folds <= len(names):
        raise LiverSegError(f"--folds {folds}: needs 2 to {len(names)} folds for the dataset's {len(names)} labelled "
                            "case(s) (each fold holds out at least one case)")
    order = sorted(names)
    random.Random(seed).shuffle(order)
    held_out = [set(order[k::folds]) for k in range(folds)]
    return [{"train": [n for n in sorted(names) if n not in val], "val": sorted(val)} for val in held_out]


def load_splits(path: Path, names: Sequence[str], folds: int) -> List[Dict[str, List[str]]]:
    """The folds of an existing splits.json, checked against the dataset's cases.

    Raises:
        LiverSegError: not in nnU-Net's form, another number of folds, or folds that do not hold out each
            case of the dataset exactly once and train on all the others.
    """
    try:
        splits = json.loads(path.read_text())
        if not (isinstance(splits, list) and all(isinstance(s, dict) and {"train", "val"} <= set(s) for s in splits)):
            raise ValueError('expected a list of {"train": [...], "val": [...]}')
    except ValueError as exc:
        raise LiverSegError(f"{path}: not a splits file ({exc}); delete it to split again") from exc
    if len(splits) != folds:
        raise LiverSegError(f"{path}: holds {len(splits)} folds, not --folds {folds}; give --folds {len(splits)}, "
                            "or another -o")
    every = set(names)
    problems = [f"fold {k} does not train on all the cases it does not hold out" for k, s in enumerate(splits)
                if set(s["train"]) & set(s["val"]) or set(s["train"]) | set(s["val"]) != every]
    held_out = [name for s in splits for name in s["val"]]
    if sorted(held_out) != sorted(every):
        problems.append("its folds do not hold out each case of the dataset exactly once")
    if problems:
        raise LiverSegError(f"{path}: {'; '.join(problems)} (the dataset changed?); delete it to split again, or "
                            "give another -o")
    return splits


def _splits(run_dir: Path, names: Sequence[str], folds: int, seed: int) -> List[Dict[str, List[str]]]:
    path = run_dir / SPLITS
    if path.is_file():
        return load_splits(path, names, folds)
    splits = make_splits(names, folds, seed)
    _write_json(path, splits)
    return splits


# --------------------------------------------------------------------------------------------- folds


def run_crossval(args: argparse.Namespace) -> int:
    """Train, score and summarize every fold as ``args`` say (resuming what a previous run began); returns 0.

    Raises:
        LiverSegError: bad dataset, options, splits.json or output folder; whatever a fold's training raises.
    """
    dataset, run_dir = Path(args.dataset), Path(args.output)
    cases = {case.name: case for section in ("training", "validation")
             for case in load_msd_dataset(dataset, section=section)}
    splits = _splits(run_dir, list(cases), args.folds, args.seed)
    rows: List[Dict[str, Any]] = []
    for fold, split in enumerate(splits):
        fold_dir = run_dir / f"fold_{fold}"
        _train_fold(args, fold_dir, [cases[n] for n in split["train"]], [cases[n] for n in split["val"]])
        scored = _score_fold(args, fold_dir, [cases[n] for n in split["val"]])
        rows += [{"fold": fold, **row} for row in scored]
        _emit({"event": "fold", "fold": fold, "dice_liver": _mean_sd([r["dice_liver"] for r in scored])[0],
               "dice_tumour": _mean_sd([r["dice_tumour"] for r in scored])[0]})
    _write_csv(run_dir / CSV_NAME, rows)
    _write_json(run_dir / SUMMARY, summarize(args, run_dir, len(splits), rows))
    _emit({"event": "crossval", "csv": str(run_dir / CSV_NAME), "summary": str(run_dir / SUMMARY)})
    return 0


def _train_fold(args: argparse.Namespace, fold_dir: Path, train: List[Case], held_out: List[Case]) -> None:
    """Train the fold (or resume it); nothing when its run is finished."""
    last = fold_dir / LAST
    if last.is_file() and _finished(last, args.epochs):
        return
    _write_dataset(fold_dir, train, held_out)
    run_train(argparse.Namespace(**{**vars(args), "dataset": str(fold_dir), "output": str(fold_dir),
                                    "resume": last.is_file()}))


def _finished(last: Path, epochs: Optional[int]) -> bool:
    """Whether the run of ``last`` trained all its epochs.

    Raises:
        LiverSegError: ``--epochs`` differs from the run's (its learning-rate schedule depends on it).
    """
    checkpoint = Checkpoint.load(last)
    planned = int(checkpoint.training.get("settings", {}).get("epochs", 0))
    if epochs is not None and planned and epochs != planned:
        raise LiverSegError(f"--epochs {epochs}: {last.parent} was trained with --epochs {planned}; rerun without "
                            "--epochs or with the same, or give another -o")
    return bool(planned) and int((checkpoint.resume or {}).get("epoch", 0)) >= planned


def _score_fold(args: argparse.Namespace, fold_dir: Path, held_out: List[Case]) -> List[Dict[str, Any]]:
    """The fold's held-out cases segmented by its last-epoch model (once: a later run reads the report)."""
    report = fold_dir / "evaluation" / f"{args.method}.csv"
    if not report.is_file() or report.stat().st_mtime_ns < (fold_dir / LAST).stat().st_mtime_ns:
        _write_dataset(fold_dir / "heldout", held_out, [])
        evaluate(fold_dir / "heldout", args.method, fold_dir / "evaluation", model_path=str(fold_dir / LAST),
                 device=args.device)
    with open(report, newline="") as handle:
        return [{"case": row["case"], **{column: float(row[column]) for column in CSV_COLUMNS[2:]}}
                for row in csv.DictReader(handle)]


def _write_dataset(folder: Path, training: List[Case], validation: List[Case]) -> None:
    """An MSD dataset.json naming the cases' files where they are (absolute paths)."""
    def entries(cases: List[Case]) -> List[Dict[str, str]]:
        return [{"image": str(c.image_path.resolve()), "label": str(c.label_path.resolve())} for c in cases]

    folder.mkdir(parents=True, exist_ok=True)
    _write_json(folder / "dataset.json", {"name": "LiverSeg cross-validation fold", "training": entries(training),
                                          "validation": entries(validation)})


# --------------------------------------------------------------------------------------------- summary


def summarize(args: argparse.Namespace, run_dir: Path, folds: int, rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """summary.json's content: the mean and sample sd of each Dice over the cases, and what produced them."""
    liver_mean, liver_sd = _mean_sd([r["dice_liver"] for r in rows])
    tumour_mean, tumour_sd = _mean_sd([r["dice_tumour"] for r in rows])
    runs = [Checkpoint.load(run_dir / f"fold_{k}" / LAST) for k in range(folds)]
    device = choose_device(args.device)
    return {
        "method": args.method,
        "folds": folds,
        "cases": len(rows),
        "tumour_cases": sum(not math.isnan(r["dice_tumour"]) for r in rows),
        "epochs": runs[0].training["settings"]["epochs"],
        "dice_liver_mean": liver_mean, "dice_liver_sd": liver_sd,
        "dice_tumour_mean": tumour_mean, "dice_tumour_sd": tumour_sd,
        # Summed from the checkpoints' epoch times, so the time of interrupted runs counts too.
        "training_seconds": round(sum(e["seconds"] for run in runs for e in run.metrics["history"]), 1),
        "segmentation_seconds": round(sum(r["seconds"] for r in rows), 1),
        "hardware": {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "cpu": platform.processor() or platform.machine(), "cpu_cores": os.cpu_count(),
            "torch": torch.__version__, "liverseg": __version__,
        },
        "settings": runs[0].training["settings"],
    }


def _mean_sd(values: Sequence[float]) -> Tuple[Optional[float], Optional[float]]:
    """(mean, sample sd) of the defined values; None where undefined (no value; one value for the sd)."""
    defined = [v for v in values if not math.isnan(v)]
    mean = float(np.mean(defined)) if defined else None
    return mean, float(np.std(defined, ddof=1)) if len(defined) > 1 else None


def _write_csv(path: Path, rows: List[Dict[str, Any]]) -> None:
    with atomic_output(path) as temp, open(temp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()} for row in rows)


def _write_json(path: Path, content: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temp:
        temp.write_text(json.dumps(content, indent=2) + "\n")


# --------------------------------------------------------------------------------------------- table


def run_table(args: argparse.Namespace) -> int:
    """Print or write the table of ``args.runs`` (and its chart); returns 0.

    Raises:
        LiverSegError: a folder holds no summary.json.
    """
    summaries = [_read_summary(Path(run)) for run in args.runs]
    text = table_markdown(summaries, [Path(run).name for run in args.runs])
    if not args.output:
        print(text, end="")
        return 0
    output = Path(args.output)
    with atomic_output(output) as temp:
        temp.write_text(text)
    _write_chart(summaries, [Path(run).name for run in args.runs], output.with_suffix(".png"))
    print(f"wrote {output}\nwrote {output.with_suffix('.png')}")
    return 0


def _read_summary(run: Path) -> Dict[str, Any]:
    path = run / SUMMARY
    if not path.is_file():
        raise LiverSegError(f"{run}: no {SUMMARY}; run liverseg crossval ... -o {run} to the end first")
    return json.loads(path.read_text())


def table_markdown(summaries: List[Dict[str, Any]], names: List[str]) -> str:
    """The cross-validated table: per run its method's mean (sd) Dice beside the paper's figure."""
    lines = [
        "# Cross-validated Dice per method",
        "",
        "Per-volume Dice at the CT's own resolution (liver = labels 1+2, tumour = label 2, background never "
        "counted), mean (sample sd) over the cases of a K-fold cross-validation (`liverseg crossval`): each case "
        "scored by the last-epoch model of the fold that held it out. The paper's figures are liver Dice per slice "
        "on its own test split: a reference, not the same measurement.",
        "",
        "| method | run | folds | cases (with tumour) | epochs | liver Dice | tumour Dice | paper's liver Dice (per slice) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for summary, name in zip(summaries, names):
        paper = PAPER_DICE.get(summary["method"])
        lines.append(f"| {summary['method']} | {name} | {summary['folds']} | {summary['cases']} "
                     f"({summary['tumour_cases']}) | {summary['epochs']} "
                     f"| {_mean_sd_text(summary['dice_liver_mean'], summary['dice_liver_sd'])} "
                     f"| {_mean_sd_text(summary['dice_tumour_mean'], summary['dice_tumour_sd'])} "
                     f"| {paper if paper is not None else 'not reported'} |")
    return "\n".join(lines) + "\n"


def _mean_sd_text(mean: Optional[float], sd: Optional[float]) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.3f} ({sd:.3f})" if sd is not None else f"{mean:.3f}"


def _write_chart(summaries: List[Dict[str, Any]], names: List[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(summaries))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(summaries) + 2), 4))
    for offset, key, label, color in ((-0.27, "dice_liver", "liver", (221 / 255, 130 / 255, 101 / 255)),
                                      (0.0, "dice_tumour", "tumour", (0.2, 0.7, 0.3))):
        ax.bar(x + offset, [s[f"{key}_mean"] or 0 for s in summaries], 0.27, label=f"{label} (mean, sd)", color=color,
               yerr=[s[f"{key}_sd"] or 0 for s in summaries], capsize=3)
    ax.bar(x + 0.27, [PAPER_DICE.get(s["method"]) or 0 for s in summaries], 0.27, label="paper's liver (per slice)",
           color=(0.55, 0.55, 0.6))
    ax.set_xticks(x, [f"{s['method']}\n{name}" for s, name in zip(summaries, names)])
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice (per volume)")
    ax.set_title("Cross-validated Dice by method")
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    with atomic_output(path) as temp:
        fig.savefig(temp, dpi=90, format="png")
    plt.close(fig)
