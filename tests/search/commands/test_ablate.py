import contextlib
import csv
import html
import io
import json
import math

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from sklearn.metrics import roc_auc_score

import search.ablate
import search.ablation.runs
import search.training.loop
import search.training.unit
from search.ablate import main
from search.ablation.runs import ORDINAL_RUN_COLUMNS
from search.ablation.summary import ORDINAL_SUMMARY_COLUMNS
from search.training.loop import NonFiniteLossError, predict_probs
from search.training.precision import PRECISION_ENV
from space import baseline, baseline_train, same_padding, variants
from tests.search.conftest import locked_test_part

SMALL = ["--folds", "2", "--repeats", "1", "--epochs", "1", "--size", "16", "16", "16", "--workers", "1"]
SEVEN = list(variants())
NUMERIC = ("n_runs", "n_diverged", "auc_mean", "auc_ci_low", "auc_ci_high", "acc_mean", "acc_ci_low",
           "acc_ci_high", "params", "gflops", "train_seconds_mean", "auc_diff_vs_baseline", "auc_diff_ci_low",
           "auc_diff_ci_high", "n_pairs", "p_value", "p_value_nadeau_bengio")


def _args(data, studies, *extra):
    return ["--data", str(data), "--studies-dir", str(studies), *SMALL, *extra]


def _read_csv(path):
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _number(text):
    return float(text) if text != "" else math.nan


def _ablation_study(studies):
    storage = f"sqlite:///{studies}/ablation.db"
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage)


class CountingFit:
    """Wraps search.training.unit.fit, which search.ablate trains through: counts calls, raises at ``fail_on``."""

    def __init__(self, fail_on=None, error=KeyboardInterrupt):
        self.real = search.training.unit.fit
        self.calls = 0
        self.fail_on = fail_on
        self.error = error

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_on:
            raise self.error() if self.error is KeyboardInterrupt else self.error
        return self.real(*args, **kwargs)


@pytest.fixture(scope="module")
def tiny_ablation(tiny_data, tmp_path_factory):
    """All seven variants, 2 folds x 1 repeat, 1 epoch at 16x16x16, run once for the module's tests."""
    studies = tmp_path_factory.mktemp("ablation")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(_args(tiny_data, studies))
    return code, studies, out.getvalue()


def test_ablate_tiny_run_writes_seven_rows_of_finite_numbers(tiny_ablation):
    code, studies, _ = tiny_ablation
    assert code == 0
    rows = _read_csv(studies / "ablation" / "ablation.csv")
    assert [r["variant"] for r in rows] == SEVEN
    runs = _read_csv(studies / "ablation" / "runs.csv")
    auc = {(r["variant"], r["fold"]): float(r["auc"]) for r in runs}
    for row in rows:
        assert row["n_runs"] == "2" and row["n_pairs"] == "2"
        for column in NUMERIC:
            value = _number(row[column])
            if column.startswith("p_value") and math.isnan(value):
                # Undefined only for the baseline itself, or where both folds moved the AUC by the same amount.
                d = [round(auc[(row["variant"], f)] - auc[("baseline", f)], 10) for f in ("0", "1")]
                assert row["variant"] == "baseline" or d[0] == d[1], (row["variant"], column)
            else:
                assert math.isfinite(value), (row["variant"], column, row[column])
        assert row["verdict"] in ("reference", "better", "worse", "no detectable difference")
    undefined = "paired t (n<6): undefined, the differences have no spread"
    # One epoch on 4-scan folds can leave a variant's AUC equal to the baseline's in both folds (seen with the
    # AVX2 kernels): search.stats.paired then names the test it could not run.
    none = "none: every paired difference is zero"
    assert {r["test"] for r in rows[1:]} <= {"paired t (n<6)", undefined, none}


def test_ablate_tiny_run_prints_the_table_verdicts_and_paths(tiny_ablation):
    _, studies, out = tiny_ablation
    assert "val AUC [95% CI]" in out and "AUC diff vs baseline" in out
    assert out.count("no detectable difference") + out.count(": better") + out.count(": worse") >= 6
    for name in ("ablation.csv", "runs.csv", "ablation.html"):
        assert str(studies / "ablation" / name) in out
    assert "optuna-dashboard sqlite:///" in out


def test_ablate_stores_one_complete_trial_per_run_with_its_learning_curve(tiny_ablation):
    _, studies, _ = tiny_ablation
    study = _ablation_study(studies)
    assert study.study_name.endswith("-course-16x16x16-e1-k2r1-s0")
    trials = study.trials
    assert len(trials) == 14 and all(t.state == TrialState.COMPLETE for t in trials)
    keys = {(t.user_attrs["variant"], t.user_attrs["repeat"], t.user_attrs["fold"]) for t in trials}
    assert keys == {(v, 0, f) for v in SEVEN for f in (0, 1)}
    for t in trials:
        assert t.intermediate_values == {1: pytest.approx(t.user_attrs["auc"])}
        assert t.value == pytest.approx(t.user_attrs["auc"])
        assert {"accuracy", "sensitivity", "specificity", "params", "gflops", "train_seconds", "seed",
                "padding"} <= t.user_attrs.keys()


def test_ablate_gives_every_variant_the_same_folds_and_seeds(tiny_ablation):
    _, studies, _ = tiny_ablation
    runs = _read_csv(studies / "ablation" / "runs.csv")
    for fold in ("0", "1"):
        mine = [r for r in runs if r["fold"] == fold]
        assert [r["variant"] for r in mine] == SEVEN
        assert len({(r["seed"], r["n_train"], r["n_val"]) for r in mine}) == 1
    assert {r["seed"] for r in runs} == {"0", "1"}


def test_ablate_folds_never_hold_a_test_scan(tiny_ablation):
    _, studies, _ = tiny_ablation
    (split_file,) = (studies / "splits").glob("split-*.json")
    (folds_file,) = (studies / "splits").glob("folds-*-k2-r1-seed0.json")
    test_ids = set(json.loads(split_file.read_text())["test"])
    folds = json.loads(folds_file.read_text())["folds"]
    assert test_ids and len(folds) == 2
    for fold in folds:
        assert not test_ids & (set(fold["train"]) | set(fold["val"]))


def test_ablate_page_is_self_contained_with_plots_verdicts_and_methods(tiny_ablation):
    _, studies, _ = tiny_ablation
    page = (studies / "ablation" / "ablation.html").read_text()
    assert "<script src=" not in page and page.count("plotly.js v") == 1
    assert page.count('"type":"box"') == 13  # seven variants' AUCs, six differences from the baseline
    assert "after the last epoch, not after the best epoch" in page
    assert "Wilcoxon" in page and "Nadeau" in page and "too narrow" in page
    for row in _read_csv(studies / "ablation" / "ablation.csv")[1:]:
        assert f"<li>{row['variant']}: {row['verdict']} (AUC diff" in page


def test_ablate_resume_does_not_redo_finished_runs(tiny_data, tmp_path, monkeypatch, capsys):
    interrupting = CountingFit(fail_on=3)
    monkeypatch.setattr(search.training.unit, "fit", interrupting)
    args = _args(tiny_data, tmp_path, "--variants", "baseline,dense100")
    assert main(args) == 130
    study = _ablation_study(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL]
    assert study.trials[-1].user_attrs["fail_reason"] == "interrupted (Ctrl-C)"
    assert "python -m search.ablate --data" in capsys.readouterr().err

    counting = CountingFit()
    monkeypatch.setattr(search.training.unit, "fit", counting)
    assert main(args) == 0
    assert counting.calls == 2  # the interrupted run and the one never started; not the two finished
    complete = [t for t in _ablation_study(tmp_path).trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    assert "4 runs, 2 done, 2 to do" in capsys.readouterr().out


def test_ablate_ctrl_c_resume_hint_masks_storage_passwords(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(search.training.unit, "fit", CountingFit(fail_on=1))
    storage = f"sqlite:///{tmp_path}/ablation.db?password=s3cret"
    assert main(_args(tiny_data, tmp_path, "--variants", "baseline", "--storage", storage)) == 130
    captured = capsys.readouterr()
    assert f"--storage 'sqlite:///{tmp_path}/ablation.db?password=***'" in captured.err
    assert "s3cret" not in captured.out + captured.err


@pytest.mark.parametrize("with_study", [False, True])
def test_ablate_never_reads_a_scan_of_the_locked_test_part(tiny_data, tmp_path, scan_spy, float32, with_study):
    extra = []
    if with_study:  # the search study's split seed picks the test part that stays locked
        search_study = optuna.create_study(study_name="mine", storage=f"sqlite:///{tmp_path}/mine.db",
                                           direction="maximize")
        search_study.set_user_attr("settings", {"seed": 5})
        search_study.add_trial(optuna.trial.create_trial(value=0.8, user_attrs={
            "spec": same_padding(baseline()).to_dict(), "train_spec": baseline_train().to_dict()}))
        extra = ["--study", "mine"]
    assert main(_args(tiny_data, tmp_path, "--variants", "baseline", *extra)) == 0
    test_ids, test_paths = locked_test_part(tmp_path, tiny_data)
    assert test_ids and len(test_paths) == len(test_ids)
    assert scan_spy.asked and not scan_spy.asked & test_ids
    assert scan_spy.read and not scan_spy.read & test_paths


def test_ablate_variants_list_runs_only_those(tiny_data, tmp_path):
    counting = CountingFit()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(search.training.unit, "fit", counting)
        assert main(_args(tiny_data, tmp_path, "--variants", "baseline,dense100")) == 0
    assert counting.calls == 4
    assert [r["variant"] for r in _read_csv(tmp_path / "ablation" / "ablation.csv")] == ["baseline", "dense100"]


def test_ablate_variants_list_without_baseline_adds_it(tiny_data, tmp_path, capsys):
    assert main(_args(tiny_data, tmp_path, "--variants", "avgpool")) == 0
    assert [r["variant"] for r in _read_csv(tmp_path / "ablation" / "ablation.csv")] == ["baseline", "avgpool"]
    assert "baseline added" in capsys.readouterr().out


def test_ablate_non_finite_loss_is_recorded_as_diverged_and_not_redone(tiny_data, tmp_path):
    diverging = CountingFit(fail_on=2, error=NonFiniteLossError(1, 1, math.nan))
    args = _args(tiny_data, tmp_path, "--variants", "baseline,sigmoid")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(search.training.unit, "fit", diverging)
        assert main(args) == 0
        rows = _read_csv(tmp_path / "ablation" / "ablation.csv")
        assert (rows[1]["variant"], rows[1]["n_runs"], rows[1]["n_diverged"]) == ("sigmoid", "1", "1")
        counting = CountingFit()
        mp.setattr(search.training.unit, "fit", counting)
        assert main(args) == 0
    assert counting.calls == 0
    states = sorted(t.state.name for t in _ablation_study(tmp_path).trials)
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED"]


def test_ablate_study_adds_the_best_trial_of_that_search_study(tiny_data, tmp_path):
    best_spec = same_padding(variants()["avgpool"])
    search_study = optuna.create_study(study_name="mine", storage=f"sqlite:///{tmp_path}/mine.db",
                                       direction="maximize")
    for value, spec in ((0.9, best_spec), (0.7, same_padding(baseline()))):
        search_study.add_trial(optuna.trial.create_trial(value=value, user_attrs={
            "spec": spec.to_dict(), "train_spec": baseline_train().to_dict()}))
    assert main(_args(tiny_data, tmp_path, "--variants", "baseline", "--study", "mine")) == 0
    rows = _read_csv(tmp_path / "ablation" / "ablation.csv")
    assert [r["variant"] for r in rows] == ["baseline", "study_best"]
    best_runs = [t for t in _ablation_study(tmp_path).trials if t.user_attrs["variant"] == "study_best"]
    assert len(best_runs) == 2 and all(t.user_attrs["spec"] == best_spec.to_dict() for t in best_runs)
    assert "best trial (0) of study 'mine'" in best_runs[0].user_attrs["origin"]


def test_ablate_study_keeps_the_test_part_of_that_search_study_locked(tiny_data, tmp_path):
    search_study = optuna.create_study(study_name="mine", storage=f"sqlite:///{tmp_path}/mine.db",
                                       direction="maximize")
    search_study.set_user_attr("settings", {"seed": 5})
    search_study.add_trial(optuna.trial.create_trial(value=0.8, user_attrs={
        "spec": same_padding(baseline()).to_dict(), "train_spec": baseline_train().to_dict()}))
    assert main(_args(tiny_data, tmp_path, "--variants", "baseline", "--study", "mine")) == 0
    assert [p.name.split("-")[-1] for p in (tmp_path / "splits").glob("split-*.json")] == ["seed5.json"]
    assert _ablation_study(tmp_path).user_attrs["settings"]["split_seed"] == 5


@pytest.mark.parametrize("flags, message", [
    (["--variants", "dense10"], "--variants: unknown variant 'dense10'; did you mean 'dense100'?"),
    (["--variants", "resdual"], "--variants: unknown variant 'resdual'; did you mean 'residual'?"),
    (["--variants", "study_best"], "--variants: study_best is added by --study NAME"),
    (["--folds", "1"], "--folds: expected at least 2, got 1"),
    (["--repeats", "0"], "--repeats: expected a positive count, got 0"),
    (["--study", "nothere"], "study: no study 'nothere' in sqlite:///"),
])
def test_ablate_bad_input_is_a_one_line_error(tmp_path, capsys, flags, message):
    assert main(["--studies-dir", str(tmp_path), "--data", str(tmp_path), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and len(err.strip().splitlines()) == 1


def test_ablate_help_states_every_default(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for default in ("(default: all)", "(default: 5)", "(default: 2)", "(default: 6 on the CPU, 30 on a GPU)",
                    "(default: 32 64 64 on the CPU, the seed's 64 128 128 on a GPU)", "(default: 0)",
                    "(default: sqlite:///studies/ablation.db)", "(default: studies/ablation)",
                    "(default: course", "(default: auto)", "(default: studies)"):
        assert default in text, default


SEVERITY_VARIANTS = ["baseline", "sigmoid"]


@pytest.fixture(scope="module")
def severity_ablation(severity_data, tmp_path_factory):
    """The baseline and one modification on the severity task, 2 folds x 1 repeat, 1 epoch at 16x32x32, run once;
    every run's validation part, trained model and the probabilities its last epoch was scored on are kept, to
    score them again here."""
    studies = tmp_path_factory.mktemp("severity-ablation")
    trained, scored = [], []
    real, real_metrics = search.ablation.runs.train_model, search.training.loop.task_metrics

    def keep(arch, train_spec, data, val, **kwargs):
        result = real(arch, train_spec, data, val, **kwargs)
        trained.append((kwargs.get("grades"), val, result, scored[-1]))
        return result

    def spy(labels, probs):
        scored.append(np.array(probs, copy=True))
        return real_metrics(labels, probs)

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.setenv(PRECISION_ENV, "float32")
        mp.setattr(search.ablation.runs, "train_model", keep)
        mp.setattr(search.training.loop, "task_metrics", spy)
        code = main(["--data", str(severity_data), "--studies-dir", str(studies), "--task", "severity",
                     "--variants", ",".join(SEVERITY_VARIANTS), "--folds", "2", "--repeats", "1", "--epochs", "1",
                     "--size", "16", "32", "32", "--workers", "1"])
    return code, studies, out.getvalue(), trained


def test_ablate_severity_trains_every_run_with_the_four_grade_ordinal_head(severity_ablation):
    code, _, _, trained = severity_ablation
    assert code == 0 and len(trained) == 4
    for grades, val, result, _ in trained:
        assert grades == 4
        with torch.no_grad():
            assert result.model(val.volumes[:2].float()).shape == (2, 3)  # (B, K-1) "grade >= k" logits


def test_ablate_severity_scores_each_fold_by_the_mean_grade_auc(severity_ablation):
    _, studies, _, trained = severity_ablation
    study = _ablation_study(studies)
    assert study.study_name.endswith("-severity-16x32x32-e1-k2r1-s0")
    trials = sorted(study.trials, key=lambda t: t.number)
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    for trial, (_, val, result, cumulative) in zip(trials, trained, strict=True):
        labels = val.labels.numpy().astype(int)
        assert set(labels) == {0, 1, 2, 3}
        # The probabilities the fold was scored on are the trained model's. The AUC is recomputed from those,
        # summed in float64 as the metric sums them: after one epoch the sigmoid variant's outputs agree to
        # ~1e-8 across scans, so a float32 sum, or another CPU's kernels in a second prediction, reorder them.
        np.testing.assert_allclose(predict_probs(result.model, val.volumes, torch.device("cpu")), cumulative,
                                   atol=1e-5)
        expected_grade = cumulative.astype(np.float64).sum(axis=1)
        mean_auc = np.mean([roc_auc_score(labels >= k, expected_grade) for k in (1, 2, 3)])
        assert trial.user_attrs["auc"] == pytest.approx(mean_auc, abs=1e-9)
        assert trial.value == pytest.approx(mean_auc, abs=1e-9)
        assert {"qwk", "mae", "balanced_accuracy", "accuracy"} <= trial.user_attrs.keys()
        assert "sensitivity" not in trial.user_attrs


def test_ablate_severity_pairs_the_modification_with_the_baseline_on_the_ordinal_score(severity_ablation):
    _, studies, _, _ = severity_ablation
    runs = _read_csv(studies / "ablation" / "runs.csv")
    assert list(runs[0]) == list(ORDINAL_RUN_COLUMNS) and "sensitivity" not in runs[0]
    auc = {(r["variant"], r["fold"]): float(r["auc"]) for r in runs}
    rows = _read_csv(studies / "ablation" / "ablation.csv")
    assert [r["variant"] for r in rows] == SEVERITY_VARIANTS and list(rows[0]) == list(ORDINAL_SUMMARY_COLUMNS)
    sigmoid = rows[1]
    assert sigmoid["n_pairs"] == "2"
    diffs = [auc[("sigmoid", f)] - auc[("baseline", f)] for f in ("0", "1")]
    assert float(sigmoid["auc_diff_vs_baseline"]) == pytest.approx(sum(diffs) / 2, abs=1e-5)
    assert sigmoid["test"].startswith("paired t (n<6)")
    for row in rows:
        assert math.isfinite(float(row["qwk_mean"])) and 0.0 <= float(row["mae_mean"]) <= 3.0


def test_ablate_severity_names_the_mean_grade_auc_in_its_table_verdicts_and_page(severity_ablation):
    _, studies, out, _ = severity_ablation
    assert "an ordinal head of 4 grades; each run is scored by the mean AUC of grade >= k (k = 1..3)" in out
    assert "val grade>=k AUC [95% CI]" in out and "grade>=k AUC diff vs baseline [95% CI]" in out
    assert "QWK [95% CI]" in out and "sigmoid: " in out and " (grade>=k AUC diff " in out
    assert "baseline repeat 0 fold 1: grade>=k AUC " in out
    page = html.unescape((studies / "ablation" / "ablation.html").read_text())
    assert "every AUC is the mean AUC of grade >= k (k = 1..3)" in page
    assert "A fold's score is the validation mean AUC of grade >= k (k = 1..3) after the last epoch" in page
    assert '"text":"validation mean grade\\u003e=k AUC (last epoch)"' in page


def test_ablate_severity_with_a_study_of_another_task_is_a_one_line_error(severity_data, tmp_path, capsys):
    search_study = optuna.create_study(study_name="mine", storage=f"sqlite:///{tmp_path}/mine.db",
                                       direction="maximize")
    search_study.set_user_attr("settings", {"task": "course", "seed": 0})
    search_study.add_trial(optuna.trial.create_trial(value=0.8, user_attrs={
        "spec": same_padding(baseline()).to_dict(), "train_spec": baseline_train().to_dict()}))
    assert main(_args(severity_data, tmp_path, "--task", "severity", "--study", "mine")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --task: study 'mine' searched task 'course', not 'severity'; pass --task course")
    assert len(err.strip().splitlines()) == 1


def test_ablate_severity_on_the_keras_archives_pooled_folder_is_a_one_line_error(tmp_path, capsys):
    from tests.conftest import synthetic_ct, write_nifti
    data = tmp_path / "keras"
    for i in range(8):
        write_nifti(data / f"CT-0/a{i}.nii.gz", synthetic_ct(seed=i))
        write_nifti(data / f"CT-23/b{i}.nii.gz", synthetic_ct(seed=10 + i))
    assert main(_args(data, tmp_path / "s", "--task", "severity")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "CT-23 pools CT-2 and CT-3" in err
