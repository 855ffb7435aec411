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
3. Training options and data per method in ``RECIPES`` (the U-Net's is the ablation variant
   ``SHIPPED_UNET``, the other networks' ``ROUND_ONE``); for every network they include the levers against the small
   data (``LiverSegLib.augmentation``: partial-scan slabs, per-label intensity shifts; a moving average
   of the weights). ``--ablation`` trains the variants of ``ABLATION`` on the same folds and writes
   ``Resources/Models/ablation.json``: what each lever adds, shown in the report. Besides the options,
   a variant may change the training data (``DATA``): without the pseudo-labels, without the phantoms,
   or with round-two pseudo-labels filtered voxel by voxel (:func:`consensus_pseudo_labels`).
4. The shipped model of a method is its fold ``SHIPPED_FOLD`` (trained on the full-abdomen CT), stored
   in fp16 as ``LiverSeg/LiverSegLib/models/<method>.pt`` (inside the package, so it installs with the
   code) with a model card ``<method>.md`` and its sha256 in ``models.json``.

Usage: python scripts/train_models.py [--methods unet ...] [--work out/models] [--device auto] [--jobs 2]
       python scripts/train_models.py --ablation [VARIANT ...]   (what each lever adds to the U-Net)
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
from typing import Any, Dict, List, Optional, Tuple

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "LiverSeg"))
from LiverSegLib.checkpoint import MANIFEST, MODELS_DIR  # noqa: E402

SHARED = REPOSITORY.parent / "shared" / "data"
REPORTS = REPOSITORY / "Resources" / "Models"
"""Where the ablation figures go (``ablation.json``, beside the report); the models go to ``MODELS_DIR``."""
PSEUDO_LIVER_ML = (600.0, 3500.0)
N_PHANTOMS = 4
SEED = 0
SHIPPED_FOLD = "holdout_totalseg_dicom_example"
MANUAL_REFERENCES = {"chaos_ct_sample"}
"""The labelled cases of ../shared/data whose label a person drew (CHAOS); the others are TotalSegmentator's."""


def reference_kind(case: str) -> str:
    return "manual (CHAOS)" if case in MANUAL_REFERENCES else "model (TotalSegmentator)"

NO_LEVERS = ["--partial-scan-prob", "0", "--label-intensity-prob", "0"]
LEVERS = ["--partial-scan-prob", "0.3", "--label-intensity-prob", "0.3"]
NO_TUMOURS = ["--synthetic-tumour-prob", "0"]
TUMOURS = ["--synthetic-tumour-prob", "0.5"]
"""Synthetic tumours painted into the training livers (LiverSegLib.synthetic_tumours): the real labels have none."""


def unet_options(epochs: int = 60) -> List[str]:
    """The U-Net's schedule and grid: 2.5 x 2.5 x 3 mm, 96 x 96 x 64 tiles, 4 patches per volume and step."""
    return ["--epochs", str(epochs), "--spacing", "2.5", "2.5", "3.0", "--patch-size", "96", "96", "64", "--samples", "4"]


UNET = unet_options()
EMA = ["--ema", "0.98"]

# The training data besides the labelled real CT of the held-out fold: the shipped models use "all".
# pseudo_labels: "em" (round one), "consensus" (round two, see consensus_pseudo_labels) or None.
DATA: Dict[str, Dict[str, Any]] = {
    "all": {"pseudo_labels": "em", "phantoms": True},
    "no_pseudo_labels": {"pseudo_labels": None, "phantoms": True},
    "no_phantoms": {"pseudo_labels": "em", "phantoms": False},
    "consensus": {"pseudo_labels": "consensus", "phantoms": True},
}

# ``--ablation``: what each lever adds to the U-Net, by the same leave-one-out (runs/ablation/<variant>):
# variant -> (training options, training data).
ABLATION: Dict[str, Tuple[List[str], str]] = {
    "unet_no_levers": (UNET + NO_LEVERS + NO_TUMOURS, "all"),
    "unet_partial_scan": (UNET + ["--partial-scan-prob", "0.3", "--label-intensity-prob", "0"] + NO_TUMOURS, "all"),
    "unet_label_intensity": (UNET + ["--partial-scan-prob", "0", "--label-intensity-prob", "0.3"] + NO_TUMOURS, "all"),
    "unet_both_levers": (UNET + LEVERS + NO_TUMOURS, "all"),
    "unet_both_levers_ema": (UNET + LEVERS + EMA + NO_TUMOURS, "all"),
    "unet_no_pseudo_labels": (UNET + LEVERS + EMA + NO_TUMOURS, "no_pseudo_labels"),
    "unet_no_phantoms": (UNET + LEVERS + EMA + NO_TUMOURS, "no_phantoms"),
    "unet_consensus_pseudo_labels": (UNET + LEVERS + EMA + NO_TUMOURS, "consensus"),
    "unet_100_epochs": (unet_options(100) + LEVERS + EMA + NO_TUMOURS, "all"),
    "unet_consensus_100_epochs": (unet_options(100) + LEVERS + EMA + NO_TUMOURS, "consensus"),
    "unet_synthetic_tumours": (UNET + LEVERS + EMA + TUMOURS, "all"),
    "unet_tumour_patches": (unet_options(40) + LEVERS + EMA + TUMOURS + ["--tumour-patches", "0.33"], "all"),
    "unet_tumour_loss": (UNET + LEVERS + EMA + TUMOURS + ["--tumour-patches", "0.33", "--batch-dice", "--tumour-weight", "3"], "all"),
    # Fine-tuned from the fold's shipped-recipe model (FINE_TUNED_FROM), every volume with lesions and half
    # the patches centred on one: 60 epochs from scratch leave the tumour class at chance (its softmax
    # ~0.06 inside lesions) because only ~0.01% of the voxels seen are tumour.
    "unet_tumour_finetune": (unet_options(40) + LEVERS + EMA + ["--lr", "3e-4", "--synthetic-tumour-prob", "1.0",
                             "--tumour-patches", "0.5", "--batch-dice", "--tumour-weight", "3"], "all"),
}
SHIPPED_UNET = "unet_synthetic_tumours"
"""The ablation variant whose model ships (the best measured); its runs are those of ``make models``."""
FINE_TUNED_FROM = {"unet_tumour_finetune": "unet_synthetic_tumours"}
"""Variants that start from the weights (``--init-weights``) of another variant's run on the same fold."""
ROUND_ONE = "unet_both_levers_ema"
"""The variant whose fold models make the round-two pseudo-labels (:func:`consensus_pseudo_labels`)."""

# Per method: (training options, training data). Every network gets the same grid, data, levers and
# epochs as the shipped U-Net, so the methods are compared on equal terms.
RECIPES: Dict[str, Tuple[List[str], str]] = {method: ABLATION[SHIPPED_UNET] for method in ("unet", "autoencoder", "vae", "vitautoenc")}


def runs_folder(work: Path, method: str, variant: Optional[str] = None) -> Path:
    """Where a method's leave-one-out runs live: ``runs/<method>`` for the shipped recipe (a U-Net variant
    equal to it included), ``runs/ablation/<variant>`` for the other U-Net variants."""
    return work / "runs" / (method if variant in (None, SHIPPED_UNET) else f"ablation/{variant}")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def entry(image: Path, label: Path) -> Dict[str, str]:
    return {"image": str(image.resolve()), "label": str(label.resolve())}


def em_pseudo_labels(work: Path) -> List[Dict[str, str]]:
    """EM pseudo-labels of the unlabelled CTs (self-training, round one), kept when their liver is plausible."""
    from LiverSegLib.volumetry import liver_volumes
    from LiverSegLib.preprocessing import UNSURE
    from LiverSegLib.segmenters import create_segmenter
    from LiverSegLib.volume import load_ct, save_volume

    pseudo = work / "data" / "pseudo"
    pseudo.mkdir(parents=True, exist_ok=True)
    entries = []
    for relative in json.loads((SHARED / "dataset.json").read_text()).get("unlabelled", []):
        image = SHARED / relative
        label = pseudo / image.name
        if not label.exists():
            ct = load_ct(image)
            labels = create_segmenter("em").segment(ct)
            liver_ml = liver_volumes(labels, ct.voxel_ml).liver_ml
            if not PSEUDO_LIVER_ML[0] <= liver_ml <= PSEUDO_LIVER_ML[1]:
                log(f"pseudo-label of {image.name} rejected: EM liver {liver_ml:.0f} ml outside {PSEUDO_LIVER_ML}")
                continue
            # EM's tumour calls are not trusted as tumour, and they are no liver either: the loss ignores them.
            labels[labels == 2] = UNSURE
            save_volume(ct.with_array(labels), label)
            log(f"pseudo-label of {image.name}: EM liver {liver_ml:.0f} ml")
        entries.append(entry(image, label))
    return entries


def phantom_cases(work: Path) -> List[Dict[str, str]]:
    """The project's synthetic phantoms, the only training cases with tumours."""
    from LiverSegLib.dataset import load_msd_dataset
    from LiverSegLib.phantom import write_phantom_dataset

    phantoms = work / "data" / "phantoms"
    if not (phantoms / "dataset.json").exists():
        write_phantom_dataset(phantoms, n_cases=N_PHANTOMS, seed=SEED, shape=(160, 160, 96), spacing=(2.5, 2.5, 3.0))
    return [entry(case.image_path, case.label_path) for case in load_msd_dataset(phantoms)]


def consensus_pseudo_labels(work: Path, fold: str) -> List[Dict[str, str]]:
    """Self-training, round two, with a voxel-level confidence filter, for one fold.

    The fold's round-one U-Net (variant ``ROUND_ONE``, trained with EM's pseudo-labels; it never saw the
    fold's held-out CT) segments each unlabelled CT again. Where it and EM agree, that is the label;
    where they disagree the voxel is ``UNSURE`` and the loss ignores it: a voxel two different methods
    label alike is more likely right, and EM's leaks into neighbouring organs are what they disagree on.
    """
    import numpy as np
    from LiverSegLib.preprocessing import LIVER, UNSURE
    from LiverSegLib.segmenters import create_segmenter
    from LiverSegLib.volume import load_ct, load_volume, save_volume

    model = runs_folder(work, "unet", ROUND_ONE) / fold / "last.pt"
    if not model.is_file():
        raise SystemExit(f"{model} is missing: train round one first (--ablation {ROUND_ONE})")
    folder = work / "data" / "consensus" / fold / "pseudo"
    folder.mkdir(parents=True, exist_ok=True)
    segmenter = None
    entries = []
    for em_entry in em_pseudo_labels(work):
        image = Path(em_entry["image"])
        label = folder / image.name
        if not label.exists():
            segmenter = segmenter or create_segmenter("unet", model_path=str(model))
            ct = load_ct(image)
            em_liver = load_volume(em_entry["label"]).array == LIVER
            unet_liver = segmenter.segment(ct) >= LIVER
            consensus = np.where(em_liver == unet_liver, em_liver.astype(np.uint8), np.uint8(UNSURE))
            save_volume(ct.with_array(consensus), label)
            log(f"consensus pseudo-label of {image.name} ({fold}): {(consensus == UNSURE).sum() * ct.voxel_ml:.0f} ml unsure, "
                f"{(consensus == LIVER).sum() * ct.voxel_ml:.0f} ml liver")
        entries.append(entry(image, label))
    return entries


def prepare_data(work: Path, data: str = "all") -> Dict[str, Path]:
    """Write one dataset.json per leave-one-out fold for the training data ``data`` (a key of ``DATA``);
    return fold name -> folder."""
    from LiverSegLib.dataset import load_msd_dataset

    real = load_msd_dataset(SHARED)
    pseudo_labels = DATA[data]["pseudo_labels"]
    phantoms = phantom_cases(work) if DATA[data]["phantoms"] else []
    em_labels = em_pseudo_labels(work) if pseudo_labels == "em" else []  # the same for every fold
    root = work / "data" if data == "all" else work / "data" / data
    folds = {}
    for held_out in real:
        folder = root / f"holdout_{held_out.name}"
        folder.mkdir(parents=True, exist_ok=True)
        if pseudo_labels == "consensus":
            extra = consensus_pseudo_labels(work, folder.name) + phantoms
        else:
            extra = em_labels + phantoms
        spec = {
            "name": f"LiverSeg training data ({data}), {held_out.name} held out",
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
    parser.add_argument("--ablation", nargs="*", choices=list(ABLATION), metavar="VARIANT",
                        help="train the U-Net variants of ABLATION (all when none is named) instead")
    args = parser.parse_args()
    if not (SHARED / "dataset.json").is_file():
        raise SystemExit(f"the real CT sample is needed at {SHARED}")
    threads = max(1, (os.cpu_count() or 1) // args.jobs)

    def train_folds(method: str, variant: Optional[str] = None) -> None:
        options, data = ABLATION[variant] if variant else RECIPES[method]
        if DATA[data]["pseudo_labels"] == "consensus":
            train_folds("unet", ROUND_ONE)  # its models make the round-two pseudo-labels
        base = FINE_TUNED_FROM.get(variant)
        if base:
            train_folds(method, base)
        folds = prepare_data(args.work, data)
        runs = runs_folder(args.work, method, variant)

        def fold_options(fold: str) -> List[str]:
            if not base:
                return options
            return options + ["--init-weights", str(runs_folder(args.work, method, base) / fold / "last.pt")]

        with ThreadPoolExecutor(args.jobs) as pool:
            for done in [pool.submit(train, method, fold_options(fold), fold, dataset, runs / fold, args.device, threads)
                         for fold, dataset in folds.items()]:
                done.result()

    if args.ablation is not None:
        # Variants whose runs are not in this work folder keep the figures recorded when they were trained.
        path = REPORTS / "ablation.json"
        summary = json.loads(path.read_text()) if path.is_file() else {}
        for variant, (options, data) in ABLATION.items():
            if variant in (args.ablation or ABLATION):
                train_folds("unet", variant)
            runs = runs_folder(args.work, "unet", variant)
            if runs.is_dir():
                summary[variant] = {"options": " ".join(options), "data": data, "cases": fold_scores(runs)}
        path.write_text(json.dumps(summary, indent=2) + "\n")
        log(f"wrote {path}")
        return 0
    for method in args.methods:
        train_folds(method, SHIPPED_UNET if method == "unet" else None)
        ship(method, args.work)
    return 0


def ship(method: str, work: Path) -> None:
    """Store the shipped fold's last-epoch checkpoint in fp16 with its card and sha256 (the last epoch: the best
    one would be chosen on the fold's held-out case, the only figure the card can give on unseen CT)."""
    from LiverSegLib.checkpoint import Checkpoint

    runs = runs_folder(work, method)
    checkpoint = Checkpoint.load(runs / SHIPPED_FOLD / "last.pt", method=method)
    checkpoint.state_dict = {k: (v.half() if v.is_floating_point() else v) for k, v in checkpoint.state_dict.items()}
    checkpoint.resume = None
    scores = fold_scores(runs, method)
    held_out = SHIPPED_FOLD.removeprefix("holdout_")
    # What test_shipped_models reproduces: the shipped weights' Dice on the case their fold never saw.
    shipped = {"case": held_out, "epoch": "last", "dice_liver": scores[held_out]["dice_liver_last_epoch"]}
    checkpoint.metrics = {**checkpoint.metrics, "cross_validation": scores, "shipped": shipped}
    target = MODELS_DIR / f"{method}.pt"
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    checkpoint.save(target)
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    manifest_path = MODELS_DIR / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    manifest[method] = {"file": target.name, "sha256": digest}
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    (MODELS_DIR / f"{method}.md").write_text(model_card(method, checkpoint, digest, target))
    log(f"shipped {target} ({target.stat().st_size / 2**20:.1f} MB, sha256 {digest[:12]}...)")


def held_out_measures(method: str, model: Path, case_name: str) -> Dict[str, Any]:
    """The fold's last-epoch model on the case it never saw, with today's code (post-processing included):
    liver Dice, the tumour it invents there (the labelled CTs hold no tumour), and on the same CT with
    synthetic tumours of ``EVALUATION_SEED`` (never drawn in training) the tumour and liver Dice and the
    lesions >= 10 mm found."""
    from LiverSegLib.dataset import load_msd_dataset, read_case
    from LiverSegLib.metrics import dice_scores, lesion_detection
    from LiverSegLib.segmenters import create_segmenter
    from LiverSegLib.synthetic_tumours import EVALUATION_SEED, case_rng, with_synthetic_tumours

    case = next(c for c in load_msd_dataset(SHARED) if c.name == case_name)
    segmenter = create_segmenter(method, model_path=str(model))
    ct, reference = read_case(case)
    labels = segmenter.segment(ct)
    plain = {"dice_liver_last_epoch": round(dice_scores(labels, reference.array)["dice_liver"], 4),
             "invented_tumour_ml": round(float((labels == 2).sum() * ct.voxel_ml), 1)}
    ct, reference = with_synthetic_tumours(ct, reference, case_rng(EVALUATION_SEED, case.name))
    with_tumours = segmenter.segment(ct)
    synthetic = dice_scores(with_tumours, reference.array)
    lesions = lesion_detection(with_tumours, reference.array, ct.spacing)
    return {**plain,
            "synthetic_dice_liver": round(synthetic["dice_liver"], 4),
            "synthetic_dice_tumour": round(synthetic["dice_tumour"], 4),
            "lesions": len(lesions), "lesions_found": sum(found for _, found in lesions)}


def fold_scores(runs: Path, method: str = "unet") -> Dict[str, Dict[str, float]]:
    """Held-out case -> its liver Dice at the best epoch (chosen on that case, with the code of training
    time: optimistic) and the last epoch's figures of :func:`held_out_measures` (no choice made), the fold's
    training minutes and optimizer steps."""
    from LiverSegLib.checkpoint import Checkpoint

    scores = {}
    for fold in sorted(runs.iterdir()):
        if not (fold / "done.json").is_file():
            continue  # still training
        done = json.loads((fold / "done.json").read_text())
        with open(fold / "metrics.csv") as handle:
            epochs = list(csv.DictReader(handle))
        # Summed over the epochs (training and validation), so time before an interruption counts too.
        minutes = round(sum(float(epoch["seconds"]) for epoch in epochs) / 60, 1)
        # The same epochs over fewer training volumes are fewer steps (and a moving average lags more).
        optimizer = Checkpoint.load(fold / "last.pt").resume["optimizer"]["state"]
        steps = int(next(iter(optimizer.values()))["step"])
        for case, best in done["cases"].items():
            scores[case] = {"fold": fold.name, "dice_liver": best["dice_liver"], "dice_tumour": best["dice_tumour"],
                            **held_out_measures(method, fold / "last.pt", case), "minutes": minutes, "steps": steps}
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
        ("--synthetic-tumour-prob", "synthetic tumours painted into the training livers (Hu et al. 2023), probability {}: "
                                    "no real label here holds a tumour"),
    ]
    return [f"- {'On' if value(flag) else 'Off'}: {text.format(value(flag)) if value(flag) else text.split(',')[0]}."
            for flag, text in levers]


def model_card(method: str, checkpoint, digest: str, target: Path) -> str:
    import monai
    import torch

    from LiverSegLib.synthetic_tumours import EVALUATION_SEED

    rows = []
    for case, scores in checkpoint.metrics["cross_validation"].items():
        rows.append(f"| {scores['fold']} | {case} | {reference_kind(case)} | {scores['dice_liver']:.3f} "
                    f"| **{scores['dice_liver_last_epoch']:.3f}** | {scores['invented_tumour_ml']:.1f} "
                    f"| {scores['synthetic_dice_tumour']:.3f} | {scores['lesions_found']}/{scores['lesions']} "
                    f"| {scores['minutes']:.1f} |")
    shipped = next(scores for scores in checkpoint.metrics["cross_validation"].values() if scores["fold"] == SHIPPED_FOLD)
    options, data = RECIPES[method]
    return "\n".join([
        f"# LiverSeg model card: `{method}`",
        "",
        f"- File: `{target.name}` ({target.stat().st_size / 2**20:.1f} MB, fp16 weights), sha256 `{digest}`.",
        f"- Network and preprocessing: `{json.dumps(checkpoint.config.to_dict())}`.",
        f"- Shipped fold: `{SHIPPED_FOLD}` (trained {shipped['minutes']:.1f} min).",
        f"- Trained by `make models` (`scripts/train_models.py`, seed {SEED}) with options `{' '.join(options)}` "
        f"on {platform.processor() or platform.machine()}, torch {torch.__version__}, MONAI {monai.__version__}, Python {platform.python_version()}.",
        "",
        "## Data",
        "- Labelled real CT from `../shared/data`: the two TotalSegmentator example CTs (Apache-2.0, "
        "doi:10.1148/ryai.230024), whose liver labels are TotalSegmentator predictions, not manual annotations; "
        "and the CHAOS challenge's sample CT with its **manual** liver label (CC BY-SA 4.0, Kavur A.E. et al., "
        "CHAOS Challenge, Medical Image Analysis 2021, doi:10.1016/j.media.2020.101950, and the data set, "
        "doi:10.5281/zenodo.3362844; see "
        "`../shared/data/licences/CHAOS-CC-BY-SA-4.0.md`). Weights trained on it carry its licence and attribution.",
        "- Pseudo-labels made by LiverSeg's EM segmenter on the unlabelled CTs (TCIA Colorectal-Liver-Metastases, "
        "doi:10.7937/QXK2-QG03, and HCC-TACE-Seg, doi:10.7937/TCIA.5FNA-0924; CC BY 4.0; cite as in `../shared/data/README.md`).",
        f"- {N_PHANTOMS} synthetic phantoms (LiverSegLib.phantom, seed {SEED}) with tumours, and synthetic tumours "
        "painted into the real livers during training (no real CT here has a tumour label).",
        "",
        "## Levers against the small data",
        "- Self-training: EM pseudo-labels of the unlabelled CTs, each kept only when its liver is "
        f"{PSEUDO_LIVER_ML[0]:.0f}-{PSEUDO_LIVER_ML[1]:.0f} ml (a case-level confidence filter; EM's tumour calls are "
        "left out of the loss).",
        *(["- Self-training, round two: the pseudo-labels are kept only where EM and the fold's round-one U-Net "
           f"(`{ROUND_ONE}`) agree; the voxels where they disagree are left out of the loss (a voxel-level confidence filter)."]
          if DATA[data]["pseudo_labels"] == "consensus" else []),
        "- MONAI's spatial (rotation, scaling) and intensity (scale, shift, noise) augmentation.",
        *lever_lines(options),
        "- What each lever adds to the U-Net, by the same leave-one-out: `REPORT.md`, section *what each training lever adds*.",
        "",
        "## Leave-one-out validation (each row: a real CT the model never saw)",
        "",
        "| fold | held-out case | reference | Dice liver, best epoch | Dice liver, last epoch | tumour invented (mL) "
        f"| Dice tumour, synthetic tumours | lesions >= 10 mm found | training minutes |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "Dice per volume at the CT's own resolution. *Best epoch*: the epoch with the best Dice on that same held-out "
        "case, optimistic by that choice (and measured with the post-processing of training time). *Last epoch*: the "
        "final weights, no choice made, measured again when the model was shipped; the shipped weights are the last "
        "epoch's. No reference holds a tumour: *tumour invented* is what the model labels tumour on the held-out CT "
        "(a true error only where the liver is known to be healthy: CHAOS); the tumour Dice and lesions are measured on "
        f"the same CT with synthetic tumours of seed {EVALUATION_SEED}, never drawn in training "
        "(`liverseg evaluate --synthetic-tumours`).",
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
