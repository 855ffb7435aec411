"""Benchmark: EM segmentation of a 512x512x300 CT on this machine (targets: <= 30 s, peak RSS <= 4 GB).

Writes a synthetic phantom of that size to a temporary folder, then runs `liverseg segment` on it in a
fresh process, as a user would, and prints wall seconds (whole command and segmentation alone) and the
child's peak RSS. Usage: python scripts/benchmark_em.py [--shape 512 512 300] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY / "LiverSeg"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 300))
    parser.add_argument("--spacing", type=float, nargs=3, default=(0.78, 0.78, 1.0))
    parser.add_argument("--threads", type=int, default=2, help="CPU threads allowed (OMP/MKL/torch)")
    args = parser.parse_args()

    from LiverSegLib.phantom import make_phantom
    from LiverSegLib.volume import save_volume

    with tempfile.TemporaryDirectory() as folder:
        ct_path = Path(folder) / "ct.nii.gz"
        ct, _ = make_phantom(tuple(args.shape), tuple(args.spacing), seed=0)
        save_volume(ct, ct_path)
        del ct
        env = dict(os.environ, PYTHONPATH=str(REPOSITORY / "LiverSeg"), OMP_NUM_THREADS=str(args.threads),
                   MKL_NUM_THREADS=str(args.threads))
        started = time.perf_counter()
        # The CLI in a fresh process, as a user runs it, printing its own peak memory at the end.
        command = ("import sys; from LiverSegLib.cli import main; from LiverSegLib.evaluation import peak_rss_mb; "
                   f"rc = main(['segment', {str(ct_path)!r}, '-o', {str(Path(folder) / 'liver.nii.gz')!r}]); "
                   "print(f'peak RSS {peak_rss_mb():.0f} MB'); sys.exit(rc)")
        result = subprocess.run([sys.executable, "-c", command], capture_output=True, text=True, env=env)
        wall = time.perf_counter() - started
        if result.returncode:
            print(result.stderr, file=sys.stderr)
            return result.returncode
    peak_gb = float(re.search(r"peak RSS (\d+) MB", result.stdout).group(1)) / 1024
    segment_seconds = float(re.search(r"([\d.]+) s\n", result.stdout).group(1))
    print(f"EM on a {'x'.join(map(str, args.shape))} CT, {args.threads} threads:")
    print(f"  segmentation {segment_seconds:.1f} s (target 30 s: {segment_seconds / 30:.2f} of it)")
    print(f"  whole command incl. reading and writing NIfTI {wall:.1f} s")
    print(f"  peak RSS {peak_gb:.2f} GB (target 4 GB: {peak_gb / 4:.2f} of it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
