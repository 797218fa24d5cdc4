"""search.pages.html: the offline page toolkit (escaping helpers, tables, panel-fitted figures, the page skeleton)."""

import math

import plotly.graph_objects as go
import pytest

from search.pages.html import MIN_MARGIN, STYLE, figure, fit_to_panel, fmt, note, offline_plotlyjs, page, table


def test_note_escapes_its_text():
    assert note("a < b & c") == '<p class="note">a &lt; b &amp; c</p>'


@pytest.mark.parametrize("value, spec, expected", [(0.81234, ".3f", "0.812"), (3, "d", "3"),
                                                   (1234567, ",", "1,234,567"), (0.0, ".2f", "0.00")])
def test_fmt_formats_a_number_by_its_spec(value, spec, expected):
    assert fmt(value, spec) == expected


@pytest.mark.parametrize("value", [None, math.nan, math.inf, -math.inf])
def test_fmt_shows_a_dash_where_there_is_no_number(value):
    assert fmt(value) == "-"


def test_table_escapes_headers_but_not_cells():
    out = table(["a<b", "c"], [["<b>x</b>", "1"], ["y", "2"]], table_id="t1")
    assert out.startswith('<table id="t1"><thead><tr><th>a&lt;b</th><th>c</th></tr></thead>')
    assert "<tr><td><b>x</b></td><td>1</td></tr><tr><td>y</td><td>2</td></tr>" in out
    assert out.endswith("</tbody></table>")


def test_table_without_an_id_or_rows_has_no_id_and_an_empty_body():
    assert table(["h"], []) == "<table><thead><tr><th>h</th></tr></thead><tbody></tbody></table>"


def test_fit_to_panel_frees_the_width_and_sets_automargins():
    fig = go.Figure(go.Scatter(x=[1, 2], y=[3, 4]), layout={"width": 300})
    fitted = fit_to_panel(fig)
    assert fitted is fig
    assert fig.layout.width is None and fig.layout.autosize is True
    assert fig.layout.xaxis.automargin is True and fig.layout.yaxis.automargin is True
    assert fig.layout.margin.l == MIN_MARGIN["l"] and fig.layout.margin.b == MIN_MARGIN["b"]


def test_figure_is_a_fragment_with_its_div_id_and_height_and_no_plotlyjs():
    fragment = figure(go.Figure(go.Bar(x=["a"], y=[1])), "pareto-params", height=321)
    assert 'id="pareto-params"' in fragment and '"height":321' in fragment
    assert "<html" not in fragment and "cdn.plot.ly" not in fragment
    assert len(fragment) < 100_000  # plotly.js itself (megabytes) is inlined once by page, not per figure


def test_offline_plotlyjs_names_no_cdn_address():
    js = offline_plotlyjs()
    assert len(js) > 1_000_000 and "https://cdn.plot.ly" not in js


def test_page_has_the_escaped_title_the_style_the_script_and_the_body_in_order():
    out = page("Study <a> & b", ["<h1>one</h1>", "<p>two</p>"])
    assert out.startswith("<!DOCTYPE html>\n") and out.endswith("</body></html>\n")
    assert "<title>Study &lt;a&gt; &amp; b</title>" in out
    assert f"<style>{STYLE}</style>" in out
    assert out.index("</script>") < out.index("</head>") < out.index("<h1>one</h1>") < out.index("<p>two</p>")
    assert out.count('<script type="text/javascript">') == 1 and "https://cdn.plot.ly" not in out
