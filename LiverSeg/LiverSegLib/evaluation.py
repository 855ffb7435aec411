"""Evaluate a segmenter on every labelled case of an MSD dataset: CSV, Markdown and a PNG plot.

With ``synthetic_tumour_seed`` each case first gets synthetic lesions painted into its liver
(:mod:`LiverSegLib.synthetic_tumours`, in memory only): the way to measure tumour Dice and lesion
detection on real CT whose labels hold no tumour. Use a seed no training run used.
"""

from __future__ import annotations

import csv
import math
import resource
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional

import numpy as np

from .dataset import load_msd_dataset, read_case
from .metrics import MIN_LESION_MM, dice_scores, lesion_detection
from .segmenters import create_segmenter
from .volume import atomic_output
from .volumetry import liver_volumes


@dataclass
class CaseResult:
    """One case's scores; volumes as :mod:`LiverSegLib.volumetry` defines them (liver = tumours included)."""

    case: str
    dice_liver: float
    dice_tumour: float
    liver_ml: float
    reference_liver_ml: float
    tumour_ml: float
    reference_tumour_ml: float
    seconds: float
    lesions: int = 0
    lesions_found: int = 0


@dataclass
class Report:
    method: str
    dataset: str
    results: List[CaseResult]
    peak_rss_mb: float
    files: List[Path] = field(default_factory=list)
    lesion_rows: List[dict] = field(default_factory=list)
    synthetic_tumour_seed: Optional[int] = None

    @property
    def mean_dice_liver(self) -> float:
        return float(np.mean([r.dice_liver for r in self.results]))

    @property
    def mean_dice_tumour(self) -> float:
        """Mean over the cases whose reference has tumour (NaN if none has)."""
        values = [r.dice_tumour for r in self.results if not math.isnan(r.dice_tumour)]
        return float(np.mean(values)) if values else float("nan")

    @property
    def detection_rate(self) -> float:
        """Share of the reference lesions >= MIN_LESION_MM found, over all cases (NaN if none)."""
        lesions = sum(r.lesions for r in self.results)
        return sum(r.lesions_found for r in self.results) / lesions if lesions else float("nan")

    def summary(self) -> str:
        lesions = sum(r.lesions for r in self.results)
        found = f", lesions >= {MIN_LESION_MM:.0f} mm found {sum(r.lesions_found for r in self.results)}/{lesions}" if lesions else ""
        synthetic = f" with synthetic tumours (seed {self.synthetic_tumour_seed})" if self.synthetic_tumour_seed is not None else ""
        return (f"{self.method} on {len(self.results)} case(s){synthetic}: mean liver Dice {self.mean_dice_liver:.3f}, "
                f"mean tumour Dice {_fmt(self.mean_dice_tumour)}{found}, peak RSS {self.peak_rss_mb:.0f} MB")

    def markdown(self) -> str:
        lines = [
            f"# LiverSeg evaluation: `{self.method}` on `{self.dataset}`",
            "",
            "Per-volume Dice and volumes at the CT's own resolution (liver = labels 1+2, its tumours included; "
            "tumour = label 2; n/a where the reference has no tumour)."
            + (f" Synthetic tumours painted into every reference liver with seed {self.synthetic_tumour_seed}."
               if self.synthetic_tumour_seed is not None else ""),
            "",
            f"| case | Dice liver | Dice tumour | liver ml (ref) | tumour ml (ref) | lesions >= {MIN_LESION_MM:.0f} mm found | seconds |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in self.results:
            lines.append(f"| {r.case} | {r.dice_liver:.3f} | {_fmt(r.dice_tumour)} | {r.liver_ml:.0f} ({r.reference_liver_ml:.0f}) "
                         f"| {r.tumour_ml:.1f} ({r.reference_tumour_ml:.1f}) | {r.lesions_found}/{r.lesions} | {r.seconds:.1f} |")
        lines += [f"| **mean** | **{self.mean_dice_liver:.3f}** | **{_fmt(self.mean_dice_tumour)}** | | | | "
                  f"{np.mean([r.seconds for r in self.results]):.1f} |", "", f"Peak RSS of the run: {self.peak_rss_mb:.0f} MB.", ""]
        return "\n".join(lines)


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3f}"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far.

    Linux's VmHWM, not ``ru_maxrss``: Linux carries that over from the parent across fork and exec, so
    a process started by one that held a large CT would report the parent's peak.
    """
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB elsewhere
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def evaluate(
    dataset: str | Path,
    method: str,
    output: Path,
    model_path: Optional[str] = None,
    device: str = "auto",
    previews: bool = False,
    synthetic_tumour_seed: Optional[int] = None,
) -> Report:
    """Segment each labelled case, score it against its label, and write the report into ``output``
    (``<method>.csv``, ``.md``, ``.png``, and ``<method>_lesions.csv`` when the references have lesions)."""
    from tqdm import tqdm

    from .synthetic_tumours import case_rng, with_synthetic_tumours

    cases = load_msd_dataset(dataset)
    segmenter = create_segmenter(method, model_path=model_path, device=device)
    output.mkdir(parents=True, exist_ok=True)
    results, lesion_rows = [], []
    for case in tqdm(cases, desc=f"evaluate {method}", unit="case", disable=None, file=sys.stderr):
        ct, reference = read_case(case)
        if synthetic_tumour_seed is not None:
            ct, reference = with_synthetic_tumours(ct, reference, case_rng(synthetic_tumour_seed, case.name))
        started = time.perf_counter()
        labels = segmenter.segment(ct)
        seconds = time.perf_counter() - started
        predicted, truth = liver_volumes(labels, ct.voxel_ml), liver_volumes(reference.array, ct.voxel_ml)
        lesions = lesion_detection(labels, reference.array, ct.spacing)
        lesion_rows += [{"case": case.name, "diameter_mm": round(d, 1), "found": int(f)} for d, f in lesions]
        results.append(CaseResult(case.name, **dice_scores(labels, reference.array), liver_ml=predicted.liver_ml,
                                  reference_liver_ml=truth.liver_ml, tumour_ml=predicted.tumour_ml,
                                  reference_tumour_ml=truth.tumour_ml, seconds=seconds,
                                  lesions=len(lesions), lesions_found=sum(f for _, f in lesions)))
        if previews:
            from .preview import save_preview

            save_preview(ct, labels, output / f"{case.name}.png", reference=reference.array,
                         title=f"{case.name} - {method}: liver Dice {results[-1].dice_liver:.3f}")
    report = Report(method, str(dataset), results, peak_rss_mb(), lesion_rows=lesion_rows,
                    synthetic_tumour_seed=synthetic_tumour_seed)
    report.files = [_write_csv([asdict(r) for r in results], output / f"{method}.csv"),
                    _write_markdown(report, output / f"{method}.md"), _write_plot(report, output / f"{method}.png")]
    if lesion_rows:
        report.files.append(_write_csv(lesion_rows, output / f"{method}_lesions.csv"))
    return report


def _write_csv(rows: List[dict], path: Path) -> Path:
    with atomic_output(path) as temp, open(temp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return path


def _write_markdown(report: Report, path: Path) -> Path:
    with atomic_output(path) as temp:
        temp.write_text(report.markdown())
    return path


def _write_plot(report: Report, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.case for r in report.results]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(names) + 2), 4))
    ax.bar(x - 0.2, [r.dice_liver for r in report.results], 0.4, label="liver", color=(221 / 255, 130 / 255, 101 / 255))
    ax.bar(x + 0.2, [0 if math.isnan(r.dice_tumour) else r.dice_tumour for r in report.results], 0.4,
           label="tumour (0 bar where no reference tumour)", color=(0.2, 0.7, 0.3))
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("Dice (per volume)")
    ax.set_title(f"{report.method}: mean liver Dice {report.mean_dice_liver:.3f}")
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_output(path) as temp:
        fig.savefig(temp, dpi=90, format="png")
    plt.close(fig)
    return path
