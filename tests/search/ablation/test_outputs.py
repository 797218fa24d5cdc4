"""search.ablation.outputs: the CSV text, the console table and verdict lines, the methods, the page and the files."""

import csv
import io
import math
import re
from types import SimpleNamespace

import pytest

from search.ablation.outputs import (
    format_table,
    methods_text,
    page_html,
    plot_html,
    print_summary,
    to_csv,
    verdict_line,
    write_outputs,
)
from search.ablation.runs import ORDINAL_RUN_COLUMNS, RUN_COLUMNS
from search.ablation.summary import ALPHA, ORDINAL_SUMMARY_COLUMNS, SUMMARY_COLUMNS
from search.ablation.variants import BASELINE, make_variants
from search.study.notes import score_name

SIZE = (16, 24, 20)
SETTINGS = SimpleNamespace(folds=3, repeats=2, split_seed=5, seed=11, epochs=4, size=SIZE, task="course")


def _row(variant, **changes):
    row = dict.fromkeys(SUMMARY_COLUMNS, math.nan)
    row.update(variant=variant, n_runs=6, n_diverged=0, auc_mean=0.8, auc_ci_low=0.7, auc_ci_high=0.9,
               acc_mean=0.75, acc_ci_low=0.6, acc_ci_high=0.85, params=1_234_567, gflops=2.5, train_seconds_mean=12.4,
               padding="valid", architecture="4 levels", training="adam lr 0.0001, weight decay 0, batch 2")
    if variant == BASELINE:
        row.update(auc_diff_vs_baseline=0.0, auc_diff_ci_low=0.0, auc_diff_ci_high=0.0, n_pairs=6,
                   test="reference", verdict="reference")
    else:
        row.update(auc_diff_vs_baseline=0.05, auc_diff_ci_low=0.01, auc_diff_ci_high=0.09, n_pairs=6, p_value=0.031,
                   test="wilcoxon", p_value_nadeau_bengio=0.2, verdict="better")
    row.update(changes)
    return row


def _run(variant, repeat, fold, auc):
    return SimpleNamespace(variant=variant, repeat=repeat, fold=fold, auc=auc, scored=math.isfinite(auc))


def test_to_csv_writes_the_columns_in_order_and_nan_as_an_empty_cell():
    text = to_csv([{"a": 1, "b": math.nan, "c": "x,y"}, {"a": 0.123456789, "b": 2.0, "c": ""}], ["c", "a", "b"])
    assert list(csv.reader(io.StringIO(text))) == [["c", "a", "b"], ["x,y", "1", ""], ["", "0.123457", "2"]]
    assert text.endswith("\n") and "\r" not in text


def test_format_table_aligns_a_header_and_one_line_per_row():
    lines = format_table([_row(BASELINE), _row("sigmoid")]).splitlines()
    assert len(lines) == 3 and lines[0].startswith("variant")
    assert lines[1].split()[:2] == [BASELINE, "6"] and "reference" in lines[1]
    assert "+0.050 [+0.010, +0.090]" in lines[2] and "0.031" in lines[2] and "better" in lines[2]
    assert "1.23M" in lines[2] and "2.50" in lines[2] and lines[2].rstrip().endswith("12")
    assert lines[0].index("val AUC") == lines[2].index("0.800 [0.700, 0.900]")  # columns line up


def test_format_table_shows_undefined_numbers_as_n_a():
    line = format_table([_row("sigmoid", auc_mean=math.nan, p_value=math.nan, train_seconds_mean=math.nan)]
                        ).splitlines()[1]
    assert line.split()[2] == "n/a" and line.rstrip().endswith("n/a")


def test_verdict_line_of_the_baseline_is_the_reference():
    assert verdict_line(_row(BASELINE)) == "baseline: the reference, val AUC 0.800 [0.700, 0.900] over 6 folds"


def test_verdict_line_marks_a_verdict_the_corrected_test_does_not_confirm_as_tentative():
    line = verdict_line(_row("sigmoid"))
    assert line == ("sigmoid: better (AUC diff +0.050 [+0.010, +0.090], wilcoxon p = 0.031; corrected resampled "
                    "t p = 0.200) - tentative: the test that allows for overlapping folds does not confirm it")


def test_verdict_line_without_tentative_when_the_corrected_test_confirms():
    line = verdict_line(_row("sigmoid", p_value_nadeau_bengio=ALPHA / 2, p_value=0.0001))
    assert line.endswith("wilcoxon p = <0.001; corrected resampled t p = 0.025)")


def test_verdict_line_carries_the_tests_note_after_its_name():
    line = verdict_line(_row("sigmoid", test="paired t (n<6): too few pairs for Wilcoxon", verdict="no detectable "
                             "difference", p_value_nadeau_bengio=math.nan))
    assert "paired t (n<6) p = 0.031; too few pairs for Wilcoxon; corrected resampled t p = n/a)" in line
    assert "tentative" not in line


def test_methods_text_states_the_folds_seeds_size_and_ratio():
    text = " ".join(methods_text(SETTINGS, n_cv=40, n_test=8, ratio=0.5))
    assert "trained 6 times: 2 repeat(s) of stratified 3-fold cross-validation over the 40 training" in text
    assert "the 8 scans of the locked test part (split seed 5) were never read" in text
    assert "seed 11 + 1000 r + f" in text and "for 4 epochs at 16x24x20 voxels" in text
    assert "(0.50 here)" in text and f"alpha = {ALPHA}" in text


def test_plot_html_draws_fold_aucs_and_paired_differences_of_scored_runs():
    runs = [_run(BASELINE, 0, 0, 0.7), _run(BASELINE, 0, 1, 0.6), _run("sigmoid", 0, 0, 0.75),
            _run("sigmoid", 0, 1, math.nan), _run("sigmoid", 1, 0, 0.9)]  # unpaired: AUCs only
    fragment = plot_html([_row(BASELINE), _row("sigmoid")], runs)
    assert 'id="fig-fold-aucs"' in fragment and 'id="fig-differences"' in fragment
    ys = re.findall(r'"y":\[([^\]]*)\]', fragment)
    assert ys[:2] == ["0.7,0.6", "0.75,0.9"]
    assert [float(y) for y in ys[2].split(",")] == pytest.approx([0.05])  # 0.75 - 0.7: the one pair


def test_page_html_is_one_page_with_escaped_names_verdicts_table_and_methods():
    variant_list = make_variants([BASELINE, "sigmoid"], SIZE)
    text = page_html([_row(BASELINE), _row("sigmoid")], [], SETTINGS, "abl<1>", "sqlite:///x.db",
                     ["Method one & two."], variant_list)
    assert "<title>Ablation: abl&lt;1&gt;</title>" in text and "abl<1>" not in text
    assert "<li>sigmoid: better (AUC diff" in text and "<p>Method one &amp; two.</p>" in text
    assert all(f"<th>{c}</th>" in text for c in SUMMARY_COLUMNS)
    assert "<b>sigmoid</b>: the seed with sigmoid" in text and "padding: baseline, sigmoid use" in text


def test_page_html_masks_the_storage_password():
    text = page_html([_row(BASELINE)], [], SETTINGS, "a", "postgresql://u:s3cret@db/optuna", [],
                     make_variants([BASELINE], SIZE))
    assert "s3cret" not in text and "postgresql://u:***@db/optuna" in text


def test_write_outputs_writes_the_three_files_with_runs_in_run_order(tmp_path):
    runs = [SimpleNamespace(to_row=lambda columns=RUN_COLUMNS, i=i: {c: (f"v{i}" if c == "variant" else i)
                                                                      for c in columns})
            for i in (2, 1)]
    paths = write_outputs(tmp_path, [_row(BASELINE)], runs, "<html></html>\n")
    assert [p.name for p in paths] == ["ablation.csv", "runs.csv", "ablation.html"]
    summary = list(csv.DictReader(io.StringIO(paths[0].read_text())))
    assert len(summary) == 1 and summary[0]["variant"] == BASELINE and summary[0]["p_value"] == ""
    assert [r["variant"] for r in csv.DictReader(io.StringIO(paths[1].read_text()))] == ["v2", "v1"]
    assert paths[2].read_text() == "<html></html>\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ablation.csv", "ablation.html", "runs.csv"]


def test_print_summary_prints_table_verdicts_but_the_baselines_files_and_masked_dashboard(capsys, tmp_path):
    print_summary([_row(BASELINE), _row("sigmoid")], [tmp_path / "ablation.csv"], "postgresql://u:pw@db/o")
    out = capsys.readouterr().out
    assert out.startswith("variant") and "sigmoid: better" in out and "baseline: the reference" not in out
    assert f"written:\n  {tmp_path / 'ablation.csv'}\n" in out
    assert out.rstrip().endswith("optuna-dashboard postgresql://u:***@db/o") and "pw@" not in out


@pytest.mark.parametrize("p, shown", [(0.0004, "<0.001"), (0.001, "0.001"), (0.5, "0.500")])
def test_verdict_line_rounds_p_values_and_floors_them_at_one_in_a_thousand(p, shown):
    assert f"wilcoxon p = {shown};" in verdict_line(_row("sigmoid", p_value=p))


SEVERITY = SimpleNamespace(**{**vars(SETTINGS), "task": "severity"})


def _graded_row(variant, **changes):
    return _row(variant, qwk_mean=0.45, qwk_ci_low=0.3, qwk_ci_high=0.6, mae_mean=0.8, **changes)


def test_format_table_of_an_ordinal_task_names_the_mean_grade_auc_and_adds_the_kappa():
    lines = format_table([_graded_row(BASELINE), _graded_row("sigmoid")], score_name("severity")).splitlines()
    head = lines[0]
    assert "val grade>=k AUC [95% CI]" in head and "grade accuracy [95% CI]" in head and "QWK [95% CI]" in head
    assert "grade>=k AUC diff vs baseline [95% CI]" in head and "val AUC" not in head
    assert head.index("QWK") == lines[2].index("0.450 [0.300, 0.600]")
    assert "QWK" not in format_table([_row(BASELINE)])


def test_verdict_lines_of_an_ordinal_task_name_the_mean_grade_auc():
    score = score_name("severity")
    assert verdict_line(_row(BASELINE), score).startswith("baseline: the reference, val grade>=k AUC 0.800")
    assert verdict_line(_row("sigmoid"), score).startswith("sigmoid: better (grade>=k AUC diff +0.050")


def test_methods_text_of_an_ordinal_task_defines_its_score_and_metrics():
    text = " ".join(methods_text(SEVERITY, n_cv=40, n_test=8, ratio=0.5))
    assert text.startswith("The task has 4 ordered grades, so its AUC is the mean AUC of grade >= k (k = 1..3)")
    assert "A fold's score is the validation mean AUC of grade >= k (k = 1..3) after the last epoch" in text
    assert "quadratic weighted kappa" in text and "paired test on the fold grade>=k AUCs" in text
    assert "ROC AUC after the last epoch" in " ".join(methods_text(SETTINGS, n_cv=40, n_test=8, ratio=0.5))


def test_write_outputs_of_an_ordinal_task_writes_its_columns(tmp_path):
    runs = [SimpleNamespace(to_row=lambda columns=RUN_COLUMNS: {c: 1 for c in columns})]
    paths = write_outputs(tmp_path, [_graded_row(BASELINE)], runs, "<html></html>\n", ordinal=True)
    assert paths[0].read_text().splitlines()[0].split(",") == list(ORDINAL_SUMMARY_COLUMNS)
    assert paths[1].read_text().splitlines()[0].split(",") == list(ORDINAL_RUN_COLUMNS)
