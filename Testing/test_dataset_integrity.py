"""dataset.json integrity: a case listed twice (the same file, a copy, or one case id for two files) is an
error naming every entry involved; files outside the dataset folder are read, with a note on stderr."""

import json
import shutil
from pathlib import Path
from typing import Any, Dict, List

import pytest

from LiverSegLib import dataset as dataset_module
from LiverSegLib.dataset import load_msd_dataset
from LiverSegLib.errors import LiverSegError
from LiverSegLib.phantom import write_phantom_dataset

SMALL = {"shape": (32, 32, 16), "spacing": (6.0, 6.0, 10.0)}


@pytest.fixture
def phantoms(tmp_path: Path) -> Path:
    return write_phantom_dataset(tmp_path / "ds", n_cases=3, **SMALL)


def _spec(folder: Path) -> Dict[str, Any]:
    return json.loads((folder / "dataset.json").read_text())


def _write(folder: Path, spec: Dict[str, Any]) -> None:
    (folder / "dataset.json").write_text(json.dumps(spec))


def _pair(image: str, label: str) -> Dict[str, str]:
    return {"image": image, "label": label}


def test_every_duplicate_is_reported_at_once(phantoms: Path) -> None:
    spec = _spec(phantoms)
    # training[3]: phantom_000 again, spelled differently (same file once resolved)
    spec["training"].append(_pair("imagesTr/phantom_000.nii.gz", "labelsTr/phantom_000.nii.gz"))
    # training[4]: a byte copy of phantom_001 under another name
    for sub in ("imagesTr", "labelsTr"):
        shutil.copy(phantoms / sub / "phantom_001.nii.gz", phantoms / sub / "copy_of_001.nii.gz")
    spec["training"].append(_pair("./imagesTr/copy_of_001.nii.gz", "./labelsTr/copy_of_001.nii.gz"))
    # training[5]: another CT (another seed) whose file is also named phantom_002, in another folder
    write_phantom_dataset(phantoms / "more", n_cases=3, seed=7, **SMALL)
    spec["training"].append(_pair("./more/imagesTr/phantom_002.nii.gz", "./more/labelsTr/phantom_002.nii.gz"))
    _write(phantoms, spec)

    with pytest.raises(LiverSegError) as error:
        load_msd_dataset(phantoms)
    message = str(error.value)
    assert "3 problem(s)" in message
    assert "training[0], training[3] are the same file" in message
    assert "training[1] (" in message and "training[4] (" in message and "have the same content (sha256" in message
    assert "training[2] (" in message and "training[5] (" in message
    assert "have the same case id 'phantom_002'" in message and "rename the files apart" in message


def test_a_case_in_both_training_and_validation_is_refused(phantoms: Path) -> None:
    spec = _spec(phantoms)
    spec["validation"] = [dict(spec["training"][1])]
    _write(phantoms, spec)
    for section in ("training", "validation"):  # train reads both lists: either read refuses the leak
        with pytest.raises(LiverSegError, match=r"training\[1\], validation\[0\] are the same file"):
            load_msd_dataset(phantoms, section=section)


def test_a_fold_layout_with_distinct_cases_loads(phantoms: Path) -> None:
    spec = _spec(phantoms)
    spec["validation"], spec["training"] = spec["training"][:1], spec["training"][1:]
    _write(phantoms, spec)
    assert [c.name for c in load_msd_dataset(phantoms, section="validation")] == ["phantom_000"]
    assert [c.name for c in load_msd_dataset(phantoms)] == ["phantom_001", "phantom_002"]


def test_only_files_of_equal_size_are_hashed(phantoms: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hashed: List[Path] = []
    real_sha256 = dataset_module.file_sha256

    def spy(path: Path) -> str:
        hashed.append(path)
        return real_sha256(path)

    monkeypatch.setattr(dataset_module, "file_sha256", spy)
    images = [case.image_path for case in load_msd_dataset(phantoms)]
    sizes = [path.stat().st_size for path in images]
    assert hashed == [path for path, size in zip(images, sizes) if sizes.count(size) > 1]

    spec = _spec(phantoms)
    shutil.copy(phantoms / "imagesTr" / "phantom_001.nii.gz", phantoms / "imagesTr" / "copy.nii.gz")
    spec["training"].append(_pair("imagesTr/copy.nii.gz", "labelsTr/phantom_001.nii.gz"))
    _write(phantoms, spec)
    hashed.clear()
    with pytest.raises(LiverSegError, match="same content"):
        load_msd_dataset(phantoms)
    assert {p.name for p in hashed} >= {"phantom_001.nii.gz", "copy.nii.gz"}


def test_files_outside_the_folder_are_read_and_noted(
    phantoms: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    load_msd_dataset(phantoms)
    assert capsys.readouterr().err == ""  # a self-contained dataset: no note

    elsewhere = write_phantom_dataset(tmp_path / "elsewhere", n_cases=2, seed=3, **SMALL)
    for index, name in enumerate(("phantom_000", "phantom_001")):  # renamed: the ids must stay unique
        for sub in ("imagesTr", "labelsTr"):
            (elsewhere / sub / f"{name}.nii.gz").rename(elsewhere / sub / f"outside_{index}.nii.gz")
    spec = _spec(phantoms)
    spec["training"].append(_pair(str(elsewhere / "imagesTr/outside_0.nii.gz"), str(elsewhere / "labelsTr/outside_0.nii.gz")))
    spec["training"].append(_pair("../elsewhere/imagesTr/outside_1.nii.gz", "../elsewhere/labelsTr/outside_1.nii.gz"))
    _write(phantoms, spec)

    cases = load_msd_dataset(phantoms)
    assert [c.name for c in cases][-2:] == ["outside_0", "outside_1"]
    assert cases[-2].image_path == elsewhere / "imagesTr/outside_0.nii.gz"
    err = capsys.readouterr().err
    assert err.count("\n") == 1  # one line per dataset read
    assert f"{phantoms / 'dataset.json'}: 2 of 5 'training' entries name files outside its folder" in err
