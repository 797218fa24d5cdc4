import contextlib
import html
import io
import json
import os
import re

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from plotly.offline import get_plotlyjs

from search import run
from search.report import BAR_LABEL_HEADROOM, main, render_report, validation_section
from search.stats.intervals import Interval
from search.study.trials import TrialPoint, non_dominated, trial_points
from space import baseline, same_padding

FIGURES = ("fig-history", "fig-intermediate", "fig-importance-fanova", "fig-pareto-params", "fig-pareto-gflops",
           "fig-parallel", "fig-confirmation")


@pytest.fixture(scope="module")
def study_dir(tiny_data, tmp_path_factory):
    """A 3-trial study of 1 epoch per fold at 16x16x32 (the baseline and two sampled trials), confirmed."""
    root = tmp_path_factory.mktemp("report-study")
    assert run.main(["--size", "16", "16", "32", "--epochs", "1", "--trials", "3", "--workers", "1",
                     "--studies-dir", str(root), "--data", str(tiny_data)]) == 0
    return root


@pytest.fixture(scope="module")
def page(study_dir):
    assert main(["--studies-dir", str(study_dir)]) == 0
    return (study_dir / "lungct" / "report.html").read_text()


@pytest.fixture(scope="module")
def study(study_dir):
    return optuna.load_study(study_name="lungct", storage=f"sqlite:///{study_dir}/lungct.db")


def _auc(estimate, low, high, method="stratified bootstrap, percentile interval, 2000 resamples, seed 0") -> dict:
    return {"estimate": estimate, "low": low, "high": high, "confidence": 0.95, "method": method}


def _metrics(name="lungct", baseline_is_model=False, n_trials=3) -> dict:
    """The fields of search.export's metrics.json that the report reads, in their real layout and nesting."""
    model = {"trial": 2, "architecture": "2 levels 32-32", "params": 58117, "gflops": 0.0686, "members": 1,
             "search_cv_auc": 0.798, "search_cv_se": 0.0978}
    baseline = {"trial": 0, "architecture": "4 levels 64-64-128-256", "params": 1351873, "gflops": 0.6797,
                "members": 1, "search_cv_auc": 0.631, "search_cv_se": 0.1188, "note": None}
    tested = {"auc": _auc(0.5, 0.1, 0.9), "threshold": 0.5, "confusion_matrix": {"tn": 3, "fp": 0, "fn": 1, "tp": 1}}
    tested_base = {"auc": _auc(0.833, 0.333, 1.0), "threshold": 0.5}
    confirmed, base_confirmed = (0.696, 0.696) if baseline_is_model else (0.846, 0.696)
    return {
        "format_version": 1, "created": "2025-01-01T00:00:00+00:00",
        "study": {"name": name, "storage": "sqlite:///lungct.db", "objectives": ["auc"], "n_trials": n_trials},
        "task": {"name": "course", "classes": ["CT-0", "CT-2 or CT-3"], "threshold": 0.5},
        "test": {"n": 5, "n_negative": 3, "n_positive": 2, "model": tested_base if baseline_is_model else tested,
                 "baseline": tested_base, "baseline_is_model": baseline_is_model,
                 "auc_difference": _auc(0.0, 0.0, 0.0) if baseline_is_model else _auc(-0.333, -0.9, 0.2, "paired")},
        "selection": {"how": "trial 2, as given by --trial", "is_baseline": baseline_is_model,
                      "confirmed_score": confirmed, "baseline_confirmed_score": base_confirmed,
                      "test_auc": 0.833 if baseline_is_model else 0.5, "optimism": None},
        "model": baseline if baseline_is_model else model,
        "baseline": baseline,
    }


def _model_dir(tmp_path, metrics) -> str:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "metrics.json").write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
    return folder


def _plotted(html: str, div_id: str) -> tuple[list[dict], dict]:
    """The traces and layout that the page hands to plotly.js for one figure."""
    start = re.search(rf'Plotly\.newPlot\(\s*"{div_id}",\s*', html).end()
    decoder = json.JSONDecoder()
    data, end = decoder.raw_decode(html, start)
    layout, _ = decoder.raw_decode(html, html.index("{", end))
    return data, layout


def _spec(filters: int) -> dict:
    spec = same_padding(baseline()).to_dict()
    spec["levels"] = [dict(level, filters=filters) for level in spec["levels"]]
    return spec


def _trial(auc, params, extra_attrs=None, state=TrialState.COMPLETE, values=None, intermediate=None, lr=1e-3):
    """A finished trial as search.run records it, without training anything."""
    attrs = {"params": params, "gflops": params / 1e6, "spec": _spec(8), **(extra_attrs or {})}
    if values is None and state == TrialState.COMPLETE:
        values = [auc]
    return create_trial(state=state, values=values,
                        params={"lr": lr, "block": "plain"}, user_attrs=attrs, intermediate_values=intermediate or {},
                        distributions={"lr": FloatDistribution(1e-5, 1e-1, log=True),
                                       "block": CategoricalDistribution(["plain", "residual"])})


def test_report_writes_every_figure_into_the_default_path(page):
    for div in FIGURES:
        assert f'id="{div}"' in page, div
    assert 'id="pareto"' in page and 'id="top-trials"' in page


def test_report_shows_pedanova_beside_fanova_or_says_why_not(page):
    pedanova = page[page.index("<h3>PED-ANOVA</h3>"):page.index("<h3>fANOVA</h3>")]
    assert 'id="fig-importance-pedanova"' in pedanova or "PED-ANOVA: too few complete trials" in pedanova


def test_report_embeds_plotlyjs_once_and_loads_nothing_from_the_network(page):
    assert page.count(get_plotlyjs()[:200]) == 1  # the bundle's licence header and first lines
    assert not re.search(r"<script[^>]*\ssrc=", page)
    assert "cdn.plot.ly" not in page and "<link" not in page


def test_report_top_trials_table_describes_each_architecture(page):
    table = page[page.index('id="top-trials"'):page.index("</table>", page.index('id="top-trials"'))]
    assert "4 levels 64-64-128-256" in table and "seed baseline" in table
    assert table.count("<tr>") >= 2  # header and at least the baseline


def test_report_summary_states_data_task_and_split(page, tiny_data):
    summary = page[page.index('id="summary"'):page.index("</table>", page.index('id="summary"'))]
    assert str(tiny_data) in summary and "course" in summary and "16x16x32" in summary
    assert "test" in summary and "held out" in summary


def test_report_shows_the_confirmation_and_its_recommendation(page):
    section = page[page.index('id="confirmation"'):]
    assert "<b>Recommended:" in section and "Bonferroni" in section
    table = section[:section.index("</table>")]
    assert "baseline" in table and table.count("<tr>") >= 3  # header, the baseline, at least one candidate


def test_report_confirmation_figure_plots_each_candidates_search_score_and_fold_aucs(page, study):
    candidates = study.user_attrs["confirmation"]["candidates"]
    data, layout = _plotted(page, "fig-confirmation")
    search, folds, mean = data
    assert search["y"] == pytest.approx([r["search_score"] for r in candidates])
    assert search["error_y"]["array"] == pytest.approx([r["search_se"] for r in candidates])
    assert sorted(folds["y"]) == pytest.approx(sorted(v for r in candidates for v in r["fold_aucs"]))
    assert mean["y"] == pytest.approx([r["confirmed"] for r in candidates])
    assert "seed baseline" in layout["xaxis"]["ticktext"][0]
    assert sum("recommended" in name for name in layout["xaxis"]["ticktext"]) == 1


def test_report_figures_grow_their_margins_around_their_labels(page):
    for div in FIGURES:
        _, layout = _plotted(page, div)
        assert layout["xaxis"]["automargin"] and layout["yaxis"]["automargin"], div
        assert "width" not in layout, div  # takes its panel's width


def test_report_importance_bar_labels_have_room_past_the_longest_bar(page):
    (bars,), layout = _plotted(page, "fig-importance-fanova")
    assert bars["cliponaxis"] is False and bars["textposition"] == "outside"
    assert layout["xaxis"]["range"] == pytest.approx([0, max(bars["x"]) * (1 + BAR_LABEL_HEADROOM)])


def test_report_without_an_export_gives_the_export_command(page, study_dir):
    section = page[page.index('id="validation"'):page.index('id="top"')]
    assert f"No exported model in {study_dir / 'lungct' / 'model'}" in section
    assert f"python -m search.export --study lungct --studies-dir {study_dir}" in section
    assert 'id="fig-validation"' not in section


def test_report_validation_figure_plots_the_metrics_json_numbers(study, study_dir, tmp_path):
    metrics = _metrics()
    text = render_report(study, "sqlite:///memory", str(study_dir), model_dir=_model_dir(tmp_path, metrics))
    (model, base), _ = _plotted(text, "fig-validation")
    for trace, key, confirmed in ((model, "model", "confirmed_score"), (base, "baseline", "baseline_confirmed_score")):
        auc = metrics["test"][key]["auc"]
        assert trace["y"] == pytest.approx([metrics[key]["search_cv_auc"], metrics["selection"][confirmed],
                                            auc["estimate"]])
        assert trace["error_y"]["array"][0] == trace["error_y"]["arrayminus"][0] == metrics[key]["search_cv_se"]
        assert trace["error_y"]["array"][2] == pytest.approx(auc["high"] - auc["estimate"])
        assert trace["error_y"]["arrayminus"][2] == pytest.approx(auc["estimate"] - auc["low"])
    assert model["name"] == "exported model" and base["name"] == "seed baseline"


def test_report_validation_states_the_test_part_and_the_auc_difference(study, study_dir, tmp_path):
    metrics = _metrics()
    section = validation_section(study, _model_dir(tmp_path, metrics), str(study_dir))
    assert "Locked test part: 5 scans (3 CT-0, 2 CT-2 or CT-3)" in section
    assert Interval(**metrics["test"]["auc_difference"]).text() in section and "cannot tell the two apart" in section
    assert "+0.346" in section  # the optimism: confirmed 0.846 - test 0.500


def test_report_validation_of_a_baseline_export_draws_one_model(study, study_dir, tmp_path):
    section = validation_section(study, _model_dir(tmp_path, _metrics(baseline_is_model=True)), str(study_dir))
    (trace,), _ = _plotted(section, "fig-validation")
    assert trace["name"] == "exported model (the seed baseline)" and trace["y"] == pytest.approx([0.631, 0.696, 0.833])
    assert "is the seed baseline itself" in section


def test_report_validation_says_when_the_study_has_grown_since_the_export(study, study_dir, tmp_path):
    section = validation_section(study, _model_dir(tmp_path, _metrics(n_trials=1)), str(study_dir))
    assert f"had 1 trials; it has {len(study.trials)} now" in section


def test_report_model_folder_of_another_study_is_a_note_without_figure(study, study_dir, tmp_path):
    section = validation_section(study, _model_dir(tmp_path, _metrics(name="other")), str(study_dir))
    assert "export of study 'other', not of 'lungct'" in html.unescape(section) and "fig-validation" not in section


@pytest.mark.parametrize("content", ["{not json", json.dumps({"study": {"name": "lungct"}})],
                         ids=["not-json", "lacks-test"])
def test_report_broken_metrics_json_is_a_note(study, study_dir, tmp_path, content):
    section = validation_section(study, _model_dir(tmp_path, content), str(study_dir))
    assert 'class="note"' in section and "python -m search.export" in section and "fig-validation" not in section


def test_report_help_states_the_model_flag_and_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert re.search(r"--model DIR .*default: <studies-dir>/<study>/model", " ".join(capsys.readouterr().out.split()))


def test_report_model_flag_naming_no_folder_is_a_one_line_error(study_dir, tmp_path, capsys):
    assert main(["--studies-dir", str(study_dir), "--model", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --model:") and len(err.strip().splitlines()) == 1


def test_report_never_shows_the_storage_password(study_dir, tmp_path, capsys):
    out = tmp_path / "report.html"
    storage = f"sqlite:///{study_dir}/lungct.db?sslmode=x&password=s3cret"
    assert main(["--studies-dir", str(study_dir), "--storage", storage, "--out", str(out)]) == 0
    page = out.read_text()
    assert "s3cret" not in page + capsys.readouterr().out and "password=***" in page


def test_report_missing_study_is_a_one_line_error(tmp_path, capsys):
    assert main(["--studies-dir", str(tmp_path), "--study", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: study: no study 'nope'") and len(err.strip().splitlines()) == 1


def test_report_study_without_complete_trials_still_renders_with_notes():
    study = optuna.create_study(direction="maximize")
    study.add_trial(_trial(None, 5000, state=TrialState.PRUNED, intermediate={1: 0.4}))
    text = render_report(study, "sqlite:///memory")
    assert "No complete trial yet" in text and 'id="fig-intermediate"' in text
    assert "needs at least 2 complete trials" in text


def test_report_multi_objective_study_adds_optunas_pareto_plot():
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.set_user_attr("objectives", ["auc", "params"])
    for i, (auc, params) in enumerate([(0.6, 1000), (0.7, 5000), (0.65, 8000), (0.8, 20000)]):
        study.add_trial(_trial(auc, params, values=[auc, params], lr=10 ** (-4 + i / 2),
                               extra_attrs={"val_auc": [auc - 0.1, auc]}))
    text = render_report(study, "sqlite:///memory")
    assert 'id="fig-pareto-optuna"' in text and 'id="fig-pareto-params"' in text
    assert 'id="fig-intermediate"' in text  # from the val_auc attrs: multi-objective trials report no steps


def test_report_pareto_front_keeps_only_non_dominated_complete_trials():
    points = [TrialPoint(0, 0.70, 1000, 1.0, True, True, None),   # cheapest
              TrialPoint(1, 0.80, 5000, 2.0, True, False, None),  # better and dearer: on the front
              TrialPoint(2, 0.75, 6000, 3.0, True, False, None),  # worse than 1 and dearer: dominated
              TrialPoint(3, 0.95, 500, 0.5, False, False, None)]  # pruned: never on the front
    assert non_dominated(points, "params") == {0, 1}


def test_report_pruned_trials_sit_at_their_last_reported_auc():
    study = optuna.create_study(direction="maximize")
    study.add_trial(_trial(0.7, 1000))
    study.add_trial(_trial(None, 2000, state=TrialState.PRUNED, intermediate={1: 0.6, 2: 0.55}))
    pruned = next(p for p in trial_points(study) if not p.complete)
    assert pruned.auc == 0.55 and pruned.number == 1


@pytest.mark.parametrize("kind", ["link_to_dev_zero", "fifo", "nested_100000_deep", "over_4_mib"])
def test_report_hostile_metrics_json_is_a_note_naming_it_without_reading_it(study, study_dir, tmp_path, kind):
    folder = _model_dir(tmp_path, "{}")
    path = folder / "metrics.json"
    path.unlink()
    if kind == "link_to_dev_zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_text("[" * 100_000 if kind == "nested_100000_deep" else " " * (5 << 20))
    section = html.unescape(validation_section(study, folder, str(study_dir)))
    assert f"Cannot read {path}: " in section and "fig-validation" not in section


@pytest.fixture(scope="module")
def severity_study_dir(severity_data, tmp_path_factory):
    """A confirmed 3-trial study of the ordinal severity task (the baseline and two sampled trials)."""
    root = tmp_path_factory.mktemp("severity-report-study")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert run.main(["--task", "severity", "--size", "16", "16", "32", "--epochs", "1", "--trials", "3",
                         "--confirm-top", "1", "--confirm-epochs", "1", "--workers", "1", "--studies-dir", str(root),
                         "--data", str(severity_data)]) == 0
    (root / "run.log").write_text(out.getvalue())
    return root


@pytest.fixture(scope="module")
def severity_page(severity_study_dir):
    assert main(["--studies-dir", str(severity_study_dir)]) == 0
    return (severity_study_dir / "lungct" / "report.html").read_text()


def test_report_of_a_severity_study_draws_every_figure_and_table(severity_page):
    for div in FIGURES:
        assert f'id="{div}"' in severity_page, div
    assert 'id="top-trials"' in severity_page and 'id="confirmation-table"' in severity_page
    assert "fANOVA: not computed" not in severity_page  # importance did not fail on the ordinal score


def test_report_of_a_severity_study_names_the_mean_grade_auc_on_its_axes(severity_page):
    assert "The task has 4 ordered grades, so its AUC is the mean AUC of grade &gt;= k (k = 1..3)" in severity_page
    for div in ("fig-history", "fig-pareto-params", "fig-pareto-gflops"):
        _, layout = _plotted(severity_page, div)
        assert layout["yaxis"]["title"]["text"] == "CV grade>=k AUC", div
    _, layout = _plotted(severity_page, "fig-confirmation")
    assert layout["yaxis"]["title"]["text"] == "mean grade>=k AUC"
    _, layout = _plotted(severity_page, "fig-parallel")
    assert "CV grade>=k AUC" in json.dumps(_plotted(severity_page, "fig-parallel")[0])
    assert "CV AUC" not in html.unescape(re.sub(r"<script.*?</script>", "", severity_page, flags=re.S))


def test_report_of_a_severity_study_ranks_trials_by_the_named_score(severity_page, severity_study_dir):
    section = severity_page[severity_page.index('id="top-trials"'):]
    table = section[:section.index("</table>")]
    assert "<th>CV grade&gt;=k AUC</th>" in table and "<th>fold grade&gt;=k AUCs (final epoch)</th>" in table
    study = optuna.load_study(study_name="lungct", storage=f"sqlite:///{severity_study_dir}/lungct.db")
    best = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.values[0])
    assert f"<b>{best.values[0]:.3f}</b>" in table


def test_report_of_a_severity_study_lists_its_labels_by_grade(severity_page):
    summary = html.unescape(severity_page[severity_page.index('id="summary"'):])
    summary = summary[:summary.index("</table>")]
    assert "severity" in summary and "scored at the last epoch by the mean AUC of grade >= k (k = 1..3)" in summary
    for grade in ("grade 0 (CT-0)", "grade 1 (CT-1)", "grade 2 (CT-2)", "grade 3 (CT-3/CT-4)"):
        assert grade in summary, grade
    assert "label 0" not in summary


def test_run_of_a_severity_study_names_its_score_for_the_dashboard_and_on_the_console(severity_study_dir):
    study = optuna.load_study(study_name="lungct", storage=f"sqlite:///{severity_study_dir}/lungct.db")
    # Named "CV AUC" when made (before its settings were stored), renamed by the first trial's note.
    assert study.metric_names == ["CV mean AUC of grade >= k (k = 1..3) (search score)"]
    log = (severity_study_dir / "run.log").read_text()
    assert "[1/3] trial 0 [baseline]: CV grade>=k AUC " in log
    assert "rank trial CV grade>=k AUC  +- SE" in " ".join(log.split("\n"))
    assert "CV grade>=k AUC: mean final-epoch validation grade>=k AUC (mean AUC of grade >= k (k = 1..3))" in log
    assert "trial 0 [baseline]: CV AUC" not in log
