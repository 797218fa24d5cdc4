import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lungct.nifti
import search.model.prediction
from lungct.records import PreprocessConfig, get_task
from search.cli import EXIT_BROKEN_PIPE
from search.model.folder import MAX_INPUT_VOXELS, PREPROCESS, Ensemble, ModelInfo, load_model, save_model
from search.model.routing import CLINICAL_NOTE, ROUTING
from search.predict import main
from space import ArchSpec, LevelSpec, TrainSpec, build, memory
from tests.conftest import synthetic_ct, write_nifti

SIZE = (16, 24, 20)
REPO = Path(__file__).resolve().parents[3]


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
    captured = capsys.readouterr()
    results = json.loads(captured.out)["results"]
    # The whole torso (336 mm) is a chest CT; the 30-slice crop (90 mm) is predicted with a warning.
    assert results[0]["warnings"] == [] and results[0]["scan"]["body_axis_mm"] == 336.0
    assert len(results[1]["warnings"]) == 1 and "covers 90 mm along the body axis" in results[1]["warnings"][0]
    assert captured.err.strip().splitlines() == [f"warning: {scans[1]}: {results[1]['warnings'][0]}"]
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


def test_predict_slab_is_a_one_line_error_and_json_says_so(model_dir, tmp_path, capsys):
    slab = write_nifti(tmp_path / "slab.nii.gz", synthetic_ct((20, 24, 2)), np.diag([0.7, 0.7, 3.0, 1.0]))
    good = write_nifti(tmp_path / "good.nii.gz", synthetic_ct())
    assert main([str(model_dir), str(slab), str(good), "--json"]) == 1
    captured = capsys.readouterr()
    line, = captured.err.strip().splitlines()
    assert line.startswith(f"error: {slab}: 2 slices covering 6 mm along the body axis cannot be a chest CT")
    result = json.loads(captured.out)
    assert [e["path"] for e in result["errors"]] == [str(slab)]
    assert "cannot be a chest CT" in result["errors"][0]["error"]
    assert [r["path"] for r in result["results"]] == [str(good)]


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


def test_predict_other_task_gives_the_decision_of_every_pooled_grade(tmp_path, capsys):
    model = _model_dir(tmp_path / "m", task="any", out_bias=10.0)
    scan = write_nifti(tmp_path / "s.nii.gz", synthetic_ct())
    assert main([str(model), str(scan), "--json"]) == 0
    out = _json(capsys)
    result = out["results"][0]
    assert result["predicted_class"] == "CT-1, CT-2, CT-3 or CT-4"
    assert result["decisions"] == {c: ROUTING[c] for c in ("CT-1", "CT-2", "CT-3", "CT-4")}
    assert f"if CT-1: {ROUTING['CT-1']}" in result["decision"] and "no decision" not in result["decision"]
    assert out["routing_note"] == CLINICAL_NOTE


def test_predict_console_says_the_table_weighs_clinical_data(tmp_path, capsys):
    model = _model_dir(tmp_path / "m")
    scan = write_nifti(tmp_path / "s.nii.gz", synthetic_ct())
    assert main([str(model), str(scan)]) == 0
    assert CLINICAL_NOTE in capsys.readouterr().out


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


def _broken_copy(model_dir, tmp_path, name, change):
    """A copy of the model folder with one JSON file changed by ``change(data)``."""
    directory = tmp_path / "broken"
    directory.mkdir()
    for path in model_dir.iterdir():
        (directory / path.name).write_bytes(path.read_bytes())
    data = json.loads((directory / name).read_text())
    change(data)
    (directory / name).write_text(json.dumps(data))  # NaN and Infinity as Python's json writes them
    return directory


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def change(data):
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value
    return change


@pytest.mark.parametrize("name, change, field", [
    ("preprocess.json", _set("threshold", float("nan")), "threshold"),
    ("preprocess.json", _set("threshold", float("inf")), "threshold"),
    ("preprocess.json", _set("threshold", 7), "threshold"),
    ("preprocess.json", _set("threshold", -0.1), "threshold"),
    ("preprocess.json", _set("threshold", "high"), "threshold"),
    ("preprocess.json", _set("preprocess", "hu_min", float("nan")), "preprocess.hu_min"),
    ("preprocess.json", _set("preprocess", "hu_max", float("inf")), "preprocess.hu_max"),
    ("preprocess.json", _set("preprocess", "hu_min", 400.0), "preprocess.hu_min"),
    ("preprocess.json", _set("preprocess", "size", [16, 24]), "preprocess.size"),
    ("preprocess.json", _set("preprocess", "size", [16, 24, 0]), "preprocess.size"),
    ("preprocess.json", _set("preprocess", "size", [16.5, 24, 20]), "preprocess.size"),
    ("preprocess.json", _set("preprocess", "size", [4000, 4000, 4000]), "preprocess.size"),
    ("preprocess.json", _set("preprocess", "size", [1, 24, 20]), "cannot run at its input size"),
    ("preprocess.json", _set("classes", ["CT-0"]), "classes"),
    ("spec.json", _set("levels", "many"), "ArchSpec.levels"),
    ("spec.json", _set("activation", "relu6"), "ArchSpec.activation"),
    ("spec.json", _set("head_units", [8, 8]), "weights.safetensors: does not match spec.json"),
])
def test_predict_invalid_model_folder_is_a_one_line_error_naming_the_file_and_field(model_dir, tmp_path, capsys,
                                                                                      name, change, field):
    directory = _broken_copy(model_dir, tmp_path, name, change)
    scan = write_nifti(tmp_path / "s.nii.gz", synthetic_ct())
    assert main([str(directory), str(scan)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {directory}/") and field in lines[0], lines
    assert "Traceback" not in captured.err and captured.out == ""


def test_predict_weights_of_another_spec_are_a_one_line_error(model_dir, tmp_path, capsys):
    other = _model_dir(tmp_path / "other")
    spec = ArchSpec(levels=(LevelSpec(4), LevelSpec(16)), padding="same", head_units=(8,))
    save_model(other, build(spec), spec, TrainSpec(), ModelInfo.for_task(get_task("course"), PreprocessConfig(SIZE)))
    (other / "spec.json").write_bytes((model_dir / "spec.json").read_bytes())
    scan = write_nifti(tmp_path / "s.nii.gz", synthetic_ct())
    assert main([str(other), str(scan)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {other / 'weights.safetensors'}: does not match spec.json")
    assert len(err.strip().splitlines()) == 1


def test_predict_size_cap_is_far_above_what_the_search_trains_at():
    assert MAX_INPUT_VOXELS >= 8 * 64 * 128 * 128  # 8x the seed's input


def _ensemble_dir(path, members=3):
    spec = ArchSpec(levels=(LevelSpec(4), LevelSpec(8)), padding="same", head_units=(8,))
    torch.manual_seed(1)
    model = Ensemble([build(spec) for _ in range(members)]).eval()
    save_model(path, model, spec, TrainSpec(), ModelInfo.for_task(get_task("course"), PreprocessConfig(size=SIZE)))
    return path, model


def test_ensemble_outputs_the_logit_of_its_members_mean_probability():
    z = torch.tensor([[0.0, 2.0, -1.0], [1.0, -3.0, 4.0]])
    assert torch.allclose(Ensemble([torch.nn.Identity(), torch.nn.Identity()])(z), z, atol=1e-6)  # same members

    class Shift(torch.nn.Module):
        def __init__(self, shift):
            super().__init__()
            self.shift = shift

        def forward(self, x):
            return x + self.shift

    mixed = Ensemble([Shift(-2.0), Shift(3.0)])(z)
    assert torch.allclose(mixed, torch.logit((torch.sigmoid(z - 2) + torch.sigmoid(z + 3)) / 2), atol=1e-5)
    # Probabilities that round to 0 or 1 in float32 still give a finite logit of their mean.
    extreme = Ensemble([Shift(0.0), Shift(0.0)])(torch.tensor([300.0, -300.0]))
    assert torch.all(torch.isfinite(extreme)) and torch.allclose(extreme, torch.tensor([300.0, -300.0]))


def test_predict_reads_an_ensemble_folder_and_matches_the_in_memory_ensemble(tmp_path, capsys):
    directory, model = _ensemble_dir(tmp_path / "ens")
    loaded, _, _ = load_model(directory)
    assert isinstance(loaded, Ensemble) and len(loaded.members) == 3
    x = torch.rand(2, 1, *SIZE)
    assert torch.allclose(loaded(x), model(x), atol=1e-6)
    scan = write_nifti(tmp_path / "s.nii.gz", synthetic_ct())
    assert main([str(directory), str(scan), "--json"]) == 0
    assert 0.0 <= _json(capsys)["results"][0]["probability"] <= 1.0


@pytest.mark.parametrize("value", [0, -1, "3", 2.0, True, 10_000, None])
def test_predict_invalid_ensemble_member_count_is_a_one_line_error(tmp_path, capsys, value):
    directory, _ = _ensemble_dir(tmp_path / "ens")
    (directory / "ensemble.json").write_text(json.dumps({"members": value}))
    assert main([str(directory), str(write_nifti(tmp_path / "s.nii.gz", synthetic_ct()))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ensemble.json: members" in err[0]


def test_predict_ensemble_folder_with_one_member_too_few_weights_is_a_one_line_error(tmp_path, capsys):
    directory, _ = _ensemble_dir(tmp_path / "ens")
    (directory / "ensemble.json").write_text(json.dumps({"members": 2}))
    assert main([str(directory), str(write_nifti(tmp_path / "s.nii.gz", synthetic_ct()))]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not match spec.json" in err[0] and "unexpected members.2" in err[0]


def test_predict_saliency_writes_one_montage_per_scan_and_json_lists_them(model_dir, real_ct_dir, tmp_path, capsys):
    scans = [str(real_ct_dir / "example_ct.nii.gz"), str(real_ct_dir / "example_ct_sm.nii.gz")]
    out = tmp_path / "saliency"  # created by predict
    assert main([str(model_dir), *scans, "--saliency", str(out), "--json"]) == 0
    results = _json(capsys)["results"]
    paths = [r["saliency"] for r in results]
    assert paths == [str(out / "example_ct.saliency.png"), str(out / "example_ct_sm.saliency.png")]
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(p).name for p in paths)  # no temporary file left
    for path in paths:
        data = Path(path).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 20_000 < len(data) < 2_000_000


def test_predict_saliency_title_states_the_probability_and_decision(model_dir, tmp_path, capsys, monkeypatch):
    titles = []
    real_plot = search.model.prediction.plot_montage

    def spy(volume, saliency, title, subtitle):
        titles.append((title, subtitle, volume.shape, saliency.shape))
        return real_plot(volume, saliency, title, subtitle)

    monkeypatch.setattr(search.model.prediction, "plot_montage", spy)
    scan = write_nifti(tmp_path / "case.nii.gz", synthetic_ct())
    assert main([str(model_dir), str(scan), "--saliency", str(tmp_path / "out"), "--json"]) == 0
    result = _json(capsys)["results"][0]
    (title, subtitle, volume_shape, saliency_shape), = titles
    assert title == "case.nii.gz" and volume_shape == saliency_shape == SIZE
    assert f"P(CT-2 or CT-3) = {result['probability']:.3f}" in subtitle
    assert result["predicted_class"] in subtitle and result["decision"] in subtitle and "Grad-CAM++" in subtitle


def test_predict_saliency_table_names_the_montages(model_dir, tmp_path, capsys):
    scan = write_nifti(tmp_path / "case.nii.gz", synthetic_ct())
    assert main([str(model_dir), str(scan), "--saliency", str(tmp_path / "out")]) == 0
    assert "saliency montages" in capsys.readouterr().out and (tmp_path / "out" / "case.saliency.png").is_file()


def test_predict_saliency_into_a_file_is_a_one_line_error(model_dir, tmp_path, capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("")
    scan = write_nifti(tmp_path / "case.nii.gz", synthetic_ct())
    assert main([str(model_dir), str(scan), "--saliency", str(blocker)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --saliency:") and len(err.strip().splitlines()) == 1


def test_predict_saliency_of_an_ensemble_folder_writes_its_montage(tmp_path, capsys):
    spec = ArchSpec(levels=(LevelSpec(4), LevelSpec(8)), padding="same", head_units=(8,))
    torch.manual_seed(0)
    model = Ensemble([build(spec), build(spec)]).eval()
    save_model(tmp_path / "m", model, spec, TrainSpec(), ModelInfo.for_task(get_task("course"),
                                                                             PreprocessConfig(size=SIZE)))
    scan = write_nifti(tmp_path / "case.nii.gz", synthetic_ct())
    assert main([str(tmp_path / "m"), str(scan), "--saliency", str(tmp_path / "out"), "--json"]) == 0
    assert Path(_json(capsys)["results"][0]["saliency"]).is_file()


def test_predict_without_saliency_lists_none(model_dir, tmp_path, capsys):
    scan = write_nifti(tmp_path / "case.nii.gz", synthetic_ct())
    assert main([str(model_dir), str(scan), "--json"]) == 0
    assert _json(capsys)["results"][0]["saliency"] is None


def test_predict_without_a_threshold_warns_in_one_line_and_in_json_then_predicts_at_half(tmp_path, capsys):
    directory = _model_dir(tmp_path / "m")
    info = json.loads((directory / PREPROCESS).read_text())
    del info["threshold"]
    (directory / PREPROCESS).write_text(json.dumps(info))
    scan = str(write_nifti(tmp_path / "s.nii.gz", synthetic_ct()))
    assert main([str(directory), scan, "--json"]) == 0
    captured = capsys.readouterr()
    line, = captured.err.strip().splitlines()
    assert line.startswith(f"warning: {directory / PREPROCESS}: threshold: missing") and "0.5" in line
    result = json.loads(captured.out)
    assert result["threshold"] == 0.5 and result["notes"][0] == line
    assert main([str(directory), scan]) == 0
    assert capsys.readouterr().err.strip() == line


def test_predict_refuses_a_scan_whose_decoding_exceeds_the_memory_cap_before_reading_it(model_dir, tmp_path, capsys,
                                                                                       monkeypatch):
    """The same volume stored as float64 (8 bytes a voxel) and int16 (2): with the cap between the two decodings'
    needs (and above the network's), the float64 copy is refused in one line naming it, its data never read."""
    volume = synthetic_ct((128, 128, 64))
    wide = write_nifti(tmp_path / "wide.nii.gz", volume, dtype=np.float64)
    narrow = write_nifti(tmp_path / "narrow.nii.gz", volume, dtype=np.int16)
    need = {p: lungct.nifti.decoded_bytes((128, 128, 64), np.dtype(t)) for p, t in ((wide, "f8"), (narrow, "i2"))}
    cap = (need[wide] + need[narrow]) // 2
    assert memory(ArchSpec.from_json((model_dir / "spec.json").read_text()), SIZE).total() < cap
    read = []
    original = lungct.nifti._read_canonical
    monkeypatch.setattr(lungct.nifti, "_read_canonical", lambda image, shape: read.append(shape) or original(image,
                                                                                                           shape))
    assert main([str(model_dir), str(wide), str(narrow), "--max-memory-gb", str(cap / 1e9)]) == 1
    captured = capsys.readouterr()
    line, = captured.err.strip().splitlines()
    assert line.startswith(f"error: {wide}: decoding it takes about 0.0168 GB (128x128x64 = 1,048,576 voxels of "
                           "float64 plus 2 float32 working copies), above the cap of ") and "--max-memory-gb" in line
    assert len(read) == 1 and str(narrow) in captured.out and str(wide) not in captured.out


def test_predict_into_a_pipe_closed_early_ends_quietly(model_dir, tmp_path):
    """``python -m search.predict ... | head -0``: the reader is gone before predict writes, so every write to
    stdout fails; the command must end with 141 and no traceback, not "Exception ignored ... BrokenPipeError"."""
    scan = str(write_nifti(tmp_path / "s.nii.gz", synthetic_ct()))
    proc = subprocess.Popen([sys.executable, "-m", "search.predict", str(model_dir), scan], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader closes the pipe before the command has written a byte
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=300) == EXIT_BROKEN_PIPE
    assert err == ""
