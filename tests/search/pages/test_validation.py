"""search.pages.validation: the confirmation section's rows, figure and notes from a stored decision dict, and
the validation section's pieces (reading metrics.json, each model's scores, the test part's lines) from a
metrics dict, without training. The report's page around them is tested in tests/search/commands/test_report.py.
"""

import html
import json
import math

import optuna
import pytest

from search.pages.validation import (
    STAGES,
    NoExport,
    Scores,
    _number,
    _test_part_lines,
    confirmation_figure,
    confirmation_section,
    export_command,
    export_scores,
    load_export_metrics,
    validation_figure,
    validation_section,
)
from search.selection.confirm import Decision
from search.study import schema
from search.study.notes import score_name
from space import baseline, baseline_train, describe_spec, same_padding

BASE_SPEC = baseline().to_dict()
SMALL_SPEC = same_padding(baseline()).to_dict()
SMALL_SPEC["levels"] = SMALL_SPEC["levels"][:2]
TRAIN = baseline_train().to_dict()
RULE = "recommend the best-confirmed candidate whose lower bound is above 0; else the seed baseline"


def _row(key, trial, baseline, spec, search, se, folds, confirmed, difference=None, low=None, beats=False,
         reason=None) -> dict:
    return {"key": key, "trial": trial, "baseline": baseline, "spec": spec, "train_spec": TRAIN,
            "search_score": search, "search_se": se, "fold_aucs": folds, "confirmed": confirmed, "members": None,
            "difference": difference, "difference_low": low, "beats_baseline": beats, "reason": reason}


def _decision(recommend="trial3") -> dict:
    """A decision as search.selection.confirm stores it: the baseline, a winner, and a candidate whose run diverged."""
    rows = [_row("baseline", 0, True, BASE_SPEC, 0.62, 0.05, [0.6, 0.7], 0.65),
            _row("trial3", 3, False, SMALL_SPEC, 0.81, 0.04, [0.75, 0.79], 0.77, 0.12, 0.02, True),
            _row("trial<5>", 5, False, SMALL_SPEC, 0.84, None, [0.8, None], None, reason="runs missing or diverged")]
    chosen = next(r for r in rows if r["key"] == recommend)
    return {"rule": RULE, "settings": {"epochs": 4, "seed": 0, "folds": 2, "repeats": 1}, "folds": [[0, 0], [0, 1]],
            "candidates": rows, "companion_study": "lungct:confirm2-k2r1-e4-s0-f1",
            "recommended": {k: chosen[k] for k in ("key", "trial", "baseline", "confirmed", "spec", "train_spec",
                                                   "members")} | {"why": "trial3 beats the seed baseline by +0.120"}}


def _study(decision: dict | None = None, name="lungct", n_trials=0) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=optuna.storages.InMemoryStorage(), direction="maximize")
    if decision is not None:
        study.set_user_attr(schema.STUDY_CONFIRMATION, decision)
    for _ in range(n_trials):
        study.add_trial(optuna.trial.create_trial(value=0.5))
    return study


def _auc(estimate, low, high, method="stratified bootstrap") -> dict:
    return {"estimate": estimate, "low": low, "high": high, "confidence": 0.95, "method": method}


def _metrics(name="lungct", baseline_is_model=False, n_trials=2, difference=None) -> dict:
    """The fields of metrics.json that the section reads."""
    tested, tested_base = {"auc": _auc(0.6, 0.3, 0.85)}, {"auc": _auc(0.7, 0.4, 0.9)}
    return {
        "created": "2025-01-01T00:00:00+00:00",
        "study": {"name": name, "n_trials": n_trials},
        "task": {"classes": ["CT-0", "CT-2 or CT-3"]},
        "test": {"n": 7, "n_negative": 4, "n_positive": 3, "model": tested_base if baseline_is_model else tested,
                 "baseline": tested_base, "baseline_is_model": baseline_is_model,
                 "auc_difference": difference if difference is not None else _auc(-0.1, -0.4, 0.2, "paired")},
        "selection": {"confirmed_score": 0.65 if baseline_is_model else 0.77, "baseline_confirmed_score": 0.65},
        "model": {"search_cv_auc": 0.81, "search_cv_se": 0.04},
        "baseline": {"search_cv_auc": 0.62, "search_cv_se": 0.05},
    }


def _folder(tmp_path, content) -> object:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "metrics.json").write_text(content if isinstance(content, str) else json.dumps(content))
    return folder


@pytest.mark.parametrize("value, expected", [(0.5, 0.5), (1, 1.0), (math.nan, None), (math.inf, None),
                                             (None, None), (True, None), ("0.5", None)])
def test_number_is_a_finite_number_as_a_float_else_none(value, expected):
    got = _number(value)
    assert got == expected and (got is None or isinstance(got, float))


def test_confirmation_section_without_a_decision_says_what_to_run():
    section = confirmation_section(_study())
    assert section == ('<p class="note">No confirmation yet: run python -m search.run --confirm-only '
                       "(export needs it).</p>")


def test_confirmation_section_has_one_row_per_candidate_in_the_decisions_order():
    section = confirmation_section(_study(_decision()))
    body = section.split('id="confirmation-table"')[1].split("<tbody>")[1]
    rows = [[c.split("</td>")[0] for c in row.split("<td>")[1:]] for row in body.split("<tr>")[1:]]
    assert [r[0] for r in rows] == ["baseline", "trial3", "trial&lt;5&gt;"]  # the key is escaped
    # A decision stored before the margin rule: no SE, GFLOPs or verdict; "beats baseline" stands for the verdict.
    assert rows[0][1:10] == ["0.620", "0.050", "0.600 / 0.700", "0.650", "-", "-", "-", "-", "reference"]
    assert rows[1][1:10] == ["0.810", "0.040", "0.750 / 0.790", "0.770", "+0.120", "-", "+0.020", "-", "yes"]
    assert rows[2][1:10] == ["0.840", "-", "0.800 / -", "-", "-", "-", "-", "-", "no"]  # a diverged fold: '-'
    assert rows[1][10] == html.escape(describe_spec(SMALL_SPEC))


def test_confirmation_section_shows_the_margin_rules_verdict_noise_and_cost():
    d = _decision()
    d["candidates"][1].update({"se": 0.031, "verdict": "as good and cheaper", "gflops": 0.5})
    d["candidates"][0]["gflops"] = 5.44
    body = confirmation_section(_study(d)).split('id="confirmation-table"')[1].split("<tbody>")[1]
    rows = [[c.split("</td>")[0] for c in row.split("<td>")[1:]] for row in body.split("<tr>")[1:]]
    assert rows[1][6:10] == ["0.031", "+0.020", "0.50", "as good and cheaper"] and rows[0][8] == "5.44"


def test_confirmation_section_states_the_recommendation_rule_settings_and_companion_study():
    section = html.unescape(confirmation_section(_study(_decision())))
    assert "<b>Recommended: trial3</b>: trial3 beats the seed baseline by +0.120." in section
    assert f"Rule: {RULE}." in section and "'epochs': 4" in section
    assert "the study 'lungct:confirm2-k2r1-e4-s0-f1' in the same storage" in section
    assert 'id="fig-confirmation"' in section


def test_confirmation_figure_plots_search_scores_fold_aucs_and_means_per_candidate():
    fig = confirmation_figure(Decision.from_dict(_decision()))
    search, folds, means = fig.data
    assert list(search.y) == [0.62, 0.81, 0.84] and list(search.error_y.array) == [0.05, 0.04, None]
    assert list(folds.y) == [0.6, 0.7, 0.75, 0.79, 0.8]  # the diverged fold is left out
    assert list(means.y) == [0.65, 0.77, None]
    assert all(-0.5 < x < 0.5 for x in folds.x[:2]) and all(1.5 < x < 2.5 for x in folds.x[4:])


def test_confirmation_figure_marks_the_recommended_candidate_and_the_baselines_mean():
    fig = confirmation_figure(Decision.from_dict(_decision()))
    assert list(fig.layout.xaxis.ticktext) == ["seed baseline", "trial3<br><b>recommended</b>", "trial<5>"]
    (line,) = [s for s in fig.layout.shapes if s.type == "line"]
    (band,) = [s for s in fig.layout.shapes if s.type == "rect"]
    assert line.y0 == line.y1 == 0.65 and (band.x0, band.x1) == (-0.45, 0.45)


def test_confirmation_figure_of_a_kept_baseline_marks_it_recommended():
    fig = confirmation_figure(Decision.from_dict(_decision(recommend="baseline")))
    assert fig.layout.xaxis.ticktext[0] == "seed baseline<br><b>recommended</b>"
    assert "recommended" not in fig.layout.xaxis.ticktext[1]


def test_export_command_names_the_studies_dir_only_when_it_is_not_the_default():
    assert export_command("lungct", "studies") == "python -m search.export --study lungct"
    assert export_command("s2", "/tmp/x") == "python -m search.export --study s2 --studies-dir /tmp/x"


def test_load_export_metrics_without_a_folder_says_what_to_run(tmp_path):
    with pytest.raises(NoExport, match=f"^No exported model in {tmp_path / 'none'} yet, .*: run CMD, then"):
        load_export_metrics(tmp_path / "none", "lungct", "CMD")


def test_load_export_metrics_of_a_folder_without_metrics_json_is_not_an_export(tmp_path):
    with pytest.raises(NoExport, match=f"^{tmp_path} holds no metrics.json, so it is not a folder written by"):
        load_export_metrics(tmp_path, "lungct", "CMD")


def test_load_export_metrics_of_another_study_names_both(tmp_path):
    folder = _folder(tmp_path, _metrics(name="other"))
    with pytest.raises(NoExport, match="is the export of study 'other', not of 'lungct'"):
        load_export_metrics(folder, "lungct", "CMD")


@pytest.mark.parametrize("content", ["[1, 2]", '{"study": "lungct"}', "{not json"])
def test_load_export_metrics_of_a_file_without_the_studys_name_is_no_export(tmp_path, content):
    with pytest.raises(NoExport):
        load_export_metrics(_folder(tmp_path, content), "lungct", "CMD")


def test_load_export_metrics_gives_the_dict_of_this_studys_export(tmp_path):
    assert load_export_metrics(_folder(tmp_path, _metrics()), "lungct", "CMD") == _metrics()


def test_export_scores_give_the_model_then_the_baseline_at_each_stage():
    model, base = export_scores(_metrics())
    assert model == Scores("exported model", False, 0.81, 0.04, 0.77, 0.6, 0.3, 0.85)
    assert base == Scores("seed baseline", True, 0.62, 0.05, 0.65, 0.7, 0.4, 0.9)
    assert model.optimism == pytest.approx(0.17) and base.optimism == pytest.approx(-0.05)


def test_export_scores_of_a_baseline_export_give_one_row():
    (only,) = export_scores(_metrics(baseline_is_model=True))
    assert only == Scores("exported model (the seed baseline)", True, 0.81, 0.04, 0.65, 0.7, 0.4, 0.9)


def test_export_scores_of_a_file_lacking_a_field_is_a_key_error_naming_it():
    metrics = _metrics()
    del metrics["selection"]
    with pytest.raises(KeyError, match="selection"):
        export_scores(metrics)


@pytest.mark.parametrize("confirmed, test", [(None, 0.6), (0.7, None), (None, None)])
def test_scores_optimism_needs_both_the_confirmed_and_the_test_auc(confirmed, test):
    assert Scores("m", False, None, None, confirmed, test, None, None).optimism is None


def test_test_part_lines_state_the_size_and_a_difference_that_holds_zero():
    lines = html.unescape(_test_part_lines(_metrics(), n_trials=2))
    assert lines.startswith("<p>Locked test part: 7 scans (4 CT-0, 3 CT-2 or CT-3), scored once by python -m "
                            "search.export (2025-01-01T00:00:00+00:00).</p>")
    assert ("model minus seed baseline: -0.100 (95% CI -0.400 to 0.200); the interval holds 0, so this test part "
            "cannot tell the two apart.") in lines
    assert "export again" not in lines


def test_test_part_lines_of_a_difference_away_from_zero_do_not_say_it_cannot_tell():
    lines = _test_part_lines(_metrics(difference=_auc(0.2, 0.05, 0.4, "paired")), n_trials=2)
    assert "0.200 (95% CI 0.050 to 0.400).</p>" in lines and "cannot tell" not in lines


def test_test_part_lines_without_a_difference_give_the_baselines_note():
    metrics = _metrics()
    metrics["test"]["auc_difference"] = None
    metrics["baseline"] = {"note": "the seed baseline cannot run at 8x8x8"}
    assert "<p>No difference in AUC: the seed baseline cannot run at 8x8x8.</p>" in _test_part_lines(metrics, 2)
    metrics["baseline"] = None
    assert "No difference in AUC: the seed baseline was not tested." in _test_part_lines(metrics, 2)


def test_test_part_lines_of_an_older_file_fall_back_on_the_default_class_names_and_no_date():
    metrics = _metrics()
    del metrics["task"], metrics["created"]
    lines = _test_part_lines(metrics, 2)
    assert "7 scans (4 negative, 3 positive)" in lines and "(date not recorded)" in lines


def test_test_part_lines_say_to_export_again_when_the_study_has_grown():
    lines = _test_part_lines(_metrics(n_trials=2), n_trials=5)
    assert "Exported when the study had 2 trials; it has 5 now" in lines and "export again" in lines


def test_validation_section_of_a_baseline_export_says_there_is_no_difference(tmp_path):
    section = validation_section(_study(n_trials=2), _folder(tmp_path, _metrics(baseline_is_model=True)), "studies")
    assert "is the seed baseline itself" in section and 'id="fig-validation"' in section
    assert "+0.050" not in section and "-0.050" in section  # optimism 0.65 - 0.70


def test_validation_section_of_a_file_lacking_a_field_is_a_note_naming_it_and_the_command(tmp_path):
    metrics = _metrics()
    del metrics["test"]["baseline_is_model"]
    folder = _folder(tmp_path, metrics)
    section = html.unescape(validation_section(_study(), folder, "/tmp/s"))
    assert section.startswith('<p class="note">') and "fig-validation" not in section
    assert f"{folder / 'metrics.json'} lacks what this section needs (KeyError: 'baseline_is_model')" in section
    assert section.endswith("export again: python -m search.export --study lungct --studies-dir /tmp/s</p>")


def test_validation_section_table_shows_each_models_scores_and_optimism(tmp_path):
    section = validation_section(_study(n_trials=2), _folder(tmp_path, _metrics()), "studies")
    table = section.split('id="validation-table"')[1].split("</table>")[0]
    assert "<td>0.810 +- 0.040</td><td>0.770</td><td><b>0.600</b> (0.300 to 0.850)</td><td>+0.170</td>" in table
    assert "<td>0.620 +- 0.050</td><td>0.650</td><td><b>0.700</b> (0.400 to 0.900)</td><td>-0.050</td>" in table


def _severity_study(decision: dict | None = None) -> optuna.Study:
    study = _study(decision)
    study.set_user_attr(schema.STUDY_SETTINGS, {"task": "severity"})
    return study


def test_confirmation_section_of_a_severity_study_names_and_defines_its_auc():
    section = html.unescape(confirmation_section(_severity_study(_decision())))
    assert "<th>CV grade>=k AUC (search)</th>" in section and "<th>fold grade>=k AUCs (fresh folds)</th>" in section
    assert "Every AUC here, the paired difference too, is the mean AUC of grade >= k (k = 1..3)" in section
    assert "<th>CV AUC (search)</th>" not in section


def test_confirmation_figure_of_a_severity_study_names_its_axis_and_search_scores():
    fig = confirmation_figure(Decision.from_dict(_decision()), score_name("severity"))
    assert fig.layout.yaxis.title.text == "mean grade>=k AUC"
    assert fig.data[0].name == "CV grade>=k AUC in the search, +- SE"
    binary = confirmation_figure(Decision.from_dict(_decision()))
    assert binary.layout.yaxis.title.text == "ROC AUC" and binary.data[0].name == "CV AUC in the search, +- SE"


def test_validation_figure_of_a_severity_study_names_each_stage_and_axis():
    fig = validation_figure(export_scores(_metrics()), score_name("severity"))
    assert fig.layout.title.text == "mean grade>=k AUC from search to locked test"
    assert list(fig.layout.xaxis.ticktext) == ["search<br>CV grade>=k AUC +- SE", "confirmation<br>fresh folds",
                                               "locked test part<br>grade>=k AUC, 95% CI"]
    assert list(validation_figure(export_scores(_metrics())).layout.xaxis.ticktext) == list(STAGES)


def test_test_part_lines_of_an_ordinal_export_count_the_grades_it_gives_and_name_the_auc():
    metrics = _metrics()
    metrics["task"]["classes"] = ["CT-0", "CT-1", "CT-2", "CT-3 or CT-4"]
    del metrics["test"]["n_negative"], metrics["test"]["n_positive"]
    lines = html.unescape(_test_part_lines(metrics, 2, score_name("severity")))
    assert "Locked test part: 7 scans, scored once" in lines
    assert "Difference in test grade>=k AUC, model minus seed baseline" in lines
    metrics["test"]["n_per_grade"] = [2, 2, 2, 1]
    lines = html.unescape(_test_part_lines(metrics, 2, score_name("severity")))
    assert "Locked test part: 7 scans (2 CT-0, 2 CT-1, 2 CT-2, 1 CT-3 or CT-4), scored once" in lines


def test_test_part_lines_of_an_ordinal_export_name_the_grades_as_its_test_part_records_them():
    metrics = _metrics()
    metrics["task"]["classes"] = ["CT-0", "CT-1", "CT-2", "CT-3 or CT-4"]
    metrics["test"] |= {"grades": ["zero", "mild", "moderate", "severe"], "n_per_grade": [3, 2, 1, 1]}
    lines = html.unescape(_test_part_lines(metrics, 2, score_name("severity")))
    assert "Locked test part: 7 scans (3 zero, 2 mild, 1 moderate, 1 severe), scored once" in lines
