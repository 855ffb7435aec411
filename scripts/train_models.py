"""Retrain every shipped model from scratch: ``make models`` (CPU or GPU; resumable; reproducible).

What it does, in order (each step skipped when its output already exists, so a rerun after an
interruption continues where it stopped; ``--resume`` is passed to training runs that have a last.pt):

1. Training data in ``WORK/data`` (never in the repository):
   - the labelled real CTs of ``../shared/data`` (read in place, listed by absolute path);
   - pseudo-labels for its unlabelled CTs made by the EM segmenter (self-training), kept only when the
     EM liver is plausible (``PSEUDO_LIVER_ML``): EM reaches liver Dice ~0.9 on the labelled cases, so
     these add real anatomy and scanners at a known, modest label noise;
   - phantoms from the project's generator, which carry the tumours the real labels lack.
2. Leave-one-out over the labelled real CTs: fold ``k`` trains on everything except real case ``k`` and
   validates on it (``validation`` list of its dataset.json). The per-case Dice of each fold is thus on a
   CT the model never saw.
3. Training options per method in ``RECIPES``; for the U-Net they include the levers against the small
   data (``LiverSegLib.augmentation``: partial-scan slabs, per-label intensity shifts; a moving average
   of the weights). ``--ablation`` trains the variants of ``ABLATION`` on the same folds and writes
   ``Resources/Models/ablation.json``: what each lever adds, shown in the report.
4. The shipped model of a method is its fold ``SHIPPED_FOLD`` (trained on the full-abdomen CT), stored
   in fp16 as ``Resources/Models/<method>.pt`` with a model card ``<method>.md`` and its sha256 in
   ``Resources/Models/models.json``.

Usage: python scripts/train_models.py [--methods unet ...] [--work out/models] [--device auto] [--jobs 2]
       python scripts/train_models.py --ablation   (what each augmentation lever adds to the U-Net)
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "LiverSeg"))

SHARED = REPOSITORY.parent / "shared" / "data"
MODELS = REPOSITORY / "Resources" / "Models"
PSEUDO_LIVER_ML = (600.0, 3500.0)
N_PHANTOMS = 4
SEED = 0
SHIPPED_FOLD = "holdout_totalseg_dicom_example"

NO_LEVERS = ["--partial-scan-prob", "0", "--label-intensity-prob", "0"]
LEVERS = ["--partial-scan-prob", "0.3", "--label-intensity-prob", "0.3"]
UNET = ["--epochs", "60", "--spacing", "2.5", "2.5", "3.0", "--patch-size", "96", "96", "64", "--samples", "4"]
EMA = ["--ema", "0.98"]
SMALL = ["--spacing", "3.0", "3.0", "3.0", "--patch-size", "64", "64", "64", "--samples", "4"]

# Per method: epochs, the options that make CPU training fit in minutes, and the augmentation levers
# (documented in the cards). The smaller networks were trained before the levers existed.
RECIPES: Dict[str, List[str]] = {
    "unet": UNET + LEVERS + EMA,
    "autoencoder": ["--epochs", "30", *SMALL, *NO_LEVERS],
    "vae": ["--epochs", "30", *SMALL, *NO_LEVERS],
    "vitautoenc": ["--epochs", "20", *SMALL, *NO_LEVERS],
}

# ``--ablation``: what each lever adds to the U-Net, by the same leave-one-out (runs/ablation/<variant>).
ABLATION: Dict[str, List[str]] = {
    "unet_no_levers": UNET + NO_LEVERS,
    "unet_partial_scan": UNET + ["--partial-scan-prob", "0.3", "--label-intensity-prob", "0"],
    "unet_label_intensity": UNET + ["--partial-scan-prob", "0", "--label-intensity-prob", "0.3"],
    "unet_both_levers": UNET + LEVERS,
    "unet_both_levers_ema": UNET + LEVERS + EMA,
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def entry(image: Path, label: Path) -> Dict[str, str]:
    return {"image": str(image.resolve()), "label": str(label.resolve())}


def prepare_data(work: Path) -> Dict[str, Path]:
    """Write the pseudo-labels, phantoms and one dataset.json per fold; return fold name -> folder."""
    from LiverSegLib.dataset import load_msd_dataset
    from LiverSegLib.metrics import volumes_ml
    from LiverSegLib.phantom import write_phantom_dataset
    from LiverSegLib.segmenters import create_segmenter
    from LiverSegLib.volume import load_ct, save_volume

    data = work / "data"
    real = load_msd_dataset(SHARED)
    extra = []

    pseudo = data / "pseudo"
    pseudo.mkdir(parents=True, exist_ok=True)
    unlabelled = json.loads((SHARED / "dataset.json").read_text()).get("unlabelled", [])
    for relative in unlabelled:
        image = SHARED / relative
        label = pseudo / image.name
        if not label.exists():
            ct = load_ct(image)
            labels = create_segmenter("em").segment(ct)
            liver_ml = volumes_ml(labels, ct.voxel_ml)["liver_ml"]
            if not PSEUDO_LIVER_ML[0] <= liver_ml <= PSEUDO_LIVER_ML[1]:
                log(f"pseudo-label of {image.name} rejected: EM liver {liver_ml:.0f} ml outside {PSEUDO_LIVER_ML}")
                continue
            labels[labels == 2] = 1  # EM's tumour calls are not trusted as training targets
            save_volume(ct.with_array(labels), label)
            log(f"pseudo-label of {image.name}: EM liver {liver_ml:.0f} ml")
        extra.append(entry(image, label))

    phantoms = data / "phantoms"
    if not (phantoms / "dataset.json").exists():
        write_phantom_dataset(phantoms, n_cases=N_PHANTOMS, seed=SEED, shape=(160, 160, 96), spacing=(2.5, 2.5, 3.0))
    for case in load_msd_dataset(phantoms):
        extra.append(entry(case.image_path, case.label_path))

    folds = {}
    for held_out in real:
        folder = data / f"holdout_{held_out.name}"
        folder.mkdir(exist_ok=True)
        spec = {
            "name": f"LiverSeg training data, {held_out.name} held out",
            "modality": {"0": "CT"},
            "labels": {"0": "background", "1": "liver", "2": "tumour"},
            "training": [entry(c.image_path, c.label_path) for c in real if c != held_out] + extra,
            "validation": [entry(held_out.image_path, held_out.label_path)],
        }
        (folder / "dataset.json").write_text(json.dumps(spec, indent=2) + "\n")
        folds[folder.name] = folder
    return folds


def train(method: str, options: List[str], fold: str, dataset: Path, run: Path, device: str, threads: int) -> Path:
    """One training run of ``method`` with ``options`` on a fold, in ``run``; resumed or skipped when begun or done."""
    if (run / "done.json").exists():
        return run
    command = [sys.executable, "-m", "LiverSegLib.cli", "train", str(dataset), "--method", method, "-o", str(run),
               "--seed", str(SEED), "--device", device, *options]
    if (run / "last.pt").exists():
        command.append("--resume")
    log(f"training {method} on {fold}: {' '.join(command[3:])}")
    started = time.perf_counter()
    events = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPOSITORY,
                          env={**os.environ, "PYTHONPATH": str(REPOSITORY / "LiverSeg"),
                               "OMP_NUM_THREADS": str(threads)}) as process:
        for line in process.stdout:
            if line.startswith("{"):
                event = json.loads(line)
                events.append(event)
                if event["event"] == "epoch" and event["epoch"] % 10 == 0:
                    log(f"  {run.parent.name}/{fold} epoch {event['epoch']}: loss {event['loss']:.3f}, liver Dice {event['dice_liver']}")
    if process.returncode:
        raise SystemExit(f"training {method} on {fold} failed (exit {process.returncode}); rerun to resume")
    cases = {e["case"]: e for e in events if e["event"] == "case"}
    (run / "done.json").write_text(json.dumps({"seconds": time.perf_counter() - started, "cases": cases}, indent=2))
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description="Retrain the shipped models from scratch.")
    parser.add_argument("--methods", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--work", type=Path, default=REPOSITORY / "out" / "models")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--jobs", type=int, default=1,
                        help="folds trained at once, sharing the CPU cores equally")
    parser.add_argument("--ablation", action="store_true", help="train the U-Net variants of ABLATION instead")
    args = parser.parse_args()
    if not (SHARED / "dataset.json").is_file():
        raise SystemExit(f"the real CT sample is needed at {SHARED}")
    folds = prepare_data(args.work)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)

    def train_folds(method: str, options: List[str], runs: Path) -> None:
        with ThreadPoolExecutor(args.jobs) as pool:
            for done in [pool.submit(train, method, options, fold, dataset, runs / fold, args.device, threads)
                         for fold, dataset in folds.items()]:
                done.result()

    if args.ablation:
        summary = {}
        for variant, options in ABLATION.items():
            # The shipped recipe is one of the variants: its runs are shared with `make models`.
            runs = args.work / "runs" / ("unet" if options == RECIPES["unet"] else f"ablation/{variant}")
            train_folds("unet", options, runs)
            summary[variant] = {"options": " ".join(options), "cases": fold_scores(runs)}
        (MODELS / "ablation.json").write_text(json.dumps(summary, indent=2) + "\n")
        log(f"wrote {MODELS / 'ablation.json'}")
        return 0
    for method in args.methods:
        train_folds(method, RECIPES[method], args.work / "runs" / method)
        ship(method, args.work)
    return 0


def ship(method: str, work: Path) -> None:
    """Store the shipped fold's best checkpoint in fp16 with its card and sha256."""
    from LiverSegLib.checkpoint import Checkpoint

    runs = work / "runs" / method
    checkpoint = Checkpoint.load(runs / SHIPPED_FOLD / "best.pt", method=method)
    checkpoint.state_dict = {k: (v.half() if v.is_floating_point() else v) for k, v in checkpoint.state_dict.items()}
    checkpoint.resume = None
    checkpoint.metrics = {**checkpoint.metrics, "cross_validation": fold_scores(runs)}
    target = MODELS / f"{method}.pt"
    MODELS.mkdir(parents=True, exist_ok=True)
    checkpoint.save(target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    manifest_path = MODELS / "models.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest[method] = {"file": target.name, "sha256": digest}
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (MODELS / f"{method}.md").write_text(model_card(method, checkpoint, digest, target))
    log(f"shipped {target} ({target.stat().st_size / 2**20:.1f} MB, sha256 {digest[:12]}...)")


def fold_scores(runs: Path) -> Dict[str, Dict[str, float]]:
    """Held-out case -> its liver Dice at the best epoch (chosen on that case: optimistic) and at the last
    epoch (no choice made), and the fold's training minutes."""
    scores = {}
    for fold in sorted(runs.iterdir()):
        done = json.loads((fold / "done.json").read_text())
        with open(fold / "metrics.csv") as handle:
            epochs = list(csv.DictReader(handle))
        # Summed over the epochs (training and validation), so time before an interruption counts too.
        minutes = round(sum(float(epoch["seconds"]) for epoch in epochs) / 60, 1)
        for case, best in done["cases"].items():
            scores[case] = {"fold": fold.name, "dice_liver": best["dice_liver"],
                            "dice_liver_last_epoch": round(float(epochs[-1]["dice_liver"]), 4),
                            "dice_tumour": best["dice_tumour"], "minutes": minutes}
    return scores


def lever_lines(options: List[str]) -> List[str]:
    """Model-card lines saying which of our levers a recipe used (see LiverSegLib.augmentation)."""
    def value(flag: str) -> float:
        return float(options[options.index(flag) + 1]) if flag in options else 0.0

    levers = [
        ("--partial-scan-prob", "partial-scan slabs (3-12 cm through the liver), probability {}: the held-out 20-slice CT "
                                "is such a slab"),
        ("--label-intensity-prob", "per-label intensity shifts (SynthSeg's idea), probability {}: contrast phases differ "
                                   "between the CTs"),
        ("--ema", "moving average of the weights, decay {} per step: steadies the epoch-to-epoch swings"),
    ]
    return [f"- {'On' if value(flag) else 'Off'}: {text.format(value(flag)) if value(flag) else text.split(',')[0]}."
            for flag, text in levers]


def model_card(method: str, checkpoint, digest: str, target: Path) -> str:
    import monai
    import torch

    rows = []
    for case, scores in checkpoint.metrics["cross_validation"].items():
        tumour = scores["dice_tumour"] if scores["dice_tumour"] is not None else "n/a"
        rows.append(f"| {scores['fold']} | {case} | {scores['dice_liver']:.3f} | {scores['dice_liver_last_epoch']:.3f} "
                    f"| {tumour} | {scores['minutes']:.1f} |")
    shipped = next(scores for scores in checkpoint.metrics["cross_validation"].values() if scores["fold"] == SHIPPED_FOLD)
    return "\n".join([
        f"# LiverSeg model card: `{method}`",
        "",
        f"- File: `{target.name}` ({target.stat().st_size / 2**20:.1f} MB, fp16 weights), sha256 `{digest}`.",
        f"- Network and preprocessing: `{json.dumps(checkpoint.config.to_dict())}`.",
        f"- Shipped fold: `{SHIPPED_FOLD}` (trained {shipped['minutes']:.1f} min).",
        f"- Trained by `make models` (`scripts/train_models.py`, seed {SEED}) with options `{' '.join(RECIPES[method])}` "
        f"on {platform.processor() or platform.machine()}, torch {torch.__version__}, MONAI {monai.__version__}, Python {platform.python_version()}.",
        "",
        "## Data",
        "- Labelled real CT from `../shared/data` (TotalSegmentator example CTs, Apache-2.0, "
        "doi:10.1148/ryai.230024): their liver labels are TotalSegmentator predictions, not manual annotations.",
        "- Pseudo-labels made by LiverSeg's EM segmenter on the unlabelled CTs (TCIA Colorectal-Liver-Metastases, "
        "doi:10.7937/QXK2-QG03, and HCC-TACE-Seg, doi:10.7937/TCIA.5FNA-0924; CC BY 4.0; cite as in `../shared/data/README.md`).",
        f"- {N_PHANTOMS} synthetic phantoms (LiverSegLib.phantom, seed {SEED}), the only source of tumour labels.",
        "",
        "## Levers against the small data",
        "- Self-training: EM pseudo-labels of the unlabelled CTs, each kept only when its liver is "
        f"{PSEUDO_LIVER_ML[0]:.0f}-{PSEUDO_LIVER_ML[1]:.0f} ml (a case-level confidence filter; EM's tumour calls are dropped).",
        "- MONAI's spatial (rotation, scaling) and intensity (scale, shift, noise) augmentation.",
        *lever_lines(RECIPES[method]),
        "- What each lever adds to the U-Net, by the same leave-one-out: `REPORT.md`, section *what each training lever adds*.",
        "",
        "## Leave-one-out validation (each row: a real CT the model never saw)",
        "",
        "| fold | held-out case | Dice liver, best epoch | Dice liver, last epoch | Dice tumour | training minutes |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "Dice per volume at the CT's own resolution. *Best epoch*: the epoch with the best Dice on that same held-out "
        "case (with two labelled CTs there is no third to select on), optimistic by that choice; the shipped weights are "
        "that epoch's. *Last epoch*: the final weights, no choice made. The references "
        "are TotalSegmentator predictions and hold no tumour, so tumour Dice is not measurable on real CT here.",
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
