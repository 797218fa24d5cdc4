import json

import numpy as np
import pytest

from lungct.errors import DataError
from lungct.nifti import read_scan
from lungct.phantom import MARKER_NAME, generate_phantoms
from lungct.phantom_masks import load_phantom_masks

MATRIX = 64
N = 6  # every category at least once


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory):
    out = tmp_path_factory.mktemp("phantoms")
    infos = generate_phantoms(out, N, seed=5, matrix=MATRIX, workers=1, progress=False)
    return out, {i.study_id: i for i in infos}


def test_load_phantom_masks_lie_on_the_scans_lungs_and_lesions(phantom_set):
    out, infos = phantom_set
    sick = next(i for i in infos.values() if i.category == "CT-3")
    volume, _ = read_scan(str(out / sick.study_file))
    masks = load_phantom_masks(out, sick.study_id)
    assert masks.lung.shape == masks.lesion.shape == volume.shape
    assert masks.category == "CT-3"
    assert not np.any(masks.lesion & ~masks.lung)
    assert masks.lesion.sum() / masks.lung.sum() == pytest.approx(sick.involvement, abs=1e-6)
    healthy_lung = masks.lung & ~masks.lesion
    assert np.median(volume[healthy_lung]) < -600
    assert np.median(volume[masks.lesion]) > np.median(volume[healthy_lung]) + 150


def test_load_phantom_masks_of_a_normal_scan_have_no_lesion(phantom_set):
    out, infos = phantom_set
    normal = next(i for i in infos.values() if i.category == "CT-0")
    masks = load_phantom_masks(out, normal.study_id)
    assert masks.lung.any() and not masks.lesion.any()


@pytest.mark.parametrize("study_id", ["study_0000", f"study_{N + 1:04d}", "case_1", "study_1"])
def test_load_phantom_masks_refuses_a_study_id_outside_the_set(phantom_set, study_id):
    out, _ = phantom_set
    with pytest.raises(DataError, match="not a phantom of the set"):
        load_phantom_masks(out, study_id)


def test_load_phantom_masks_refuses_a_scan_that_differs_from_the_render(phantom_set):
    out, infos = phantom_set
    study_id = next(iter(infos))
    volume, _ = read_scan(str(out / infos[study_id].study_file))
    with pytest.raises(DataError, match="masks would not belong to it"):
        load_phantom_masks(out, study_id, volume + 2.0)


def test_load_phantom_masks_refuses_a_folder_without_a_phantom_set(tmp_path):
    with pytest.raises(DataError, match=MARKER_NAME):
        load_phantom_masks(tmp_path, "study_0001")


def test_load_phantom_masks_refuses_another_generator_version(phantom_set, tmp_path):
    out, _ = phantom_set
    marker = json.loads((out / MARKER_NAME).read_text())
    (tmp_path / MARKER_NAME).write_text(json.dumps(marker | {"version": marker["version"] + 1}))
    with pytest.raises(DataError, match="generator version"):
        load_phantom_masks(tmp_path, "study_0001")
