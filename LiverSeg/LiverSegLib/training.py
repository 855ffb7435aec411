"""``liverseg train``: train a deep segmenter on an MSD Task03-layout dataset.

    liverseg train DATASET_DIR --method unet -o RUN_DIR [--epochs N] [--resume] [--device auto|cpu|cuda]
                               [--seed S] [--preset default|paper] [--spacing R A S] [--patch-size X Y Z] ...

The pipeline is MONAI's canonical one: cases read and put on the working grid once (with the very
transforms inference uses, :func:`~LiverSegLib.segmenters.deep.preprocessing_transforms`; kept in RAM
and in a disk cache that later runs reuse, :class:`PreprocessedCases`), then per step class-balanced
patches (RandCropByPosNegLabeld) with spatial and intensity augmentation
(:mod:`~LiverSegLib.augmentation`, with our partial-scan and per-label intensity transforms), Dice-CE loss (plus KL for the VAE), AdamW with a cosine schedule (RMSprop for the paper preset), mixed
precision on CUDA, optionally a moving average of the weights (``--ema``). After each epoch every held-out volume is segmented whole, by sliding windows, and
scored at the CT's own resolution.

Output, for a GUI to follow (rank 0 only): one JSON object per line on stdout::

    {"event": "epoch", "epoch": 1, "loss": 0.52, "dice_liver": 0.81, "dice_tumour": null, "seconds": 12.3}
    {"event": "case", "case": "liver_7", "dice_liver": 0.95, "dice_tumour": 0.61}      (best epoch, at the end)
    {"event": "done", "checkpoint": "RUN_DIR/best.pt"}

(NaN, an undefined Dice, is null), the same per-epoch figures appended to ``RUN_DIR/metrics.csv``, and
``RUN_DIR/best.pt`` (the epoch with the best mean of validation liver and tumour Dice) and
``RUN_DIR/last.pt`` (also the optimizer, scheduler and epoch ``--resume`` needs), each written
atomically. A progress bar goes to stderr when stderr is a terminal.

Resuming is exact: the randomness of each epoch (patch choice, augmentation, shuffling) is derived
from (seed, epoch, rank) alone, so a run killed at any point and resumed from last.pt finishes with
the weights an uninterrupted run would have had (bit for bit on the CPU; on a GPU up to the
non-deterministic order of some cuDNN reductions).

Scale-out: the same command under torchrun trains with DistributedDataParallel (NCCL on GPUs, gloo on
CPUs); a DistributedSampler shares the volumes, validation cases are shared and their scores gathered,
and rank 0 alone writes::

    torchrun --standalone --nproc_per_node 2 -m LiverSegLib.cli train DATASET_DIR --method unet -o RUN_DIR
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import os
import random
import sys
import tempfile
import time
import warnings
from copy import deepcopy
from dataclasses import asdict, dataclass
from multiprocessing.pool import ThreadPool
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

import monai
import numpy as np
import torch
import torch.distributed as dist
from monai.data import DataLoader, MetaTensor, PersistentDataset, list_data_collate
from monai.transforms import Compose, RandomizableTrait, Transform
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

from . import __version__
from .augmentation import training_transforms
from .checkpoint import Checkpoint, ModelConfig, shipped_model_path
from .dataset import Case, file_sha256, load_msd_dataset, read_case
from .errors import LiverSegError
from .metrics import dice_scores
from .segmenters.deep import (
    DEEP_METHODS,
    DeepModel,
    DeepSegmenter,
    choose_device,
    deep_segmenter_class,
    is_out_of_memory,
    volume_to_metatensor,
)
from .volume import Volume, atomic_output, load_volume

BEST, LAST, METRICS = "best.pt", "last.pt", "metrics.csv"
EVENT_COLUMNS = ("epoch", "loss", "dice_liver", "dice_tumour", "seconds")
METRIC_COLUMNS = EVENT_COLUMNS + ("learning_rate",)
PARTIAL_SCAN_PROB = 0.3
"""Default ``--partial-scan-prob`` of the presets that resample to a spacing (the shipped U-Net's)."""
SYNTHETIC_TUMOUR_PROB = 0.5
"""Default ``--synthetic-tumour-prob``: half the volumes keep a tumour-free liver, so healthy livers stay healthy."""


# --------------------------------------------------------------------------------------------- arguments


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``liverseg train`` arguments to ``parser``."""
    add = parser.add_argument
    add("dataset", metavar="DATASET_DIR", help="folder with dataset.json, imagesTr/ and labelsTr/ (MSD Task03 layout)")
    add("--method", required=True, choices=DEEP_METHODS, help="network to train")
    add("-o", "--output", required=True, metavar="RUN_DIR", help="folder for best.pt, last.pt and metrics.csv")
    add("--preset", default="default", choices=("default", "paper"),
        help="default: ours (fixed mm grid, patches); paper: 128x128x64 resize, RMSprop lr 1e-5, 80 epochs")
    add("--epochs", type=_positive_int, help="passes over the training volumes (default: the preset's)")
    add("--resume", action="store_true", help="continue the run in RUN_DIR from its last.pt, with its settings")
    add("--init-weights", metavar="CHECKPOINT",
        help="start from the weights of a checkpoint of the same method ('shipped': the shipped model) instead of "
             "random ones: fine-tuning; its grid and network are kept, with a fresh optimizer and schedule")
    add("--device", default="auto", help="auto (GPU if any), cpu, cuda or cuda:N")
    add("--seed", type=int, default=0, help="seed of the split, initial weights and augmentation")
    add("--spacing", type=float, nargs=3, metavar=("R", "A", "S"), help="working voxel size in mm (default: the preset's)")
    add("--patch-size", type=_positive_int, nargs=3, metavar=("X", "Y", "Z"), help="patch and sliding-window tile in voxels")
    add("--batch-size", type=_positive_int, help="volumes per step (default: the preset's)")
    add("--samples", type=_positive_int, help="patches cropped per volume per step (default: the preset's)")
    add("--lr", type=float, help="initial learning rate (default: the preset's)")
    add("--val-fraction", type=float, default=0.2, help="share of the cases held out for validation (at least one); unused when dataset.json has a 'validation' list")
    add("--workers", type=int, default=0, help="data-loading processes (0: the training process; 4-8 with a GPU)")
    add("--partial-scan-prob", type=float,
        help=f"probability of cutting a training volume to a 3-12 cm slab through the liver (partial scans; 0: off; "
             f"default {PARTIAL_SCAN_PROB}, 0 with --preset paper)")
    add("--label-intensity-prob", type=float, default=0.3,
        help="probability of shifting the liver's and tumour's intensity each by its own offset (contrast phases; 0: off)")
    add("--synthetic-tumour-prob", type=float, default=SYNTHETIC_TUMOUR_PROB,
        help="probability of painting synthetic tumours into a training volume's liver (Hu et al. 2023; the real "
             "labels here have none; 0: off)")
    add("--tumour-patches", type=float, default=0.0, metavar="SHARE",
        help="share of the training patches centred on tumour (a third stays on background; 0: two of three "
             "patches on liver or tumour alike)")
    add("--batch-dice", action="store_true",
        help="pool the loss's Dice over the batch (nnU-Net's batch Dice) instead of per patch, so patches without "
             "tumour do not teach the tumour class silence")
    add("--tumour-weight", type=float, default=1.0, metavar="W",
        help="weight of tumour voxels in the cross-entropy (1: unweighted)")
    add("--ema", type=float, default=0.0, metavar="DECAY",
        help="validate and save an exponential moving average of the weights with this decay per step (e.g. 0.99; 0: off)")
    add("--cache-rate", type=float, default=1.0,
        help="share of the training volumes kept preprocessed in memory (the others are read from --cache-dir at "
             "each step, or preprocessed again with --no-cache-dir)")
    add("--cache-dir", type=Path, metavar="DIR",
        help="folder of the preprocessed training volumes, reused by later runs, folds and methods with the same "
             f"preprocessing; keyed by the files' content (default: {default_cache_dir()})")
    add("--no-cache-dir", action="store_true", help="keep no preprocessed volumes on disk")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


@dataclass(frozen=True)
class TrainSettings:
    """Everything that determines a run's result (stored in its checkpoints; ``--resume`` reuses it)."""

    method: str
    preset: str
    epochs: int
    seed: int
    optimizer: str
    learning_rate: float
    batch_size: int
    samples_per_volume: int
    val_fraction: float
    cache_rate: float
    workers: int
    partial_scan_prob: float = 0.0  # runs started before these options existed trained without them
    label_intensity_prob: float = 0.0
    ema_decay: float = 0.0
    synthetic_tumour_prob: float = 0.0
    tumour_patch_share: float = 0.0
    batch_dice: bool = False
    tumour_weight: float = 1.0
    init_weights: str = ""  # "": random initial weights

    @classmethod
    def from_args(cls, args: argparse.Namespace, segmenter: Type[DeepSegmenter]) -> "TrainSettings":
        preset = segmenter.presets[args.preset]
        resizes = preset.preprocessing.resize is not None
        if resizes and args.partial_scan_prob:
            # A partial scan is resized to 64 slices at inference; a slab cut after the resize (where the
            # cached preprocessing ends) would not look like it, and cutting before it costs a resize per step.
            raise LiverSegError(f"--partial-scan-prob with --preset {args.preset}: this preset resizes whole volumes, "
                                "so partial-scan slabs are not supported; use --partial-scan-prob 0 (its default)")
        partial_scan_prob = args.partial_scan_prob if args.partial_scan_prob is not None else (0.0 if resizes else PARTIAL_SCAN_PROB)
        settings = cls(
            method=args.method,
            preset=args.preset,
            epochs=args.epochs or preset.epochs,
            seed=args.seed,
            optimizer=preset.optimizer,
            learning_rate=args.lr if args.lr is not None else preset.learning_rate,
            batch_size=args.batch_size or preset.batch_size,
            samples_per_volume=args.samples or preset.samples_per_volume,
            val_fraction=args.val_fraction,
            cache_rate=args.cache_rate,
            workers=args.workers,
            partial_scan_prob=partial_scan_prob,
            label_intensity_prob=args.label_intensity_prob,
            ema_decay=args.ema,
            synthetic_tumour_prob=args.synthetic_tumour_prob,
            tumour_patch_share=args.tumour_patches,
            batch_dice=args.batch_dice,
            tumour_weight=args.tumour_weight,
            init_weights=_init_weights_path(args.init_weights, args.method),
        )
        if not 0.0 < settings.val_fraction < 1.0:
            raise LiverSegError(f"--val-fraction {settings.val_fraction}: must lie between 0 and 1 (e.g. 0.2)")
        if not 0.0 <= settings.cache_rate <= 1.0:
            raise LiverSegError(f"--cache-rate {settings.cache_rate}: must lie between 0 and 1")
        for option, value in (("--partial-scan-prob", settings.partial_scan_prob),
                              ("--label-intensity-prob", settings.label_intensity_prob),
                              ("--synthetic-tumour-prob", settings.synthetic_tumour_prob)):
            if not 0.0 <= value <= 1.0:
                raise LiverSegError(f"{option} {value}: a probability lies between 0 and 1 (e.g. 0.3)")
        if not 0.0 <= settings.tumour_patch_share <= 2.0 / 3.0:
            raise LiverSegError(f"--tumour-patches {settings.tumour_patch_share}: a share between 0 and 2/3 (a third of "
                                "the patches stays on background; e.g. 0.33)")
        if not settings.tumour_weight > 0.0:
            raise LiverSegError(f"--tumour-weight {settings.tumour_weight}: must be positive (e.g. 3; 1: unweighted)")
        if not 0.0 <= settings.ema_decay < 1.0:
            raise LiverSegError(f"--ema {settings.ema_decay}: the decay lies in [0, 1) (e.g. 0.99; 0: off)")
        if settings.workers < 0:
            raise LiverSegError(f"--workers {settings.workers}: must be 0 or more")
        if not settings.learning_rate > 0.0:
            raise LiverSegError(f"--lr {settings.learning_rate}: must be positive (e.g. 1e-3)")
        return settings


# --------------------------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class World:
    """This process's place in a (possibly one-process) DistributedDataParallel run."""

    rank: int
    size: int
    device: torch.device

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes files and prints events."""
        return self.rank == 0


def start_world(device: str) -> World:
    """Join the process group when started by torchrun (WORLD_SIZE > 1), else a world of one."""
    chosen = choose_device(device)
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(0, 1, chosen)
    if chosen.type == "cuda":
        chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(chosen)
    dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return World(dist.get_rank(), size, chosen)


def _seed_epoch(seed: int, epoch: int, rank: int, transform: Compose) -> None:
    """Make every random draw of this epoch on this rank a function of (seed, epoch, rank) alone.

    That is what makes ``--resume`` exact without pickling random generators: resuming at epoch e
    replays the very draws the interrupted run would have made. Ranks differ so they crop different
    patches.
    """
    torch_seed, numpy_seed = np.random.SeedSequence([seed, epoch, rank]).generate_state(2)
    torch.manual_seed(int(torch_seed))
    random.seed(int(torch_seed))
    np.random.seed(int(numpy_seed))
    transform.set_random_state(seed=int(numpy_seed))


# --------------------------------------------------------------------------------------------- data


def choose_validation(dataset: Path, settings: "TrainSettings") -> Tuple[List[Case], List[Case]]:
    """The dataset's fixed ``validation`` list when it has one (e.g. a cross-validation fold), else a
    seeded split of its ``training`` list by ``--val-fraction``."""
    fixed = load_msd_dataset(dataset, section="validation")
    if fixed:
        return load_msd_dataset(dataset), fixed
    return split_cases(load_msd_dataset(dataset), settings.val_fraction, settings.seed)


def split_cases(cases: Sequence[Case], val_fraction: float, seed: int) -> Tuple[List[Case], List[Case]]:
    """Training and validation cases: a seeded shuffle, at least one case on each side.

    Raises:
        LiverSegError: fewer than two cases.
    """
    if len(cases) < 2:
        raise LiverSegError(
            f"the dataset has {len(cases)} labelled case(s); training needs at least 2 (to train on and to validate)"
        )
    order = sorted(cases, key=lambda case: case.name)
    random.Random(seed).shuffle(order)
    n_val = min(max(1, round(len(order) * val_fraction)), len(order) - 1)
    return order[n_val:], order[:n_val]


class ReadTrainingCase(Transform):
    """Dataset item {name, image, label paths} -> {"image": CT (1, I, J, K) HU, "label": (1, I, J, K)}.

    A MONAI Transform, not a plain function: MONAI's datasets cache the transforms before the first
    random one or the first non-Transform, so a plain function first would leave nothing cached.
    """

    def __call__(self, item: Dict[str, Any]) -> Dict[str, Any]:
        ct, labels = read_case(Case(item["name"], Path(item["image"]), Path(item["label"])))
        return {"name": item["name"], "image": volume_to_metatensor(ct), "label": volume_to_metatensor(labels)}


# --------------------------------------------------------------------------------------------- preprocessing cache

CACHE_FORMAT = 1
"""Part of every cache entry's key: bump it when the cached preprocessing changes in code rather than in
its configuration (which is in the key already), so that no entry an older version wrote is served."""
CACHED_KEYS = ("image", "label")


def default_cache_dir() -> Path:
    """``--cache-dir``'s default: the user's cache folder, never the dataset's (which may be read-only)."""
    if sys.platform == "win32" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "liverseg" / "preprocessed"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "liverseg" / "preprocessed"


def cache_folder(args: argparse.Namespace) -> Optional[Path]:
    """The disk cache ``--cache-dir`` / ``--no-cache-dir`` ask for; None for none."""
    if args.no_cache_dir:
        return None
    return args.cache_dir or default_cache_dir()


class PreprocessedCases(PersistentDataset):
    """The training volumes, each read and preprocessed once: MONAI's PersistentDataset, made safe to share.

    The deterministic head of ``transform`` (up to its first random transform) runs once per volume; the
    result is kept in RAM for the first ``ram_share`` of the volumes (CacheDataset's ``cache_rate``) and
    on disk in ``folder`` for all of them, where a later run, fold or method with the same preprocessing
    finds it. The random tail runs at every step. Where PersistentDataset falls short, entries here are:

    - keyed by the sha256 of the image's and the label's content and of the preprocessing (configuration,
      cached transforms, LiverSeg and MONAI versions, :data:`CACHE_FORMAT`), not by file names: an edited
      file or option never meets a stale entry;
    - written to a temporary file in ``folder`` and renamed into place (PersistentDataset's temporary
      folder may lie on another file system, where the move is a copy), so a concurrent run sees no entry
      or a whole one; runs that build one entry at once write the same bytes;
    - prefixed by the sha256 of their bytes: one truncated (a killed run, a full disk) or damaged later is
      rebuilt with a warning (``torch.load`` raises OSError on a truncated file, which PersistentDataset
      does not catch, and returns a flipped byte silently);
    - plain tensors (read with ``weights_only``), each volume's affine beside it.

    Args:
        items: {name, image, label} paths per volume.
        transform: :func:`~LiverSegLib.augmentation.training_transforms`, starting with :class:`ReadTrainingCase`.
        config: the network's configuration, whose preprocessing is part of the key.
        folder: the disk cache, or None for none (RAM only, the rest preprocessed at each step).
        ram_share: share of the volumes kept in RAM.
        workers: threads that hash and preprocess the volumes up front.

    Raises:
        LiverSegError: the folder cannot be created or written (a full disk included).
    """

    def __init__(self, items: Sequence[Dict[str, str]], transform: Compose, config: ModelConfig,
                 folder: Optional[Path], ram_share: float, workers: int) -> None:
        super().__init__(items, transform, cache_dir=None)  # the folder is kept here: see _store_entry
        self.folder = folder
        self._in_ram: Dict[int, Dict[str, Any]] = {}
        if folder is not None:
            _make_cache_folder(folder)
        with ThreadPool(max(1, workers)) as pool:
            self._keys = self._entry_keys(pool, config) if folder is not None else []
            self._build(pool, int(ram_share * len(items)))  # CacheDataset's rounding of cache_rate

    def _entry_keys(self, pool: ThreadPool, config: ModelConfig) -> List[str]:
        first_random = self.transform.get_index_of_first(
            lambda t: isinstance(t, RandomizableTrait) or not isinstance(t, Transform)  # PersistentDataset's rule
        )
        recipe = json.dumps({
            "format": CACHE_FORMAT, "liverseg": __version__, "monai": monai.__version__,
            "preprocessing": asdict(config.preprocessing),
            "transforms": [type(t).__name__ for t in self.transform.transforms[:first_random]],
        }, sort_keys=True)
        contents = pool.map(lambda item: file_sha256(Path(item["image"])) + file_sha256(Path(item["label"])), self.data)
        return [hashlib.sha256(f"{recipe}{content}".encode()).hexdigest() for content in contents]

    def _build(self, pool: ThreadPool, in_ram: int) -> None:
        """Preprocess the volumes kept in RAM and those the disk cache lacks (a progress bar on a terminal)."""
        def build(index: int) -> Tuple[int, Optional[Dict[str, Any]]]:
            if index < in_ram:
                return index, self._preprocessed(index)
            if self.folder is not None and not self._entry_path(index).is_file():
                self._preprocessed(index)
            return index, None

        steps = pool.imap_unordered(build, range(len(self.data)))
        for index, head in tqdm(steps, total=len(self.data), desc="preprocessing", unit="volume", leave=False,
                                file=sys.stderr, disable=not sys.stderr.isatty()):
            if head is not None:
                self._in_ram[index] = head

    def _entry_path(self, index: int) -> Path:
        return self.folder / f"{self._keys[index]}.pt"

    def _preprocessed(self, index: int) -> Dict[str, Any]:
        """Volume ``index`` preprocessed: its disk entry when whole, else computed (and stored)."""
        if self.folder is not None and self._entry_path(index).is_file():
            try:
                return _unpack(_load_entry(self._entry_path(index)))
            except Exception as exc:  # whatever is wrong with an entry, it is rebuilt, never served
                warnings.warn(f"{self._entry_path(index)}: damaged preprocessing cache entry ({exc}); rebuilding it",
                              stacklevel=2)
        entry = _pack(self._pre_transform(deepcopy(self.data[index])))
        if self.folder is not None:
            _store_entry(self._entry_path(index), entry)
        # Unpacked whatever its source, so a step's input is the same from RAM, disk or a fresh computation.
        return _unpack(entry)

    def _transform(self, index: int) -> Any:
        kept = self._in_ram.get(index)
        return self._post_transform(deepcopy(kept) if kept is not None else self._preprocessed(index))


def _pack(item: Dict[str, Any]) -> Dict[str, Any]:
    """A preprocessed volume as plain tensors; cloned, as a cropped view would save the whole uncropped storage."""
    return {"name": item["name"], **{key: {"array": item[key].as_tensor().clone(memory_format=torch.contiguous_format),
                                           "affine": torch.as_tensor(item[key].affine)} for key in CACHED_KEYS}}


def _unpack(entry: Dict[str, Any]) -> Dict[str, Any]:
    return {"name": entry["name"], **{key: MetaTensor(entry[key]["array"], affine=entry[key]["affine"]) for key in CACHED_KEYS}}


def _make_cache_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cache_error(folder, exc) from exc


def _store_entry(path: Path, entry: Dict[str, Any]) -> None:
    """Write an entry whole or not at all: the sha256 of its bytes, then the bytes, into a temporary file
    beside ``path``, renamed onto it (atomic on one file system)."""
    buffer = io.BytesIO()
    torch.save(entry, buffer)
    payload = buffer.getvalue()
    try:
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    except OSError as exc:
        raise _cache_error(path.parent, exc) from exc
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(hashlib.sha256(payload).digest())
            file.write(payload)
        os.replace(temp, path)
    except OSError as exc:
        raise _cache_error(path.parent, exc) from exc
    finally:
        Path(temp).unlink(missing_ok=True)  # a temporary file left by a failure (gone after the rename)


def _load_entry(path: Path) -> Dict[str, Any]:
    """An entry's tensors, after checking its bytes against the sha256 they start with."""
    data = path.read_bytes()
    if hashlib.sha256(data[32:]).digest() != data[:32]:
        raise ValueError("its content does not match its checksum: truncated or damaged")
    return torch.load(io.BytesIO(data[32:]), weights_only=True)


def _cache_error(folder: Path, exc: OSError) -> LiverSegError:
    return LiverSegError(f"{folder}: cannot write the preprocessing cache there ({exc.strerror or exc}); free disk "
                         "space there, give another --cache-dir, or --no-cache-dir")


@dataclass
class ValidationCase:
    """A held-out case kept preprocessed: segmenting it each epoch then costs only the network."""

    name: str
    image: MetaTensor  # (1, X, Y, Z) on the working grid
    ct_affine: np.ndarray
    label_path: Path


# --------------------------------------------------------------------------------------------- training


def run_train(args: argparse.Namespace) -> int:
    """Train (or resume) as ``args`` say; returns the exit status (0).

    Raises:
        LiverSegError: bad dataset, device, options or output folder; out of memory.
    """
    run_dir = Path(args.output)
    segmenter = deep_segmenter_class(args.method)
    world = start_world(args.device)
    try:
        settings, config, resumed = _settings(args, segmenter, run_dir)
        Trainer(segmenter, settings, config, world, run_dir, Path(args.dataset), resumed, cache_folder(args)).fit()
    finally:
        if world.size > 1:
            dist.destroy_process_group()
    return 0


def _settings(
    args: argparse.Namespace, segmenter: Type[DeepSegmenter], run_dir: Path
) -> Tuple[TrainSettings, ModelConfig, Optional[Checkpoint]]:
    """Settings and network configuration: from the options, or from last.pt with ``--resume``."""
    last = run_dir / LAST
    if args.resume:
        if not last.is_file():
            raise LiverSegError(f"{run_dir}: nothing to resume (no {LAST}); start the run without --resume")
        checkpoint = Checkpoint.load(last, method=args.method)
        if checkpoint.resume is None or "settings" not in checkpoint.training:
            raise LiverSegError(f"{last}: holds no training state (a best.pt copied over it?); start a new run")
        settings = TrainSettings(**checkpoint.training["settings"])
        if args.epochs is not None and args.epochs != settings.epochs:
            raise LiverSegError(
                f"--epochs {args.epochs}: the run in {run_dir} was started with --epochs {settings.epochs} (its "
                "learning-rate schedule depends on it); resume without --epochs, or start a new run elsewhere"
            )
        return settings, checkpoint.config, checkpoint
    if last.exists():
        raise LiverSegError(f"{run_dir}: already holds a training run ({LAST}); pass --resume to continue it, or another -o")
    if run_dir.exists() and not run_dir.is_dir():
        raise LiverSegError(f"{run_dir}: is a file; -o needs a folder")
    settings = TrainSettings.from_args(args, segmenter)
    if settings.init_weights:
        config = Checkpoint.load(settings.init_weights, method=args.method).config
        asked = {"--spacing": (args.spacing, config.preprocessing.spacing),
                 "--patch-size": (args.patch_size, config.preprocessing.patch_size)}
        for option, (value, kept) in asked.items():
            if value is not None and tuple(value) != tuple(kept):
                raise LiverSegError(f"{option} {' '.join(map(str, value))}: --init-weights {settings.init_weights} was "
                                    f"trained with {option} {' '.join(map(str, kept))}, and fine-tuning keeps it; "
                                    f"leave out {option}")
        return settings, config, None
    return settings, segmenter.preset_config(args.preset, args.spacing, args.patch_size), None


def _init_weights_path(given: Optional[str], method: str) -> str:
    """``--init-weights`` as an absolute path ('shipped': the method's shipped model); '' when not given."""
    if not given:
        return ""
    path = shipped_model_path(method) if given == "shipped" else Path(given)
    if not path.is_file():
        raise LiverSegError(f"--init-weights {given}: no such checkpoint; give a best.pt or last.pt of a "
                            f"'{method}' run, or 'shipped'")
    return str(path.resolve())


class Trainer:
    """One training run: data, network, optimizer, and the epoch loop that validates and saves.

    Args:
        segmenter: the DeepSegmenter subclass (network builder, logits, loss).
        settings: the run's settings.
        config: the network and preprocessing configuration.
        world: rank, world size and device.
        run_dir: output folder.
        dataset: the MSD-layout dataset folder.
        resumed: last.pt of an interrupted run, or None.
        cache_dir: the disk cache of preprocessed volumes (:class:`PreprocessedCases`), or None for none.
    """

    def __init__(
        self,
        segmenter: Type[DeepSegmenter],
        settings: TrainSettings,
        config: ModelConfig,
        world: World,
        run_dir: Path,
        dataset: Path,
        resumed: Optional[Checkpoint],
        cache_dir: Optional[Path] = None,
    ) -> None:
        self.segmenter, self.settings, self.config, self.world = segmenter, settings, config, world
        self.run_dir, self.dataset = run_dir, dataset
        device = world.device

        self.train_cases, self.val_cases = choose_validation(dataset, settings)
        if resumed is not None and resumed.training.get("train_cases") != [c.name for c in self.train_cases]:
            raise LiverSegError(f"{dataset}: other cases than the run in {run_dir} was started with; give its dataset")

        torch.manual_seed(settings.seed)  # the same initial weights on every rank and every rerun
        self.network = segmenter.build_network(config.preprocessing.patch_size, **config.network).to(device)
        if settings.init_weights and resumed is None:  # before the average copies the network
            self.network.load_state_dict(Checkpoint.load(settings.init_weights, method=settings.method).state_dict)
        # What is validated and saved: an exponential moving average of the weights when asked for, which
        # smooths the epoch-to-epoch swings of a network trained on a handful of volumes.
        self.averaged = (
            AveragedModel(self.network, multi_avg_fn=get_ema_multi_avg_fn(settings.ema_decay), use_buffers=True)
            if settings.ema_decay > 0
            else None
        )
        self.inference_network = self.averaged.module if self.averaged is not None else self.network
        self.optimizer = self._optimizer()
        self.scheduler = self._scheduler()
        self.scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
        self.history: List[Dict[str, Any]] = []
        self.best: Dict[str, Any] = {"epoch": 0, "score": -math.inf, "cases": []}
        self.start_epoch = 0
        if resumed is not None:
            self._restore(resumed)
        if world.main:  # a fresh file, or the resumed run's history without rows a killed run wrote after last.pt
            _write_metrics(run_dir / METRICS, self.history)
        self.model = DeepModel(self.inference_network, config, segmenter.logits, device)  # validation
        # What training steps call: a DDP wrapper averaging gradients over the ranks, or the network itself.
        self.training_network = (
            DistributedDataParallel(self.network, device_ids=[device.index] if device.type == "cuda" else None)
            if world.size > 1
            else self.network
        )

        self.transform = training_transforms(
            ReadTrainingCase(), config, settings.samples_per_volume, settings.partial_scan_prob,
            settings.label_intensity_prob, settings.synthetic_tumour_prob, settings.tumour_patch_share,
        )
        items = [{"name": c.name, "image": str(c.image_path), "label": str(c.label_path)} for c in self.train_cases]
        cached = PreprocessedCases(items, self.transform, config, cache_dir, settings.cache_rate, settings.workers)
        self.sampler = DistributedSampler(items, num_replicas=world.size, rank=world.rank, shuffle=True, seed=settings.seed)
        self.loader = DataLoader(
            cached,
            batch_size=settings.batch_size,
            sampler=self.sampler,
            num_workers=settings.workers,
            collate_fn=list_data_collate,  # each volume's patches become separate batch entries
            pin_memory=device.type == "cuda",
        )
        self.validation = [self._prepare_validation(case) for case in self.val_cases[world.rank :: world.size]]

    # ----------------------------------------------------------------------------------- setup

    def _optimizer(self) -> torch.optim.Optimizer:
        lr = self.settings.learning_rate
        if self.settings.optimizer == "rmsprop":
            return torch.optim.RMSprop(self.network.parameters(), lr=lr, momentum=0.9)
        return torch.optim.AdamW(self.network.parameters(), lr=lr, weight_decay=1e-5)

    def _scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        if self.settings.optimizer == "rmsprop":  # the paper's constant learning rate
            return torch.optim.lr_scheduler.ConstantLR(self.optimizer, factor=1.0, total_iters=0)
        return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=self.settings.epochs)

    def _restore(self, checkpoint: Checkpoint) -> None:
        state = checkpoint.resume
        self.inference_network.load_state_dict(checkpoint.state_dict)
        if self.averaged is not None:  # the checkpoint's weights are the average; the trained ones are here
            self.network.load_state_dict(state["network"])
            self.averaged.n_averaged.copy_(state["n_averaged"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = int(state["epoch"])
        self.history = list(checkpoint.metrics["history"])
        self.best = dict(checkpoint.metrics["best"])

    def _prepare_validation(self, case: Case) -> ValidationCase:
        ct, _ = read_case(case)
        return ValidationCase(case.name, self.model.preprocess(ct), ct.affine, case.label_path)

    # ----------------------------------------------------------------------------------- loop

    def fit(self) -> None:
        """Run the remaining epochs, then report the best epoch's per-case scores and best.pt."""
        for epoch in range(self.start_epoch, self.settings.epochs):
            started = time.perf_counter()
            loss = self._train_epoch(epoch)
            cases = self._validate()
            record = {
                "epoch": epoch + 1,
                "loss": loss,
                "dice_liver": _nanmean([c["dice_liver"] for c in cases]),
                "dice_tumour": _nanmean([c["dice_tumour"] for c in cases]),
                "seconds": time.perf_counter() - started,
                "learning_rate": self.optimizer.param_groups[0]["lr"],
            }
            self.scheduler.step()
            self.history.append(record)
            score = _nanmean([record["dice_liver"], record["dice_tumour"]])
            improved = not math.isnan(score) and score > self.best["score"]
            if improved:
                self.best = {"epoch": epoch + 1, "score": score, "cases": cases}
            if self.world.main:
                self._save(epoch + 1, improved)
                _append_metrics(self.run_dir / METRICS, record)
                _emit({"event": "epoch", **{key: record[key] for key in EVENT_COLUMNS}})
        if self.world.main:
            if not (self.run_dir / BEST).is_file():  # no epoch scored (no liver in any validation case)
                self._save(self.settings.epochs, best=True)
            for case in self.best["cases"]:
                _emit({"event": "case", **case})
            _emit({"event": "done", "checkpoint": str(self.run_dir / BEST)})

    def _train_epoch(self, epoch: int) -> float:
        """One pass over the training volumes; returns the mean loss over all ranks' patches."""
        _seed_epoch(self.settings.seed, epoch, self.world.rank, self.transform)
        self.sampler.set_epoch(epoch)
        self.network.train()
        device = self.world.device
        total, count = 0.0, 0
        bar = tqdm(
            self.loader, desc=f"epoch {epoch + 1}/{self.settings.epochs}", unit="step", leave=False, file=sys.stderr,
            disable=not (self.world.main and sys.stderr.isatty()),
        )
        for batch in bar:
            images = batch["image"].as_subclass(torch.Tensor).to(device, non_blocking=True)
            labels = batch["label"].as_subclass(torch.Tensor).to(device, non_blocking=True)
            try:
                self.optimizer.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
                    loss = self.segmenter.loss(self.training_network(images), labels, batch_dice=self.settings.batch_dice,
                                               tumour_weight=self.settings.tumour_weight)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                if self.averaged is not None:
                    self.averaged.update_parameters(self.network)
            except (RuntimeError, MemoryError) as exc:
                if not is_out_of_memory(exc):
                    raise
                raise LiverSegError(
                    f"out of memory training on {device} with {images.shape[0]} patches of {tuple(images.shape[2:])} "
                    "per step; lower --batch-size or --samples (patches per step = their product) or --patch-size"
                ) from None
            total += float(loss.detach()) * images.shape[0]
            count += images.shape[0]
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        if self.world.size > 1:
            sums = torch.tensor([total, count], dtype=torch.float64, device=device)
            dist.all_reduce(sums)
            total, count = sums.tolist()
        return total / max(count, 1)

    def _validate(self) -> List[Dict[str, Any]]:
        """Segment this rank's held-out volumes whole and score them on their CT grids; all ranks' scores."""
        scores = []
        for case in self.validation:
            reference = Volume(np.asarray(load_volume(case.label_path).array).astype(np.uint8), case.ct_affine)
            labels = self.model.predict(case.image)
            predicted = self.model.postprocess(labels, case.image, reference)
            scores.append({"case": case.name, **dice_scores(predicted, reference.array)})
        if self.world.size > 1:
            gathered: List[Any] = [None] * self.world.size
            dist.all_gather_object(gathered, scores)
            scores = [score for part in gathered for score in part]
        order = {case.name: index for index, case in enumerate(self.val_cases)}
        return sorted(scores, key=lambda score: order[score["case"]])

    def _save(self, epoch: int, best: bool) -> None:
        """last.pt with everything needed to resume; best.pt (weights, config, metrics) when ``best``."""
        training = {
            "settings": asdict(self.settings),
            "dataset": str(self.dataset.resolve()),
            "train_cases": [c.name for c in self.train_cases],
            "val_cases": [c.name for c in self.val_cases],
            "world_size": self.world.size,
        }
        checkpoint = Checkpoint(
            self.config, self.inference_network.state_dict(), training, {"history": self.history, "best": self.best}
        )
        if best:
            checkpoint.save(self.run_dir / BEST)
        checkpoint.resume = {
            "epoch": epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }
        if self.averaged is not None:
            checkpoint.resume.update(network=self.network.state_dict(), n_averaged=self.averaged.n_averaged)
        checkpoint.save(self.run_dir / LAST)


# --------------------------------------------------------------------------------------------- output


def _emit(event: Dict[str, Any]) -> None:
    """One JSON line on stdout; NaN (undefined Dice) becomes null."""
    print(json.dumps({key: _json_number(value) for key, value in event.items()}), flush=True)


def _json_number(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 4)
    return value


def _csv_number(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _write_metrics(path: Path, history: List[Dict[str, Any]]) -> None:
    """Create RUN_DIR and write metrics.csv afresh from ``history`` (atomically).

    Raises:
        LiverSegError: the folder cannot be created or written.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LiverSegError(f"{path.parent}: cannot write there ({exc.strerror or exc}); choose another -o") from exc
    # atomic_output reports a failed write as one line naming metrics.csv.
    with atomic_output(path) as temp, open(temp, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(METRIC_COLUMNS)
        writer.writerows([_csv_number(record[c]) for c in METRIC_COLUMNS] for record in history)


def _append_metrics(path: Path, record: Dict[str, Any]) -> None:
    try:
        with open(path, "a", newline="") as handle:
            csv.writer(handle).writerow([_csv_number(record[c]) for c in METRIC_COLUMNS])
    except OSError as exc:
        raise LiverSegError(
            f"{path}: cannot append the epoch's metrics ({exc.strerror or exc}); free disk space, then --resume"
        ) from exc


def _nanmean(values: Sequence[float]) -> float:
    """Mean of the defined values; NaN when none is defined."""
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan
