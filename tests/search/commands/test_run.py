import json
import math

import optuna
import pytest
import torch
from optuna.trial import TrialState
from optuna_dashboard._note import get_note_from_system_attrs

import search.selection.confirm
import search.selection.objective
import search.selection.stages
import search.selection.start
import search.training.unit
from lungct.discover import discover
from lungct.splits import load_or_make_split
from search.run import main
from search.selection.confirm import NoRecommendation
from search.study.storage import redact
from search.training.loop import NonFiniteLossError
from space import ArchSpec, cost
from tests.search.conftest import locked_test_part

# 16x16x32: the seed baseline's four levels fit ('same' padding); no confirmation unless a test asks for it.
SMALL = ["--size", "16", "16", "32", "--epochs", "2", "--workers", "1", "--no-confirm"]


def _args(tiny_data, tmp_path, *extra):
    return ["--data", str(tiny_data), "--studies-dir", str(tmp_path), *SMALL, *extra]


def _baseline_spec() -> dict:
    from space import baseline, fit_to_size
    return fit_to_size(baseline(), (16, 16, 32))[0].to_dict()


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
    for key in ("epochs_run", "fold_aucs", "fold_ses", "score", "score_se", "n_val", "train_seconds",
                "samples_per_s", "device"):
        assert key in first.user_attrs, key
    assert 0.0 <= first.value <= 1.0
    out = capsys.readouterr().out
    assert "study 'lungct'" in out and "optuna-dashboard sqlite:///" in out and "(seed baseline)" in out
    study = _study(tmp_path)  # what optuna-dashboard shows: named objectives, a note per trial and on the study
    notes = study._storage.get_study_system_attrs(study._study_id)
    assert study.metric_names == ["CV AUC (search score)"]
    for t in trials:
        assert get_note_from_system_attrs(notes, t._trial_id)["body"].startswith(f"**Trial {t.number}")
    assert "what lungct-nas recommends" in get_note_from_system_attrs(notes, None)["body"]


def test_run_again_resumes_the_same_study_and_keeps_its_settings(tiny_data, tmp_path, capsys, float32):
    assert main(_args(tiny_data, tmp_path, "--trials", "1")) == 0
    # No --size or --epochs: the defaults (a larger input, more epochs) must not apply to this study.
    assert main(["--studies-dir", str(tmp_path), "--data", str(tiny_data), "--trials", "2", "--workers", "1",
                 "--no-confirm"]) == 0
    study = _study(tmp_path)
    assert len(study.trials) == 3
    assert sum(bool(t.user_attrs.get("baseline")) for t in study.trials) == 1
    assert study.user_attrs["settings"]["size"] == [16, 16, 32]
    out = capsys.readouterr().out
    assert "resumed" in out
    resumed_fidelity = next(line for line in out.splitlines()[::-1] if line.startswith("fidelity:"))
    assert "as given by the study" in resumed_fidelity and "command line" not in resumed_fidelity
    # What the resumed run did: the study's own 2 folds x 2 epochs per trial, at the stored size, in float32.
    resumed = study.trials[1:]
    assert all(t.state == TrialState.COMPLETE for t in resumed), [t.user_attrs.get("prune_reason") for t in resumed]
    for t in resumed:
        assert t.user_attrs["epochs_run"] == 4 and len(t.user_attrs["fold_aucs"]) == 2
        curves = t.user_attrs["train_loss"]  # the learning curve: per fold, the mean loss of each epoch
        assert [len(c) for c in curves] == [2, 2] and all(math.isfinite(x) for c in curves for x in c)
        assert t.user_attrs["precision"] == ["float32", "float32"]
        # The cost is of the spec at the stored 16x16x32 input, not at the default size.
        spec = ArchSpec.from_dict(t.user_attrs["spec"])
        assert t.user_attrs["gflops"] == pytest.approx(cost(spec, (16, 16, 32)).gflops)


def test_run_started_while_another_creates_the_study_trains_under_the_study_settings(tiny_data, tmp_path,
                                                                                     monkeypatch, capsys, float32):
    """Two first runs of one study at once: the one that loses the race adopts the winner's settings."""
    real_prepare = search.selection.start.prepare_data
    sizes = []

    def racing_prepare(root, config, **kwargs):
        sizes.append(config.size)
        if len(sizes) == 1:  # the second run is loading its data when the first one creates the study
            assert main(_args(tiny_data, tmp_path, "--trials", "1", "--epochs", "1")) == 0
        return real_prepare(root, config, **kwargs)

    monkeypatch.setattr(search.selection.start, "prepare_data", racing_prepare)
    # No --size or --epochs: alone, this run would make a study of the defaults.
    assert main(["--studies-dir", str(tmp_path), "--data", str(tiny_data), "--trials", "1", "--workers", "1",
                 "--no-confirm"]) == 0
    out = capsys.readouterr().out
    assert out.count("(new)") == 1 and out.count("(resumed)") == 1
    study = _study(tmp_path)
    assert study.user_attrs["settings"]["size"] == [16, 16, 32] and study.user_attrs["settings"]["epochs"] == 1
    first, second = study.trials
    assert first.user_attrs["epochs_run"] == second.user_attrs["epochs_run"] == 2  # 2 folds x the study's 1 epoch
    assert sizes[-1] == (16, 16, 32)  # its data is loaded again at the study's size


def test_run_started_while_another_creates_the_study_refuses_other_flags(tiny_data, tmp_path, monkeypatch, capsys,
                                                                         float32):
    real_prepare = search.selection.start.prepare_data
    calls = []

    def racing_prepare(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            assert main(_args(tiny_data, tmp_path, "--trials", "1", "--epochs", "1")) == 0
            capsys.readouterr()
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(search.selection.start, "prepare_data", racing_prepare)
    assert main(_args(tiny_data, tmp_path, "--trials", "1", "--epochs", "3")) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: study settings: this study was run with epochs=1")
    assert len(captured.err.strip().splitlines()) == 1 and "(new)" not in captured.out
    assert len(_study(tmp_path).trials) == 1  # only the first run's trial


def test_run_never_reads_a_scan_of_the_locked_test_part(tiny_data, tmp_path, scan_spy, float32):
    args = [a for a in _args(tiny_data, tmp_path, "--trials", "2", "--epochs", "1", "--confirm-top", "1",
                             "--confirm-epochs", "1") if a != "--no-confirm"]
    assert main(args) == 0
    assert "confirmation" in _study(tmp_path).user_attrs  # the confirmation stage ran too
    test_ids, test_paths = locked_test_part(tmp_path, tiny_data)
    assert test_ids and len(test_paths) == len(test_ids)
    assert scan_spy.asked and not scan_spy.asked & test_ids
    assert scan_spy.read and not scan_spy.read & test_paths  # decoded: train and val scans only


def test_run_refuses_other_settings_for_an_existing_study(tiny_data, tmp_path, capsys):
    assert main(_args(tiny_data, tmp_path, "--trials", "1")) == 0
    capsys.readouterr()
    assert main(["--studies-dir", str(tmp_path), "--trials", "1", "--size", "16", "16", "16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: study settings: this study was run with size=[16, 16, 32]")
    assert len(err.strip().splitlines()) == 1


def test_run_same_seed_samples_the_same_sequence(tiny_data, tmp_path):
    for name in ("a", "b"):
        assert main(_args(tiny_data, tmp_path, "--trials", "4", "--study", name, "--seed", "7")) == 0
    a, b = _study(tmp_path, "a").trials, _study(tmp_path, "b").trials
    assert [t.params for t in a] == [t.params for t in b]
    assert [t.state for t in a] == [t.state for t in b]
    assert [t.value for t in a] == [t.value for t in b]


def test_run_ctrl_c_leaves_no_running_trial(tiny_data, tmp_path, monkeypatch, capsys):
    real_fit = search.training.unit.fit
    calls = []

    def interrupting_fit(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the second trial's first fold
            raise KeyboardInterrupt
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(search.training.unit, "fit", interrupting_fit)
    assert main(_args(tiny_data, tmp_path, "--trials", "20", "--pruner", "none")) == 130
    trials = _study(tmp_path).trials
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert trials[-1].state == TrialState.FAIL and trials[-1].user_attrs["fail_reason"] == "interrupted (Ctrl-C)"
    assert "Resume with:" in capsys.readouterr().err


def test_run_ctrl_c_resume_hint_masks_the_storage_password(tiny_data, tmp_path, monkeypatch, capsys):
    def interrupting_fit(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(search.training.unit, "fit", interrupting_fit)
    storage = f"sqlite:///{tmp_path}/lungct.db?password=s3cret"
    assert main(_args(tiny_data, tmp_path, "--trials", "1", "--storage", storage)) == 130
    captured = capsys.readouterr()
    assert "Resume with:" in captured.err and f"--storage sqlite:///{tmp_path}/lungct.db?password=***" in captured.err
    assert "s3cret" not in captured.out + captured.err


def test_run_refuses_a_split_file_whose_test_part_overlaps_train(tiny_data, tmp_path, capsys):
    _, path = load_or_make_split(discover(tiny_data, "course").records, tmp_path / "splits")
    saved = json.loads(path.read_text())
    saved["train"].append(saved["test"][0])  # a test scan that the search would train on
    path.write_text(json.dumps(saved))
    assert main(_args(tiny_data, tmp_path, "--trials", "1")) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: {path}: invalid split file: the test part shares 1 id with train")
    assert len(captured.err.strip().splitlines()) == 1 and "held out" not in captured.out


def test_run_storage_that_cannot_be_opened_is_a_one_line_error(tmp_path, capsys):
    assert main(["--studies-dir", str(tmp_path), "--storage", f"sqlite:///{tmp_path}/missing/x.db"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: storage: cannot open") and len(err.strip().splitlines()) == 1


def test_run_non_finite_loss_prunes_the_trial_with_its_reason(tiny_data, tmp_path, monkeypatch):
    def nan_fit(*args, **kwargs):
        raise NonFiniteLossError(1, 3, float("nan"))

    monkeypatch.setattr(search.training.unit, "fit", nan_fit)
    assert main(_args(tiny_data, tmp_path, "--trials", "1")) == 0
    trial = _study(tmp_path).trials[0]
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["prune_reason"] == "fold 1: non-finite training loss (nan) at epoch 1, step 3"


def test_run_out_of_memory_fails_the_trial_and_the_study_goes_on(tiny_data, tmp_path, monkeypatch):
    import search.training.loop

    real_loss = search.training.loop.F.binary_cross_entropy_with_logits
    calls = []

    def oom_once(*args, **kwargs):  # the first training step of the study runs out of memory
        calls.append(1)
        if len(calls) == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(search.training.loop.F, "binary_cross_entropy_with_logits", oom_once)
    monkeypatch.setattr(search.selection.stages, "measure_speed", lambda *a, **k: None)  # the first step is the trial's
    assert main(_args(tiny_data, tmp_path, "--trials", "2")) == 0
    first, second = _study(tmp_path).trials
    assert first.state == TrialState.FAIL and first.user_attrs["fail_reason"].startswith("out of memory on cpu")
    assert second.state in (TrialState.COMPLETE, TrialState.PRUNED)


def test_run_trains_no_spec_that_cannot_run_at_the_input_size(tiny_data, tmp_path):
    assert main(_args(tiny_data, tmp_path, "--trials", "10", "--epochs", "1", "--pruner", "none",
                      "--max-gflops", "0")) == 0
    trials = _study(tmp_path).trials
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.user_attrs.get("prune_reason") for t in trials]
    # Sampled 'valid' specs that do not fit run with 'same' padding, and the trial says so.
    fitted = [t for t in trials if t.params["padding"] == "valid" and t.user_attrs["spec"]["padding"] == "same"]
    assert fitted and all("'same' padding" in t.user_attrs["padding_fallback"] for t in fitted)


def test_run_scores_a_trial_by_the_mean_of_its_final_epoch_fold_aucs(tiny_data, tmp_path, monkeypatch):
    scored = []
    real = search.training.unit.predict_probs

    def spy(model, volumes, *args, **kwargs):  # called once per fold, after its last epoch
        scored.append(volumes.shape[0])
        return real(model, volumes, *args, **kwargs)

    monkeypatch.setattr(search.training.unit, "predict_probs", spy)
    assert main(_args(tiny_data, tmp_path, "--trials", "1", "--epochs", "3")) == 0
    trial = _study(tmp_path).trials[0]
    aucs = trial.user_attrs["fold_aucs"]
    assert len(aucs) == 2 and len(scored) == 2 and trial.user_attrs["epochs_run"] == 6
    assert trial.value == pytest.approx(sum(aucs) / 2, abs=1e-4)
    assert sum(scored) == sum(trial.user_attrs["n_val"]) == 20  # every non-test scan validated once
    assert trial.user_attrs["score_se"] > 0


@pytest.mark.parametrize("flags, message", [
    (["--trials", "0"], "--trials: expected a positive count"),
    (["--size", "2", "2", "2"], "--size: expected three voxel counts of at least 4"),
    (["--objectives", "params"], "objectives: expected auc, auc,params or auc,flops"),
    (["--jobs", "0"], "--jobs: expected a positive count of worker processes"),
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
    from search.study.storage import load_existing_study

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
    assert curve.decode().splitlines()[0] == "fold,epoch,train_loss,seconds,fold_val_auc_final"
    assert len(curve.decode().splitlines()) == 5  # a header and two epochs of each of two folds


def test_run_multi_objective_study_has_two_directions_and_no_pruning(tiny_data, tmp_path):
    assert main(_args(tiny_data, tmp_path, "--trials", "3", "--objectives", "auc,params", "--max-gflops", "0")) == 0
    study = _study(tmp_path)
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert complete and all(t.values[1] == t.user_attrs["params"] for t in complete)
    assert all(not t.intermediate_values for t in study.trials)  # nothing reported, nothing to prune on
    assert all(t.state == TrialState.COMPLETE for t in study.trials)


def test_run_refuses_other_objectives_for_an_existing_study(tiny_data, tmp_path, capsys):
    assert main(_args(tiny_data, tmp_path, "--trials", "1")) == 0
    capsys.readouterr()
    assert main(_args(tiny_data, tmp_path, "--trials", "1", "--objectives", "auc,flops")) == 2
    assert "was created with --objectives auc" in capsys.readouterr().err


def test_run_narrows_specs_above_the_cost_cap_and_trains_them(tiny_data, tmp_path):
    # A twentieth of the baseline's cost at 16x16x32: most draws are above it, and each trains narrower instead
    # of being pruned untrained (space.fit_cost), with the reason and the trained spec's cost on the trial.
    cap = 0.05 * cost(ArchSpec.from_dict(_baseline_spec()), (16, 16, 32)).gflops
    assert main(_args(tiny_data, tmp_path, "--trials", "4", "--max-gflops", f"{cap:.6f}", "--pruner", "none")) == 0
    baseline, *others = _study(tmp_path).trials
    assert "cost_fallback" not in baseline.user_attrs  # the reference point is never narrowed
    assert all(t.state == TrialState.COMPLETE for t in others)
    assert all(t.user_attrs["gflops"] <= cap for t in others)
    narrowed = [t for t in others if "cost_fallback" in t.user_attrs]
    assert narrowed, "the seed's draws at this cap should include one above it"
    for t in narrowed:
        assert "to fit the cost cap" in t.user_attrs["cost_fallback"]
        first = t.user_attrs["spec"]["levels"][0]
        assert (first["filters"], first["n_convs"]) < (t.params["base_filters"], t.params["convs_per_level"])


def test_run_prunes_specs_above_the_cost_cap_before_training(tiny_data, tmp_path, monkeypatch):
    fits = []
    real_fit = search.training.unit.fit
    monkeypatch.setattr(search.training.unit, "fit", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    assert main(_args(tiny_data, tmp_path, "--trials", "5", "--max-gflops", "1e-6")) == 0
    baseline, *others = _study(tmp_path).trials
    assert baseline.state == TrialState.COMPLETE  # the reference point is always trained
    assert all(t.state == TrialState.PRUNED for t in others)
    assert any("too costly for this fidelity" in t.user_attrs["prune_reason"] for t in others)
    assert len(fits) == 2  # the baseline's two folds
    assert _study(tmp_path).user_attrs["settings"]["max_gflops"] == 1e-6


def test_load_existing_study_does_not_create_a_database_for_a_mistyped_name(tmp_path):
    from search.study.storage import load_existing_study

    with pytest.raises(ValueError, match="that database file does not exist"):
        load_existing_study("nope", f"sqlite:///{tmp_path}/nope.db")
    assert not (tmp_path / "nope.db").exists()


def test_run_split_does_not_depend_on_the_training_seed(tiny_data, tmp_path):
    assert main(_args(tiny_data, tmp_path, "--trials", "1", "--study", "a", "--seed", "0")) == 0
    assert main(_args(tiny_data, tmp_path, "--trials", "1", "--study", "b", "--seed", "5")) == 0
    files = {_study(tmp_path, n).user_attrs["data_summary"]["split_file"] for n in ("a", "b")}
    assert len(files) == 1 and len(list((tmp_path / "splits").glob("split-*.json"))) == 1


def test_run_confirms_by_default_and_confirm_only_resumes_without_retraining(tiny_data, tmp_path, monkeypatch,
                                                                             capsys):
    args = [a for a in _args(tiny_data, tmp_path, "--trials", "2", "--epochs", "1", "--confirm-top", "1")
            if a != "--no-confirm"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "confirmation (3-fold x 1 (+ a second repeat for the leader) on fresh folds, 2 epochs, new seeds)" in out
    assert "recommended:" in out and "rule: " in out
    study = _study(tmp_path)
    decision = study.user_attrs["confirmation"]
    assert decision["candidates"][0]["key"] == "baseline" and len(decision["candidates"]) == 2
    companion = optuna.load_study(study_name=decision["companion_study"], storage=f"sqlite:///{tmp_path}/lungct.db")
    # 2 candidates x 3 fresh folds; when the candidate leads the baseline, both train a second repeat of 3 folds.
    second_look = decision["candidates"][1]["difference"] is not None and len(decision["folds"]) == 6
    assert ("second look:" in out) == second_look
    assert len(companion.trials) == (12 if second_look else 6)
    assert all(t.state == TrialState.COMPLETE for t in companion.trials)
    # Fresh folds, 3 by default (each run trains on two thirds of the non-test scans), saved beside the search's;
    # the second look's are another assignment.
    assert len(list((tmp_path / "splits").glob("folds-*-k2-r1-seed0.json"))) == 1
    assert len(list((tmp_path / "splits").glob("folds-*-k3-r1-seed1.json"))) == 1
    assert len(list((tmp_path / "splits").glob("folds-*-k3-r1-seed1001.json"))) == int(second_look)
    fits = []
    real_fit = search.training.unit.fit
    monkeypatch.setattr(search.training.unit, "fit", lambda *a, **k: fits.append(1) or real_fit(*a, **k))
    assert main(["--studies-dir", str(tmp_path), "--confirm-only"]) == 0
    assert fits == []  # every run was already finished
    assert "recommended:" in capsys.readouterr().out


def test_run_confirm_only_without_a_study_is_a_one_line_error(tmp_path, capsys):
    assert main(["--studies-dir", str(tmp_path), "--confirm-only"]) == 2
    err = capsys.readouterr().err
    assert "--confirm-only: no study 'lungct'" in err and len(err.strip().splitlines()) == 1


def test_run_space_file_bounds_the_study_and_is_checked_on_resume(tiny_data, tmp_path, capsys):
    space = tmp_path / "space.toml"
    space.write_text('activation = ["gelu", "relu"]\npooling = ["avg", "max"]\nbase_filters = [8, 64]\n')
    assert main(_args(tiny_data, tmp_path, "--trials", "3", "--epochs", "1", "--space", str(space))) == 0
    study = _study(tmp_path)
    assert study.user_attrs["settings"]["bounds"]["activation"] == ["gelu", "relu"]
    assert all(t.params["base_filters"] in (8, 64) for t in study.trials)
    capsys.readouterr()
    other = tmp_path / "other.toml"
    other.write_text('activation = ["elu"]\n')
    assert main(["--studies-dir", str(tmp_path), "--trials", "1", "--space", str(other)]) == 2
    err = capsys.readouterr().err
    assert "another --space" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("text, message", [
    ('activaton = ["relu"]\n', "did you mean 'activation'"),
    ("batch_size = [\n", "is not valid TOML"),
])
def test_run_bad_space_file_is_a_one_line_error(tmp_path, capsys, text, message):
    space = tmp_path / "space.toml"
    space.write_text(text)
    assert main(["--studies-dir", str(tmp_path), "--trials", "1", "--space", str(space)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --space:") and message in err and len(err.strip().splitlines()) == 1


def test_run_confirm_only_can_reconfirm_with_more_folds(tiny_data, tmp_path, capsys):
    assert main(_args(tiny_data, tmp_path, "--trials", "2", "--epochs", "1", "--confirm-top", "1")) == 0
    assert main(["--studies-dir", str(tmp_path), "--confirm-only", "--confirm-folds", "3"]) == 0
    assert "on fresh 3-fold splits" in capsys.readouterr().out
    study = _study(tmp_path)
    decision = study.user_attrs["confirmation"]
    assert decision["settings"]["folds"] == 3
    assert [f for f in decision["folds"] if f[0] == 0] == [[0, 0], [0, 1], [0, 2]]
    assert [f for f in decision["folds"] if f[0] == 1] in ([], [[1, 0], [1, 1], [1, 2]])  # the leader's second look
    assert study.user_attrs["settings"]["confirm_folds"] == 3 and study.user_attrs["settings"]["folds"] == 2
    assert main(["--studies-dir", str(tmp_path), "--trials", "1", "--folds", "3"]) == 2  # the search's stay fixed


def test_run_scores_folds_with_batchnorm_recomputed_by_default(tiny_data, tmp_path, monkeypatch, capsys):
    calls = []
    real = search.selection.objective.recalibrate_batchnorm
    monkeypatch.setattr(search.selection.objective, "recalibrate_batchnorm",
                        lambda model, data, *a, **k: calls.append(len(data)) or real(model, data, *a, **k))
    assert main(_args(tiny_data, tmp_path, "--trials", "1")) == 0
    baseline = _study(tmp_path).trials[0]
    assert baseline.user_attrs["batchnorm_recomputed"] is True
    assert calls == [10, 10]  # once per fold, over the fold's training scans (half of the 20 non-test scans)
    assert _study(tmp_path).user_attrs["settings"]["score"] == "auc_bn"
    assert "with batch-norm statistics recomputed" in capsys.readouterr().out


def test_run_keeps_the_score_of_a_study_made_before_it_was_stored(tiny_data, tmp_path, capsys):
    assert main(_args(tiny_data, tmp_path, "--trials", "1", "--score", "auc")) == 0
    study = _study(tmp_path)
    settings = dict(study.user_attrs["settings"])
    del settings["score"]  # as an older study stored it
    study.set_user_attr("settings", settings)
    assert main(_args(tiny_data, tmp_path, "--trials", "1")) == 0
    assert "batchnorm_recomputed" not in _study(tmp_path).trials[1].user_attrs
    capsys.readouterr()
    assert main(_args(tiny_data, tmp_path, "--trials", "1", "--score", "auc_bn")) == 2
    assert "score=auc" in capsys.readouterr().err


def _confirming(tiny_data, tmp_path) -> list[str]:
    """One trial, then a one-epoch confirmation of the top candidate."""
    return [a for a in _args(tiny_data, tmp_path, "--trials", "1", "--epochs", "1", "--confirm-top", "1",
                             "--confirm-epochs", "1") if a != "--no-confirm"]


def test_run_value_error_inside_the_confirmation_is_a_bug_with_its_traceback(tiny_data, tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        raise ValueError("bug")

    monkeypatch.setattr(search.selection.stages, "measure_speed", lambda *a, **k: None)
    monkeypatch.setattr(search.selection.confirm, "select_candidates", bug)
    with pytest.raises(ValueError, match=r"^bug$"):
        main(_confirming(tiny_data, tmp_path))


def test_run_confirmation_with_nothing_to_recommend_is_one_line_and_the_search_is_kept(tiny_data, tmp_path,
                                                                                        monkeypatch, capsys):
    def nothing(*args, **kwargs):
        raise NoRecommendation("confirmation: no candidate finished its runs; nothing can be recommended")

    monkeypatch.setattr(search.selection.stages, "measure_speed", lambda *a, **k: None)
    monkeypatch.setattr(search.selection.confirm, "select_candidates", nothing)
    assert main(_confirming(tiny_data, tmp_path)) == 0
    err = capsys.readouterr().err
    assert err.count("confirmation: no candidate finished its runs") == 1
    assert _study(tmp_path).trials[0].state == TrialState.COMPLETE


def test_run_backup_to_keeps_a_copy_and_a_lost_database_resumes_from_it(tiny_data, tmp_path, capsys):
    drive = tmp_path / "drive"
    assert main(_args(tiny_data, tmp_path, "--trials", "2", "--backup-to", str(drive))) == 0
    copy = drive / "lungct.db"
    assert len(optuna.load_study(study_name="lungct", storage=f"sqlite:///{copy}").trials) == 2
    (tmp_path / "lungct.db").unlink()  # a Colab runtime reset: the local disk is gone
    capsys.readouterr()
    assert main(_args(tiny_data, tmp_path, "--trials", "1", "--backup-to", str(drive))) == 0
    assert f"restored {tmp_path / 'lungct.db'} from {copy}" in capsys.readouterr().out
    resumed = optuna.load_study(study_name="lungct", storage=f"sqlite:///{tmp_path / 'lungct.db'}")
    assert [t.number for t in resumed.trials] == [0, 1, 2]
    assert len(optuna.load_study(study_name="lungct", storage=f"sqlite:///{copy}").trials) == 3


@pytest.mark.usefixtures("all_cores")
def test_run_backup_to_refuses_a_database_server_and_several_jobs_in_one_line(tiny_data, tmp_path, capsys):
    assert main(_args(tiny_data, tmp_path, "--trials", "1", "--backup-to", str(tmp_path / "d"),
                      "--storage", "postgresql://u@localhost:1/x")) == 2
    assert capsys.readouterr().err.strip().startswith("error: --backup-to: needs an SQLite study")
    assert main(_args(tiny_data, tmp_path, "--trials", "2", "--jobs", "2", "--backup-to", str(tmp_path / "d"))) == 2
    assert "use it with --jobs 1" in capsys.readouterr().err


def test_run_severity_searches_and_confirms_ordinal_heads_on_the_mean_grade_auc(severity_data, tmp_path,
                                                                                 monkeypatch, capsys):
    built = []
    real_build = search.training.unit.build

    def spy(arch, grades=2):
        built.append(grades)
        return real_build(arch, grades=grades)

    monkeypatch.setattr(search.training.unit, "build", spy)
    args = [a for a in _args(severity_data, tmp_path, "--task", "severity", "--trials", "2", "--epochs", "1",
                             "--confirm-top", "1", "--confirm-epochs", "1") if a != "--no-confirm"]
    assert main(args) == 0
    assert built and set(built) == {4}  # every trial and confirmation run trains the 4-grade ordinal head
    study = _study(tmp_path)
    first = study.trials[0]
    assert first.user_attrs["baseline"] is True and 0.0 <= first.value <= 1.0
    assert first.value == pytest.approx(sum(first.user_attrs["fold_aucs"]) / 2, abs=1e-4)
    assert "confirmation" in study.user_attrs
    companion = optuna.load_study(study_name=study.user_attrs["confirmation"]["companion_study"],
                                  storage=f"sqlite:///{tmp_path}/lungct.db")
    run = companion.trials[0]
    assert set(run.user_attrs["labels"]) == {0, 1, 2, 3}  # each fresh fold holds every grade
    scores = run.user_attrs["probs"]  # the stored per-scan score is the expected grade, in [0, 3]
    assert all(0.0 <= s <= 3.0 for s in scores) and max(scores) > 1.0
    out = capsys.readouterr().out
    assert "task severity" in out and ": mean grade>=k AUC 0." in out  # the confirmation's run lines name it


def test_run_severity_on_the_keras_archives_pooled_folder_is_a_one_line_error(tmp_path, capsys):
    from tests.conftest import synthetic_ct, write_nifti
    data = tmp_path / "keras"
    for i in range(8):
        write_nifti(data / f"CT-0/a{i}.nii.gz", synthetic_ct(seed=i))
        write_nifti(data / f"CT-23/b{i}.nii.gz", synthetic_ct(seed=10 + i))
    assert main(["--data", str(data), "--studies-dir", str(tmp_path / "s"), "--task", "severity", *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert "CT-23 pools CT-2 and CT-3" in err
