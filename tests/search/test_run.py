import optuna
import pytest
import torch
from optuna.trial import TrialState

import search.objective
from search.run import main
from search.study import redact
from search.train import NonFiniteLossError

SMALL = ["--size", "16", "16", "16", "--epochs", "2", "--workers", "1"]


def _args(tiny_data, tmp_path, *extra):
    return ["--data", str(tiny_data), "--studies-dir", str(tmp_path), *SMALL, *extra]


def _study(tmp_path, name="lungct"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/{name}.db")


def test_run_three_trials_store_the_baseline_first_with_costs(tiny_data, tmp_path, capsys):
    assert main(_args(tiny_data, tmp_path, "--trials", "3")) == 0
    trials = _study(tmp_path).trials
    assert len(trials) == 3
    first = trials[0]
    assert first.user_attrs["baseline"] is True and first.state == TrialState.COMPLETE
    assert first.params["base_filters"] == 64 and first.params["n_levels"] == 4
    assert first.user_attrs["spec"]["padding"] == "same"
    assert "'same' padding" in first.user_attrs["padding_fallback"]
    assert first.user_attrs["params"] == 1_351_873 and first.user_attrs["gflops"] > 0
    for key in ("epochs_run", "best_epoch", "val_accuracy", "val_sensitivity", "val_specificity",
                "train_seconds", "samples_per_s", "device"):
        assert key in first.user_attrs, key
    assert 0.0 <= first.value <= 1.0
    out = capsys.readouterr().out
    assert "study 'lungct'" in out and "optuna-dashboard sqlite:///" in out and "(seed baseline)" in out


def test_run_again_resumes_the_same_study_and_keeps_its_settings(tiny_data, tmp_path, capsys):
    assert main(_args(tiny_data, tmp_path, "--trials", "1")) == 0
    assert main(["--studies-dir", str(tmp_path), "--data", str(tiny_data), "--trials", "2"]) == 0
    study = _study(tmp_path)
    assert len(study.trials) == 3
    assert sum(bool(t.user_attrs.get("baseline")) for t in study.trials) == 1
    assert study.user_attrs["settings"]["size"] == [16, 16, 16]
    assert "resumed" in capsys.readouterr().out


def test_run_refuses_other_settings_for_an_existing_study(tiny_data, tmp_path, capsys):
    assert main(_args(tiny_data, tmp_path, "--trials", "1")) == 0
    capsys.readouterr()
    assert main(["--studies-dir", str(tmp_path), "--trials", "1", "--size", "16", "16", "32"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: study settings: this study was run with size=[16, 16, 16]")
    assert len(err.strip().splitlines()) == 1


def test_run_same_seed_samples_the_same_sequence(tiny_data, tmp_path):
    for name in ("a", "b"):
        assert main(_args(tiny_data, tmp_path, "--trials", "4", "--study", name, "--seed", "7")) == 0
    a, b = _study(tmp_path, "a").trials, _study(tmp_path, "b").trials
    assert [t.params for t in a] == [t.params for t in b]
    assert [t.state for t in a] == [t.state for t in b]
    assert [t.value for t in a] == [t.value for t in b]


def test_run_ctrl_c_leaves_no_running_trial(tiny_data, tmp_path, monkeypatch, capsys):
    real_fit = search.objective.fit
    calls = []

    def interrupting_fit(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(search.objective, "fit", interrupting_fit)
    assert main(_args(tiny_data, tmp_path, "--trials", "20", "--pruner", "none")) == 130
    trials = _study(tmp_path).trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert trials[-1].state == TrialState.FAIL and trials[-1].user_attrs["fail_reason"] == "interrupted (Ctrl-C)"
    assert "Resume with:" in capsys.readouterr().err


def test_run_non_finite_loss_prunes_the_trial_with_its_reason(tiny_data, tmp_path, monkeypatch):
    def nan_fit(*args, **kwargs):
        raise NonFiniteLossError(1, 3, float("nan"))

    monkeypatch.setattr(search.objective, "fit", nan_fit)
    assert main(_args(tiny_data, tmp_path, "--trials", "1")) == 0
    trial = _study(tmp_path).trials[0]
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["prune_reason"] == "non-finite training loss (nan) at epoch 1, step 3"


def test_run_out_of_memory_fails_the_trial_and_the_study_goes_on(tiny_data, tmp_path, monkeypatch):
    import search.train

    real_loss = search.train.F.binary_cross_entropy_with_logits
    calls = []

    def oom_once(*args, **kwargs):  # the first training step of the study runs out of memory
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(search.train.F, "binary_cross_entropy_with_logits", oom_once)
    assert main(_args(tiny_data, tmp_path, "--trials", "2")) == 0
    first, second = _study(tmp_path).trials
    assert first.state == TrialState.FAIL and first.user_attrs["fail_reason"].startswith("out of memory on cpu")
    assert second.state in (TrialState.COMPLETE, TrialState.PRUNED)


def test_run_prunes_a_spec_that_cannot_run_at_the_input_size(tiny_data, tmp_path):
    assert main(_args(tiny_data, tmp_path, "--trials", "8")) == 0
    reasons = [t.user_attrs.get("prune_reason", "") for t in _study(tmp_path).trials]
    assert any(r.startswith("invalid at input 16x16x16: level") and "vanishes" in r for r in reasons)


@pytest.mark.parametrize("flags, message", [
    (["--trials", "0"], "--trials: expected a positive count"),
    (["--size", "2", "2", "2"], "--size: expected three voxel counts of at least 4"),
    (["--objectives", "params"], "objectives: expected auc, auc,params or auc,flops"),
])
def test_run_bad_flags_are_one_line_errors(tmp_path, capsys, flags, message):
    assert main(["--studies-dir", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and len(err.strip().splitlines()) == 1


def test_run_missing_data_root_is_a_one_line_error(tmp_path, capsys):
    assert main(["--studies-dir", str(tmp_path), "--data", str(tmp_path / "nope"), "--trials", "1"]) == 2
    err = capsys.readouterr().err
    assert "no such file or folder" in err and len(err.strip().splitlines()) == 1


def test_redact_hides_the_storage_password():
    assert redact("postgresql://user:s3cret@db.example:5432/optuna") == "postgresql://user:***@db.example:5432/optuna"
    assert redact("sqlite:///studies/lungct.db") == "sqlite:///studies/lungct.db"


def test_load_existing_study_names_the_studies_that_exist(tiny_data, tmp_path):
    from search.study import load_existing_study

    assert main(_args(tiny_data, tmp_path, "--trials", "1", "--study", "mine")) == 0
    assert load_existing_study("mine", f"sqlite:///{tmp_path}/mine.db").study_name == "mine"
    with pytest.raises(ValueError, match=r"no study 'other' in sqlite:///.*; studies there: mine"):
        load_existing_study("other", f"sqlite:///{tmp_path}/mine.db")


def _wsgi_get(app, path):
    from wsgiref.util import setup_testing_defaults

    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET"}
    setup_testing_defaults(environ)
    status = []
    body = b"".join(app(environ, lambda s, headers, exc_info=None: status.append(s)))
    return status[0], body


def test_run_artifacts_are_served_by_optuna_dashboard(tiny_data, tmp_path):
    import json

    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    assert main(_args(tiny_data, tmp_path, "--trials", "1")) == 0
    app = optuna_dashboard.wsgi(f"sqlite:///{tmp_path}/lungct.db",
                                artifact_store=FileSystemArtifactStore(tmp_path / "lungct-artifacts"))
    status, body = _wsgi_get(app, "/api/studies/1")
    assert status.startswith("200")
    trial = json.loads(body)["trials"][0]
    files = {a["filename"]: a["artifact_id"] for a in trial["artifacts"]}
    assert set(files) == {"learning_curve.csv", "best_checkpoint.safetensors", "best_checkpoint_spec.json"}
    status, curve = _wsgi_get(app, f"/artifacts/1/{trial['trial_id']}/{files['learning_curve.csv']}")
    assert status.startswith("200")
    assert curve.decode().splitlines()[0].startswith("epoch,train_loss,val_auc")
    assert len(curve.decode().splitlines()) == 3  # a header and the two epochs


def test_run_multi_objective_study_has_two_directions_and_no_pruning(tiny_data, tmp_path):
    assert main(_args(tiny_data, tmp_path, "--trials", "3", "--objectives", "auc,params")) == 0
    study = _study(tmp_path)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete and all(t.values[1] == t.user_attrs["params"] for t in complete)
    assert all(not t.intermediate_values for t in study.trials)  # nothing reported, nothing to prune on
    assert all(t.user_attrs.get("prune_reason", "invalid").startswith("invalid") for t in study.trials)


def test_run_refuses_other_objectives_for_an_existing_study(tiny_data, tmp_path, capsys):
    assert main(_args(tiny_data, tmp_path, "--trials", "1")) == 0
    capsys.readouterr()
    assert main(_args(tiny_data, tmp_path, "--trials", "1", "--objectives", "auc,flops")) == 2
    assert "was created with --objectives auc" in capsys.readouterr().err


def test_run_prunes_specs_above_the_cost_cap_before_training(tiny_data, tmp_path, monkeypatch):
    fits = []
    real_fit = search.objective.fit
    monkeypatch.setattr(search.objective, "fit", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    assert main(_args(tiny_data, tmp_path, "--trials", "5", "--max-gflops", "1e-6")) == 0
    baseline, *others = _study(tmp_path).trials
    assert baseline.state == TrialState.COMPLETE  # the reference point is always trained
    assert all(t.state == TrialState.PRUNED for t in others)
    assert any("too costly for this fidelity" in t.user_attrs["prune_reason"] for t in others)
    assert len(fits) == 1
    assert _study(tmp_path).user_attrs["settings"]["max_gflops"] == 1e-6


def test_load_existing_study_does_not_create_a_database_for_a_mistyped_name(tmp_path):
    from search.study import load_existing_study

    with pytest.raises(ValueError, match="that database file does not exist"):
        load_existing_study("nope", f"sqlite:///{tmp_path}/nope.db")
    assert not (tmp_path / "nope.db").exists()


def test_run_split_does_not_depend_on_the_training_seed(tiny_data, tmp_path):
    assert main(_args(tiny_data, tmp_path, "--trials", "1", "--study", "a", "--seed", "0")) == 0
    assert main(_args(tiny_data, tmp_path, "--trials", "1", "--study", "b", "--seed", "5")) == 0
    files = {_study(tmp_path, n).user_attrs["data_summary"]["split_file"] for n in ("a", "b")}
    assert len(files) == 1 and len(list((tmp_path / "splits").glob("split-*.json"))) == 1
