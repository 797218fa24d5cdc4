import json

import numpy as np
import pytest
import torch

from lungct.records import PreprocessConfig, get_task
from search.model_dir import ModelInfo, save_model
from search.predict import main
from search.routing import ROUTING
from space import ArchSpec, LevelSpec, TrainSpec, build
from tests.conftest import synthetic_ct, write_nifti

SIZE = (16, 24, 20)


def _model_dir(path, task="course", out_bias=None):
    """A model folder as search.export writes it (without the ONNX file, which predict does not read)."""
    spec = ArchSpec(levels=(LevelSpec(4), LevelSpec(8)), padding="same", head_units=(8,))
    torch.manual_seed(0)
    model = build(spec).eval()
    if out_bias is not None:
        with torch.no_grad():
            model.head.out.weight.zero_()
            model.head.out.bias.fill_(out_bias)
    save_model(path, model, spec, TrainSpec(), ModelInfo.for_task(get_task(task), PreprocessConfig(size=SIZE)))
    return path


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return _model_dir(tmp_path_factory.mktemp("model"))


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_predict_real_scans_give_probabilities_in_the_unit_interval(model_dir, real_ct_dir, capsys):
    scans = [str(real_ct_dir / "example_ct.nii.gz"), str(real_ct_dir / "example_ct_sm.nii.gz")]
    assert main([str(model_dir), *scans, "--json"]) == 0
    results = _json(capsys)["results"]
    assert [r["path"] for r in results] == scans
    for r in results:
        assert {"path", "probability", "predicted_class", "decision"} <= set(r)
        assert 0.0 <= r["probability"] <= 1.0 and r["predicted_class"] in ("CT-0", "CT-2 or CT-3")


def test_predict_4d_image_is_a_one_line_error_and_the_other_scan_is_still_predicted(model_dir, tmp_path, capsys):
    bad = write_nifti(tmp_path / "four_d.nii.gz", np.stack([synthetic_ct(), synthetic_ct(seed=1)], axis=-1))
    good = write_nifti(tmp_path / "good.nii.gz", synthetic_ct())
    assert main([str(model_dir), str(bad), str(good)]) == 1
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {bad}: 4D image") and len(captured.err.strip().splitlines()) == 1
    assert str(good) in captured.out and str(bad) not in captured.out


def test_predict_table_has_the_disclaimer_and_one_row_per_scan(model_dir, tmp_path, capsys):
    scans = [str(write_nifti(tmp_path / f"s{i}.nii.gz", synthetic_ct(seed=i))) for i in range(2)]
    assert main([str(model_dir), *scans]) == 0
    out = capsys.readouterr().out
    assert "not a medical device" in out and "P(CT-2 or CT-3)" in out
    assert sum(line.startswith(tuple(scans)) for line in out.splitlines()) == 2


def test_predict_positive_course_class_gives_both_ct2_and_ct3_decisions(tmp_path, capsys):
    model = _model_dir(tmp_path / "m", out_bias=10.0)
    scan = write_nifti(tmp_path / "s.nii.gz", synthetic_ct())
    assert main([str(model), str(scan), "--json"]) == 0
    result = _json(capsys)["results"][0]
    assert result["predicted_class"] == "CT-2 or CT-3" and result["probability"] > 0.99
    assert result["decisions"] == {"CT-2": ROUTING["CT-2"], "CT-3": ROUTING["CT-3"]}


def test_predict_negative_course_class_gives_the_ct0_decision(tmp_path, capsys):
    model = _model_dir(tmp_path / "m", out_bias=-10.0)
    scan = write_nifti(tmp_path / "s.nii.gz", synthetic_ct())
    assert main([str(model), str(scan), "--json"]) == 0
    result = _json(capsys)["results"][0]
    assert result["predicted_class"] == "CT-0" and result["decision"] == ROUTING["CT-0"]


def test_predict_other_task_says_where_the_table_has_no_decision(tmp_path, capsys):
    model = _model_dir(tmp_path / "m", task="any", out_bias=10.0)
    scan = write_nifti(tmp_path / "s.nii.gz", synthetic_ct())
    assert main([str(model), str(scan), "--json"]) == 0
    result = _json(capsys)["results"][0]
    assert result["predicted_class"] == "CT-1, CT-2, CT-3 or CT-4"
    assert "CT-1 / CT-4: no decision in the course's table" in result["decision"]


def test_predict_missing_model_dir_exits_2_with_one_line(tmp_path, capsys):
    scan = write_nifti(tmp_path / "s.nii.gz", synthetic_ct())
    assert main([str(tmp_path / "nothing"), str(scan)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no such folder" in err and len(err.strip().splitlines()) == 1


def test_predict_incomplete_model_dir_names_the_missing_file(model_dir, tmp_path, capsys):
    (tmp_path / "spec.json").write_bytes((model_dir / "spec.json").read_bytes())
    scan = write_nifti(tmp_path / "s.nii.gz", synthetic_ct())
    assert main([str(tmp_path), str(scan)]) == 2
    assert "missing weights.safetensors, preprocess.json" in capsys.readouterr().err


def test_predict_warns_when_the_model_was_trained_on_phantoms(tmp_path, capsys):
    directory = _model_dir(tmp_path / "m")
    scan = str(write_nifti(tmp_path / "s.nii.gz", synthetic_ct()))
    assert main([str(directory), scan]) == 0
    assert "trained on synthetic phantoms" not in capsys.readouterr().out
    (directory / "metrics.json").write_text(json.dumps({"data": {"phantoms": True}}))
    assert main([str(directory), scan]) == 0
    assert "trained on synthetic phantoms: its probabilities on real scans mean nothing" in capsys.readouterr().out
    assert main([str(directory), scan, "--json"]) == 0
    assert _json(capsys)["trained_on_phantoms"] is True
