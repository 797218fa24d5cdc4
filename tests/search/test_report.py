import re

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial
from plotly.offline import get_plotlyjs

from search import run
from search.report import main, render_report
from search.trials import TrialPoint, non_dominated, trial_points
from space import baseline, same_padding

FIGURES = ("fig-history", "fig-intermediate", "fig-importance-fanova", "fig-pareto-params", "fig-pareto-gflops",
           "fig-parallel")


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
