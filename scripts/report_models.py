"""Evaluation report of every segmenter on the labelled real CT: ``make report``.

Writes ``Resources/Models/REPORT.md`` and ``REPORT.png``. For each method it runs ``liverseg evaluate``
in a fresh process (so the peak RSS is that method's own) on the labelled cases of ``../shared/data``
with the shipped model, and puts beside it the leave-one-out Dice stored in the shipped checkpoint by
``make models`` -- the only figures on a CT the model never saw, since the shipped deep models were
trained on one of the two labelled cases. EM is trained on nothing, so all its figures are unseen.

Usage: python scripts/report_models.py [--methods em unet ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "LiverSeg"))
from train_models import MANUAL_REFERENCES, reference_kind  # noqa: E402  (the one list of manual references)
from LiverSegLib.checkpoint import MEASURED, MODELS_DIR  # noqa: E402

SHARED = REPOSITORY.parent / "shared" / "data"
REPORTS = REPOSITORY / "Resources" / "Models"
METHODS = ["em", "unet", "autoencoder", "vitautoenc", "vae"]
LAST = "dice_liver_last_epoch"
from LiverSegLib.segmenters import PAPER_DICE as PAPER  # noqa: E402  (the one record of the paper's figures)


def evaluate(method: str, folder: Path, *options: str) -> Optional[Dict]:
    """Run `liverseg evaluate` for one method; None when the method is unavailable here."""
    env = dict(os.environ, PYTHONPATH=str(REPOSITORY / "LiverSeg"))
    result = subprocess.run([sys.executable, "-W", "ignore", "-m", "LiverSegLib.cli", "evaluate", str(SHARED),
                             "--method", method, "-o", str(folder), *options], capture_output=True, text=True, env=env)
    if result.returncode:
        print(f"{method}: {result.stderr.strip().splitlines()[-1]}", file=sys.stderr)
        return None
    with open(folder / f"{method}.csv") as handle:
        rows = list(csv.DictReader(handle))
    peak = float(re.search(r"peak RSS (\d+) MB", result.stdout).group(1))
    return {"rows": rows, "peak_rss_mb": peak}


def unseen_dice(method: str, measured: Dict) -> Dict[str, Dict[str, float]]:
    """Case -> the figures of the leave-one-out model that did not see that case (``make models`` stores
    them in the shipped checkpoint: liver Dice at its best and last epoch, tumour invented, synthetic-tumour
    Dice and lesions found); for EM, which learns nothing in advance, its own figures on every case."""
    if method == "em":
        synthetic = {row["case"]: row for row in measured["synthetic"]}
        return {row["case"]: {"dice_liver": float(row["dice_liver"]), LAST: float(row["dice_liver"]),
                              "invented_tumour_ml": float(row["tumour_ml"]),
                              "synthetic_dice_tumour": float(synthetic[row["case"]]["dice_tumour"]),
                              "lesions": int(synthetic[row["case"]]["lesions"]),
                              "lesions_found": int(synthetic[row["case"]]["lesions_found"])}
                for row in measured["rows"]}
    from LiverSegLib.checkpoint import Checkpoint, shipped_model_path

    return Checkpoint.load(shipped_model_path(method)).metrics.get("cross_validation", {})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    args = parser.parse_args()

    from LiverSegLib.synthetic_tumours import EVALUATION_SEED

    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for method in args.methods:
            measured = evaluate(method, Path(folder) / method)
            if measured is not None:
                if method == "em":  # the deep models' synthetic-tumour figures are their folds', in the checkpoint
                    synthetic = evaluate(method, Path(folder) / f"{method}_synthetic", "--synthetic-tumours", str(EVALUATION_SEED))
                    measured["synthetic"] = synthetic["rows"] if synthetic else []
                measured["unseen"] = unseen_dice(method, measured)
                results[method] = measured
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "REPORT.md").write_text(markdown(results))
    # What the Slicer panel shows beside each segmenter's name, and what chooses the default method: the
    # last epoch's figure, since the best epoch was chosen on the test cases themselves.
    measured = {m: round(_mean_unseen(m, r, LAST), 3) for m, r in results.items()}
    (MODELS_DIR / MEASURED).write_text(json.dumps(measured, indent=2, sort_keys=True) + "\n")
    plot(results, REPORTS / "REPORT.png")
    print((REPORTS / "REPORT.md").read_text())
    return 0


def _mean_unseen(method: str, measured: Dict, key: str = "dice_liver", manual: Optional[bool] = None) -> float:
    """Mean unseen ``key`` over the cases (all, or those with a manual / a model-made reference); NaN when none."""
    cases = {case: scores for case, scores in measured["unseen"].items()
             if manual is None or (case in MANUAL_REFERENCES) == manual}
    return _mean_of(cases, key)


def _mean_of(cases: Dict[str, Dict[str, float]], key: str) -> float:
    """Mean of ``key`` over the cases' scores that have it (as ``fold_scores`` of train_models.py writes them);
    NaN when none has."""
    values = [scores[key] for scores in cases.values() if scores.get(key) is not None]
    return sum(values) / len(values) if values else math.nan


def _unseen_case(method: str, measured: Dict, row: Dict, key: str) -> float:
    return measured["unseen"].get(row["case"], {}).get(key, math.nan)


def _lesions_found(measured: Dict) -> str:
    cases = [s for s in measured["unseen"].values() if "lesions" in s]
    return f"{sum(s['lesions_found'] for s in cases)}/{sum(s['lesions'] for s in cases)}" if cases else "-"


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def markdown(results: Dict[str, Dict]) -> str:
    from LiverSegLib.synthetic_tumours import EVALUATION_SEED

    lines = [
        "# LiverSeg evaluation report",
        "",
        "Made by `make report` (`scripts/report_models.py`) on "
        f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU, Python {platform.python_version()}.",
        "Per-volume Dice at the CT's own resolution on the labelled real CTs of `../shared/data`. One label is "
        "**manual** (`chaos_ct_sample`, CHAOS): Dice against it measures accuracy. The other two are TotalSegmentator "
        "predictions: Dice against them measures agreement with TotalSegmentator. No label holds a tumour, so tumours "
        f"are measured with synthetic tumours painted into each held-out liver by seed {EVALUATION_SEED}, which no "
        "training run draws (`liverseg evaluate --synthetic-tumours`); *tumour invented* is what a method labels "
        "tumour on the CT as it is, a true error on the healthy CHAOS liver.",
        "",
        "**Unseen** is the figure that counts: for a deep model, the leave-one-out model that never saw the case, at "
        "its last epoch (no choice made; the best epoch, chosen on the case itself, is optimistic and shown in the "
        "per-case table). EM learns nothing in advance: all its figures are unseen. Models trained before the manual "
        "case existed have no fold for it and no synthetic-tumour figures (\"-\").",
        "",
        "## Summary",
        "",
        "| method | mean liver Dice, unseen, last epoch | manual reference | TotalSegmentator references "
        "| tumour Dice, synthetic tumours | lesions >= 10 mm found | tumour invented on the healthy CHAOS liver (mL) "
        "| paper's Dice (per slice) | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for method, measured in results.items():
        paper = PAPER[method]
        chaos = measured["unseen"].get("chaos_ct_sample", {}).get("invented_tumour_ml", math.nan)
        lines.append(f"| {method} | **{_mean_unseen(method, measured, LAST):.3f}** "
                     f"| {_fmt(_mean_unseen(method, measured, LAST, manual=True))} "
                     f"| {_fmt(_mean_unseen(method, measured, LAST, manual=False))} "
                     f"| {_fmt(_mean_unseen(method, measured, 'synthetic_dice_tumour'))} | {_lesions_found(measured)} "
                     f"| {_fmt(chaos, 1)} | {paper if paper is not None else 'not reported'} | {measured['peak_rss_mb']:.0f} |")
    lines += ["", "## Per case", "",
              "| method | case | reference | liver Dice, unseen, last epoch | same, best epoch | tumour invented (mL) "
              "| tumour Dice, synthetic | lesions found | liver Dice, shipped model | seconds (CPU) |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for method, measured in results.items():
        for row in measured["rows"]:
            unseen = measured["unseen"].get(row["case"], {})
            lesions = f"{unseen['lesions_found']}/{unseen['lesions']}" if "lesions" in unseen else "-"
            lines.append(f"| {method} | {row['case']} | {reference_kind(row['case'])} "
                         f"| {_fmt(_unseen_case(method, measured, row, LAST))} "
                         f"| {_fmt(_unseen_case(method, measured, row, 'dice_liver'))} "
                         f"| {_fmt(unseen.get('invented_tumour_ml', math.nan), 1)} "
                         f"| {_fmt(unseen.get('synthetic_dice_tumour', math.nan))} | {lesions} "
                         f"| {float(row['dice_liver']):.3f} | {float(row['seconds']):.1f} |")
    lines += ["", "![Dice per method](REPORT.png)", "", *ablation_section()]
    return "\n".join(lines)


def ablation_section() -> List[str]:
    """What each training lever adds to the U-Net (``Resources/Models/ablation.json``, written by
    ``python scripts/train_models.py --ablation``)."""
    path = REPORTS / "ablation.json"
    if not path.is_file():
        return []
    variants = json.loads(path.read_text())
    lines = [
        "## U-Net: what each training lever adds (leave-one-out)",
        "",
        "Made by `python scripts/train_models.py --ablation`: the same folds, seed and schedule, one lever switched at a "
        "time. Liver Dice on the held-out case, best epoch / last epoch. Variants trained before the manual CHAOS case "
        "was added have two folds only (\"-\" in its column), so compare means over the same cases. Training data: *all* is the labelled real CT "
        "of the fold, EM pseudo-labels of the unlabelled CTs and the phantoms; *consensus* replaces the EM "
        "pseudo-labels by round-two ones, left out of the loss where EM and the round-one U-Net disagree. A variant "
        "with fewer training volumes makes fewer optimizer steps in the same epochs, and its moving average of the "
        "weights (`--ema`) lags further behind them: compare its figures with that in mind.",
        "",
        "| variant | totalseg_example | totalseg_dicom_example | chaos_ct_sample (manual) | mean, best epoch | mean, last epoch "
        "| training data | optimizer steps | options |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, result in variants.items():
        cases = result["cases"]
        cells = [f"{cases[c]['dice_liver']:.3f} / {cases[c][LAST]:.3f}" if c in cases else "-"
                 for c in ("totalseg_example", "totalseg_dicom_example", "chaos_ct_sample")]
        steps = "/".join(sorted({str(scores.get("steps", "?")) for scores in cases.values()}))
        lines.append(f"| {variant} | {cells[0]} | {cells[1]} | {cells[2]} | {_mean_of(cases, 'dice_liver'):.3f} "
                     f"| {_mean_of(cases, LAST):.3f} | {result.get('data', 'all')} | {steps} | `{result['options']}` |")
    return [*lines, ""]


def plot(results: Dict[str, Dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    methods = list(results)
    x = np.arange(len(methods))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(x - 0.2, [_mean_unseen(m, results[m], LAST) for m in methods], 0.4, label="LiverSeg, unseen real CT (per volume)",
           color=(221 / 255, 130 / 255, 101 / 255))
    ax.bar(x + 0.2, [PAPER[m] or 0 for m in methods], 0.4, label="paper (per slice)", color=(0.55, 0.55, 0.6))
    ax.set_xticks(x, methods)
    ax.set_ylim(0, 1)
    ax.set_ylabel("liver Dice")
    ax.legend(loc="lower right")
    ax.set_title("Liver Dice by method")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
