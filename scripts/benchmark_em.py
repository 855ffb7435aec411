"""Benchmark: EM segmentation of synthetic 512x512 CTs of 300, 600 and 1200 slices on this machine.

Targets (issues 12 and 13): segmentation of the 300-slice CT under 10 s; peak RSS <= 3 GB at 1200 slices,
and time and memory growing no faster than the voxel count.

For each number of slices, writes a synthetic phantom of that size (int16 HU, as a scanner's NIfTI) to a
temporary folder and runs, in a fresh process each:

- the segmentation: the CT read as the CLI reads it, then ``create_segmenter("em").segment``; printed
  are its seconds and the child's peak RSS (VmHWM of /proc/self/status, which counts the CT read);
- with ``--command``, also the whole ``liverseg segment`` command (reading and writing NIfTI included).

The ratios are seconds per million CT voxels and peak RSS over the CT's int16 size.

Usage: python scripts/benchmark_em.py [--slices 300 600 1200] [--spacing 0.78 0.78 1.5] [--threads 2] [--command] [--phantoms DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "LiverSeg"))

SEGMENT_CHILD = """
import json, sys, time
from LiverSegLib.evaluation import peak_rss_mb
from LiverSegLib.segmenters import create_segmenter
from LiverSegLib.volume import load_volume
ct = load_volume(sys.argv[1])
started = time.perf_counter()
labels = create_segmenter("em").segment(ct)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "peak_mb": peak_rss_mb(), "liver_voxels": int((labels > 0).sum()),
                  "tumour_voxels": int((labels == 2).sum())}))
"""

COMMAND_CHILD = """
import json, sys, time
from LiverSegLib.cli import main
from LiverSegLib.evaluation import peak_rss_mb
started = time.perf_counter()
rc = main(["segment", sys.argv[1], "-o", sys.argv[2]])
print(json.dumps({"seconds": time.perf_counter() - started, "peak_mb": peak_rss_mb(), "rc": rc}))
"""


def _child(code: str, arguments: list[str], env: dict) -> dict:
    result = subprocess.run([sys.executable, "-c", code, *arguments], capture_output=True, text=True, env=env)
    if result.returncode:
        raise SystemExit(f"benchmark child failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, nargs="+", default=(300, 600, 1200))
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), help="in-plane matrix")
    parser.add_argument("--spacing", type=float, nargs=3, default=(0.78, 0.78, 1.5))
    parser.add_argument("--threads", type=int, default=2, help="CPU threads allowed (OMP/MKL/torch)")
    parser.add_argument("--command", action="store_true", help="also time the whole liverseg segment command")
    parser.add_argument("--phantoms", type=Path, help="folder keeping the phantoms between runs (making one takes minutes)")
    args = parser.parse_args()

    from LiverSegLib.phantom import make_phantom
    from LiverSegLib.volume import save_volume

    env = dict(os.environ, PYTHONPATH=str(REPOSITORY / "LiverSeg"), OMP_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads))
    print(f"EM, {args.threads} threads, spacing {' x '.join(map(str, args.spacing))} mm")
    header = f"{'slices':>6} {'seconds':>8} {'s/Mvox':>7} {'peak GB':>8} {'RSS/CT':>7} {'liver vox':>10} {'tumour vox':>10}"
    print(header + ("  command s  command GB" if args.command else ""), flush=True)
    for slices in args.slices:
        shape = (*args.size, slices)
        with tempfile.TemporaryDirectory() as folder:
            ct_path = Path(args.phantoms or folder) / f"ct_{'x'.join(map(str, shape))}_{'x'.join(map(str, args.spacing))}.nii.gz"
            if not ct_path.exists():
                ct_path.parent.mkdir(parents=True, exist_ok=True)
                ct, _ = make_phantom(shape, tuple(args.spacing), seed=0)
                ct = ct.with_array(np.round(ct.array).astype(np.int16))  # a scanner's NIfTI is int16
                save_volume(ct, ct_path)
                del ct
            run = _child(SEGMENT_CHILD, [str(ct_path)], env)
            voxels = float(np.prod(shape))
            ct_gb = voxels * 2 / 1024**3
            peak_gb = run["peak_mb"] / 1024
            line = (f"{slices:>6} {run['seconds']:>8.1f} {run['seconds'] / voxels * 1e6:>7.3f} {peak_gb:>8.2f} "
                    f"{peak_gb / ct_gb:>7.2f} {run['liver_voxels']:>10} {run['tumour_voxels']:>10}")
            if args.command:
                whole = _child(COMMAND_CHILD, [str(ct_path), str(Path(folder) / "liver.nii.gz")], env)
                line += f"  {whole['seconds']:>9.1f}  {whole['peak_mb'] / 1024:>10.2f}"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
