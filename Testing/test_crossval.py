"""``liverseg crossval`` end to end on tiny phantoms (2 folds, 1 epoch): the splits, one CSV row per case, a
summary that agrees with it, an interrupted run that continues where it stopped and a finished one that
trains nothing; then ``liverseg table`` beside the paper's figure; and clear errors for bad splits."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import torch

from LiverSegLib import cli, crossval
from LiverSegLib.errors import LiverSegError
from LiverSegLib.phantom import write_phantom_dataset
from LiverSegLib.segmenters import PAPER_DICE

torch.set_num_threads(2)

TINY = ["--spacing", "6", "6", "9", "--patch-size", "32", "32", "16"]


def _events(text: str) -> List[Dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _mtimes(run: Path) -> Dict[str, int]:
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.glob("fold_*/**/*") if p.is_file()}


def test_crossval_trains_each_fold_once_and_the_table_lists_it(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = write_phantom_dataset(tmp_path / "data", n_cases=3, seed=5, shape=(64, 64, 32), spacing=(6.0, 6.0, 9.0))
    run = tmp_path / "run"
    command = ["crossval", str(data), "--method", "unet", "--folds", "2", "-o", str(run), "--epochs", "1", *TINY,
               "--cache-dir", str(tmp_path / "cache")]

    # Interrupted before its second fold: the first is kept, and the rerun trains the second alone.
    train = crossval.run_train
    calls: List[str] = []

    def interrupted_at_the_second_fold(args):  # type: ignore[no-untyped-def]
        calls.append(args.output)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train(args)

    monkeypatch.setattr(crossval, "run_train", interrupted_at_the_second_fold)
    assert cli.main(command) == 130
    monkeypatch.setattr(crossval, "run_train", train)
    assert (run / "fold_0" / "last.pt").is_file() and not (run / "fold_1" / "last.pt").exists()
    capsys.readouterr()
    assert cli.main(command) == 0
    events = _events(capsys.readouterr().out)
    assert [e["event"] for e in events if e["event"] in ("epoch", "fold", "crossval")] == ["fold", "epoch", "fold", "crossval"]

    splits = json.loads((run / "splits.json").read_text())
    held_out = [name for fold in splits for name in fold["val"]]
    assert sorted(held_out) == ["phantom_000", "phantom_001", "phantom_002"]  # each case held out once
    assert all(not set(fold["train"]) & set(fold["val"]) and len(fold["train"] + fold["val"]) == 3 for fold in splits)

    with open(run / "crossval.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(crossval.CSV_COLUMNS)
    assert sorted(r["case"] for r in rows) == sorted(held_out)
    assert all(r["case"] in splits[int(r["fold"])]["val"] for r in rows)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "unet" and summary["folds"] == 2 and summary["cases"] == 3 and summary["epochs"] == 1
    assert summary["dice_liver_mean"] == pytest.approx(np.mean([float(r["dice_liver"]) for r in rows]))
    assert summary["dice_liver_sd"] == pytest.approx(np.std([float(r["dice_liver"]) for r in rows], ddof=1))
    assert summary["training_seconds"] > 0 and summary["hardware"]["device"] == "cpu"

    # Finished: a rerun trains and segments nothing, and writes the same figures.
    before = _mtimes(run)
    assert cli.main(command) == 0
    assert not [e for e in _events(capsys.readouterr().out) if e["event"] == "epoch"]
    assert _mtimes(run) == before
    assert json.loads((run / "summary.json").read_text())["dice_liver_mean"] == summary["dice_liver_mean"]
    assert cli.main([*command, "--epochs", "2"]) == 2  # the last --epochs counts
    assert "trained with --epochs 1" in capsys.readouterr().err

    assert cli.main(["table", str(run), "-o", str(tmp_path / "table.md")]) == 0
    table = (tmp_path / "table.md").read_text()
    assert f"| unet | run | 2 | 3 (" in table and f"| {PAPER_DICE['unet']} |" in table
    assert f"{summary['dice_liver_mean']:.3f} ({summary['dice_liver_sd']:.3f})" in table
    assert (tmp_path / "table.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_splits_are_seeded_disjoint_and_cover_every_case() -> None:
    names = [f"case_{i}" for i in range(11)]
    splits = crossval.make_splits(names, 5, seed=3)
    assert splits == crossval.make_splits(list(reversed(names)), 5, seed=3) != crossval.make_splits(names, 5, seed=4)
    assert sorted(n for s in splits for n in s["val"]) == sorted(names)
    assert sorted(len(s["val"]) for s in splits) == [2, 2, 2, 2, 3]
    assert all(sorted(s["train"] + s["val"]) == sorted(names) for s in splits)
    with pytest.raises(LiverSegError, match="--folds 12: needs 2 to 11 folds"):
        crossval.make_splits(names, 12, seed=0)


def test_a_splits_file_that_does_not_fit_the_dataset_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "splits.json"
    names = ["a", "b", "c"]
    path.write_text(json.dumps(crossval.make_splits(names, 3, seed=0)))  # nnU-Net's form is read back
    assert crossval.load_splits(path, names, 3) == crossval.make_splits(names, 3, seed=0)
    with pytest.raises(LiverSegError, match="holds 3 folds, not --folds 2"):
        crossval.load_splits(path, names, 2)
    with pytest.raises(LiverSegError, match="each case of the dataset exactly once"):
        crossval.load_splits(path, names + ["d"], 3)
    path.write_text(json.dumps([{"train": ["a"], "val": ["a", "b", "c"]}, {"train": ["a", "b", "c"], "val": []}]))
    with pytest.raises(LiverSegError, match="fold 0 does not train on all the cases it does not hold out"):
        crossval.load_splits(path, names, 2)
    path.write_text("{}")
    with pytest.raises(LiverSegError, match="not a splits file"):
        crossval.load_splits(path, names, 2)


def test_table_of_an_unfinished_run_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["table", str(tmp_path)]) == 2
    assert "no summary.json; run liverseg crossval" in capsys.readouterr().err
