"""The MSD dataset reader validates every entry and reports all problems at once."""

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from LiverSegLib.dataset import load_msd_dataset, read_case
from LiverSegLib.errors import LiverSegError
from LiverSegLib.phantom import write_phantom_dataset
from LiverSegLib.preprocessing import UNSURE


@pytest.fixture
def phantom_dataset(tmp_path):
    return write_phantom_dataset(tmp_path / "ds", n_cases=3, shape=(40, 40, 20), spacing=(5.0, 5.0, 8.0))


def test_valid_dataset_lists_its_cases(phantom_dataset):
    cases = load_msd_dataset(phantom_dataset)
    assert [c.name for c in cases] == ["phantom_000", "phantom_001", "phantom_002"]
    ct, labels = read_case(cases[0])
    assert ct.array.shape == labels.array.shape and labels.array.dtype == np.uint8
    np.testing.assert_array_equal(ct.affine, labels.affine)


def test_unsure_voxels_are_a_valid_training_label(phantom_dataset):
    spec = json.loads((phantom_dataset / "dataset.json").read_text())
    path = phantom_dataset / spec["training"][0]["label"]
    label = nib.load(str(path))
    data = np.asarray(label.dataobj).astype(np.uint8)
    data[0, 0, :] = UNSURE
    nib.save(nib.Nifti1Image(data, label.affine), str(path))
    _, labels = read_case(load_msd_dataset(phantom_dataset)[0])
    assert (labels.array == UNSURE).sum() == data.shape[2]


def test_all_problems_reported_together(phantom_dataset):
    manifest = phantom_dataset / "dataset.json"
    spec = json.loads(manifest.read_text())
    # case 0: label on another grid; case 1: label with a value 7; case 2: label file missing; plus an entry without a label
    image0 = nib.load(str(phantom_dataset / spec["training"][0]["image"]))
    shifted = image0.affine.copy()
    shifted[0, 3] += 10
    nib.save(nib.Nifti1Image(np.zeros(image0.shape, np.uint8), shifted), str(phantom_dataset / spec["training"][0]["label"]))
    label1 = phantom_dataset / spec["training"][1]["label"]
    bad = nib.load(str(label1))
    data = np.asarray(bad.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, bad.affine), str(label1))
    (phantom_dataset / spec["training"][2]["label"]).unlink()
    spec["training"].append({"image": "./imagesTr/extra.nii.gz"})
    manifest.write_text(json.dumps(spec))

    with pytest.raises(LiverSegError) as error:
        load_msd_dataset(phantom_dataset)
    message = str(error.value)
    assert "4 problem(s)" in message
    assert "phantom_000: label affine differs" in message
    assert "phantom_001: label values [7]" in message
    assert "phantom_002: missing file" in message
    assert "training[3]: needs both 'image' and 'label'" in message


def test_label_shape_mismatch_and_missing_manifest(phantom_dataset, tmp_path):
    spec = json.loads((phantom_dataset / "dataset.json").read_text())
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4)), str(phantom_dataset / spec["training"][0]["label"]))
    with pytest.raises(LiverSegError, match="label shape"):
        load_msd_dataset(phantom_dataset)
    with pytest.raises(LiverSegError, match="no dataset.json"):
        load_msd_dataset(tmp_path)


def test_shared_real_dataset_is_valid(shared_data):
    """Every labelled case dataset.json lists loads, in order, whatever the sample's size."""
    spec = json.loads((shared_data / "dataset.json").read_text())
    listed = [Path(item["image"]).name.removesuffix(".nii.gz") for item in spec["training"]]
    cases = load_msd_dataset(shared_data)
    assert [case.name for case in cases] == listed
    assert len(cases) == spec["numTraining"] >= 1


def test_fixed_validation_list_is_read_and_checked(phantom_dataset):
    manifest = phantom_dataset / "dataset.json"
    spec = json.loads(manifest.read_text())
    assert load_msd_dataset(phantom_dataset, section="validation") == []
    spec["validation"], spec["training"] = spec["training"][:1], spec["training"][1:]
    manifest.write_text(json.dumps(spec))
    assert [c.name for c in load_msd_dataset(phantom_dataset, section="validation")] == ["phantom_000"]
    assert [c.name for c in load_msd_dataset(phantom_dataset)] == ["phantom_001", "phantom_002"]
    spec["validation"].append({"image": "./imagesTr/absent.nii.gz", "label": "./labelsTr/absent.nii.gz"})
    manifest.write_text(json.dumps(spec))
    with pytest.raises(LiverSegError, match="absent: missing file"):
        load_msd_dataset(phantom_dataset, section="validation")
