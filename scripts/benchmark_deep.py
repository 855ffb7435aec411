#!/usr/bin/env python
"""Speed and memory of the deep segmenters: parameters, seconds and peak RSS segmenting a 512x512x300 CT,
seconds per training step, and the ratio to EM on the same CT; on the GPU too when PyTorch sees one.

    python scripts/benchmark_deep.py [--preset default|paper] [--methods unet vae ...] [--threads 2]

The CT is a synthetic phantom (LiverSegLib.phantom) of 512 x 512 x 300 voxels of 0.78 x 0.78 x 1.5 mm,
written once as NIfTI. Each method runs in a fresh process (so its peak RSS is its own), as
``liverseg segment`` would: load the CT, build the segmenter from a checkpoint, segment.

Columns: segment_s, wall seconds from building the segmenter to the labelmap (Python's imports of the
segmenter's modules come before the timer: `liverseg segment`'s own timer starts after them too, and
``scripts/benchmark_em.py`` times the whole command), split into pre_s
(resampling to the working grid), network_s (sliding window) and post_s (clean-up, back to the CT
grid); segment_cpu_s, CPU seconds of the process over all threads; peak_rss_gb, the process's peak
resident memory; x_em, segment_s over EM's on the CPU of this machine (EM is measured first, the same
way); train_step_s, one optimizer step on ``batch_size x samples_per_volume`` random patches of the
preset's patch size (data loading excluded); peak_gpu_gb on a GPU.

With ``--preset default`` the networks have the shipped weights (``LiverSegLib/models``), so post_s is a
trained network's. No paper-preset model ships, so those networks have their initial weights: the
network's run time does not depend on them, but their scattered labels span the whole CT, the worst case
for post_s; the last line then gives post_s for the phantom's own labels, what a trained network costs.
"""

from __future__ import annotations

import argparse
import importlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "LiverSeg"))

SHAPE = (512, 512, 300)
SPACING = (0.78, 0.78, 1.5)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default", choices=("default", "paper"))
    parser.add_argument("--methods", nargs="+", default=["unet", "autoencoder", "vitautoenc", "vae"])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for PyTorch (the target laptop has 2 cores)")
    parser.add_argument("--train-steps", type=int, default=2, help="timed training steps (after one warm-up step)")
    parser.add_argument("--child", nargs=3, metavar=("METHOD", "CT", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, preset=args.preset, threads=args.threads, train_steps=args.train_steps)))
        return 0

    import torch

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as folder:
        ct_path, labels_path = Path(folder) / "ct.nii", Path(folder) / "labels.nii"
        write_phantom(ct_path, labels_path)
        rows = []
        for method in ["em", *args.methods]:
            for device in devices if method != "em" else ["cpu"]:
                command = [sys.executable, __file__, "--child", method, str(ct_path), device, "--preset", args.preset,
                           "--threads", str(args.threads), "--train-steps", str(args.train_steps)]
                result = subprocess.run(command, capture_output=True, text=True)
                if result.returncode != 0:
                    print(f"{method} on {device} failed:\n{result.stderr}", file=sys.stderr)
                    continue
                rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
                if rows[0]["method"] == "em":
                    rows[-1]["x_em"] = rows[-1]["segment_s"] / rows[0]["segment_s"]
                print_row(rows[-1], header=len(rows) == 1)
        if args.preset != "default":
            print(f"\npost-processing a liver-sized labelmap (what a trained network gives): "
                  f"{reference_post_seconds(ct_path, labels_path, args.preset):.2f} s")
    return 0


def write_phantom(ct_path: Path, labels_path: Path) -> None:
    """The synthetic 512x512x300 CT and its labels, written uncompressed (reading is not what we measure)."""
    from LiverSegLib.phantom import make_phantom
    from LiverSegLib.volume import save_volume

    started = time.perf_counter()
    ct, labels = make_phantom(shape=SHAPE, spacing=SPACING, seed=0)
    save_volume(ct, ct_path)
    save_volume(labels, labels_path)
    print(f"# synthetic CT {SHAPE} at {SPACING} mm written in {time.perf_counter() - started:.0f} s", file=sys.stderr)


def reference_post_seconds(ct_path: Path, labels_path: Path, preset: str) -> float:
    """Seconds of the post-processing (clean_labels, back to the CT grid) of the phantom's own labels.

    The untrained networks' scattered labels span the whole CT, the worst case for the resampling back
    to the CT grid; a trained network's liver spans a fraction of it, as the reference labels do.
    """
    import torch

    from LiverSegLib.segmenters.deep import DeepModel, deep_segmenter_class, preprocessing_transforms
    from LiverSegLib.segmenters.deep import volume_to_metatensor
    from LiverSegLib.volume import load_ct, load_volume

    ct = load_ct(ct_path)
    data = {"image": volume_to_metatensor(ct), "label": volume_to_metatensor(load_volume(labels_path))}
    config = deep_segmenter_class("unet").preset_config(preset)
    for transform in preprocessing_transforms(config.preprocessing, ("image", "label")):
        data = transform(data)
    labels = data["label"][0].numpy().astype("uint8")
    model = DeepModel(None, config, None, torch.device("cpu"))  # post-processing needs no network
    started = time.perf_counter()
    model.postprocess(labels, data["image"], ct)
    return time.perf_counter() - started


def measure(method: str, ct_path: str, device: str, preset: str, threads: int, train_steps: int) -> Dict[str, Any]:
    """Segment the CT with ``method`` on ``device`` (and, for a network, time training steps); runs in
    its own process."""
    import torch

    torch.set_num_threads(threads)
    from LiverSegLib.checkpoint import Checkpoint
    from LiverSegLib.evaluation import peak_rss_mb
    from LiverSegLib.segmenters import SEGMENTERS, create_segmenter
    from LiverSegLib.segmenters.deep import count_parameters, deep_segmenter_class
    from LiverSegLib.volume import load_ct

    with tempfile.TemporaryDirectory() as folder:
        model_path = None  # EM, or the shipped model of the default preset
        if method != "em" and preset != "default":
            cls = deep_segmenter_class(method)
            config = cls.preset_config(preset)
            model_path = str(Path(folder) / f"{method}.pt")
            Checkpoint(config, cls.build_network(config.preprocessing.patch_size, **config.network).state_dict()).save(model_path)

        ct = load_ct(ct_path)
        importlib.import_module(f"LiverSegLib.segmenters.{SEGMENTERS[method][0]}")  # 2-3 s of imports, untimed
        cpu_before, started = _cpu_seconds(), time.perf_counter()
        segmenter = create_segmenter(method, model_path=model_path, device=device)
        marks: List[float] = []  # when preprocessing, the network and post-processing began

        def progress(fraction: float, message: str) -> None:
            if len(marks) < 3 and (not marks or fraction >= (0.05, 0.9)[len(marks) - 1]):
                marks.append(time.perf_counter())

        segmenter.segment(ct, progress=progress)
        if device == "cuda":
            torch.cuda.synchronize()
        finished = time.perf_counter()
        segment_cpu = _cpu_seconds() - cpu_before
        peak_rss_gb = peak_rss_mb() / 1024

    row = {
        "method": method,
        "preset": preset if method != "em" else "",
        "device": device,
        "segment_s": finished - started,
        "segment_cpu_s": segment_cpu,
        "peak_rss_gb": peak_rss_gb,
    }
    if method == "em":
        return row
    network = segmenter.model.network
    row.update({
        "parameters": count_parameters(network),
        "pre_s": marks[1] - marks[0],
        "network_s": marks[2] - marks[1],
        "post_s": finished - marks[2],
        "train_step_s": _train_step_seconds(type(segmenter), segmenter.model.config, network, torch.device(device), train_steps),
    })
    if device == "cuda":
        row["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return row


def _train_step_seconds(cls: Any, config: Any, network: Any, device: Any, steps: int) -> float:
    import torch

    preset = cls.presets[config.preset]
    patches = preset.batch_size * preset.samples_per_volume
    network = network.to(device).train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    images = torch.rand(patches, 1, *config.preprocessing.patch_size, device=device)
    labels = torch.randint(0, 3, (patches, 1, *config.preprocessing.patch_size), device=device).float()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=device.type == "cuda"):
            loss = cls.loss(network(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    step()  # warm-up: allocator, oneDNN / cuDNN kernel choice
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / steps


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def print_row(row: Dict[str, Any], header: bool) -> None:
    columns: List[str] = ["method", "preset", "device", "parameters", "segment_s", "x_em", "pre_s", "network_s", "post_s",
                          "segment_cpu_s", "peak_rss_gb", "train_step_s", "peak_gpu_gb"]
    if header:
        print("| " + " | ".join(columns) + " |")
        print("|" + "---|" * len(columns))
    cells = []
    for column in columns:
        value = row.get(column, "")
        cells.append(f"{value:,}" if isinstance(value, int) else f"{value:.2f}" if isinstance(value, float) else str(value))
    print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
