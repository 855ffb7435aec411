"""The same ``liverseg train`` command under ``torchrun --nproc_per_node 2`` trains with DistributedDataParallel
on the CPU (gloo): one event stream, rank 0 writes, and the checkpoint records the two processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from LiverSegLib.checkpoint import Checkpoint
from LiverSegLib.phantom import write_phantom_dataset

LIVERSEG = Path(__file__).resolve().parent.parent / "LiverSeg"


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(), reason="no gloo")
def test_two_process_ddp_on_gloo(tmp_path: Path) -> None:
    data = write_phantom_dataset(tmp_path / "data", n_cases=4, seed=5, shape=(48, 48, 24), spacing=(8.0, 8.0, 12.0))
    run = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(LIVERSEG), os.environ.get("PYTHONPATH", "")]))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "LiverSegLib.cli", "train", str(data), "--method", "unet", "-o", str(run), "--epochs", "2",
        "--device", "cpu", "--spacing", "8", "8", "12", "--patch-size", "32", "32", "16", "--val-fraction", "0.5",
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    events = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2]  # rank 0 alone prints
    assert [e["case"] for e in events if e["event"] == "case"] == Checkpoint.load(run / "best.pt").training["val_cases"]
    assert len([e for e in events if e["event"] == "case"]) == 2  # both ranks' validation cases gathered
    assert sum(e["event"] == "done" for e in events) == 1

    last = Checkpoint.load(run / "last.pt", method="unet")
    assert last.training["world_size"] == 2 and last.resume["epoch"] == 2
    assert len((run / "metrics.csv").read_text().splitlines()) == 3
    assert sorted(p.name for p in run.iterdir()) == ["best.pt", "last.pt", "metrics.csv"]
