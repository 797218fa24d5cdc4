"""The toolkit of the self-contained HTML pages (``search.report``'s and the ablation's): one look, offline.

It owns the style sheet, the table and note helpers, plotly figures sized to their panel, plotly.js
inlined once (with its one CDN address blanked, so the file opens offline and can be mailed as it is),
and the page skeleton. Pages are written with ``lungct.files.atomic_write_text``.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

PLOT_CONFIG = {"displaylogo": False, "responsive": True}
MIN_MARGIN = {"l": 60, "r": 30, "t": 60, "b": 50}  # px; automargin widens them around long labels

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 1400px;
       padding: 0 1rem; color: #1f2933; }
h1 { margin-bottom: 0.2rem; } h2 { border-bottom: 1px solid #d9e2ec; padding-bottom: 0.2rem; margin-top: 2.5rem; }
.sub { color: #52606d; } .note { color: #52606d; font-style: italic; }
nav a { margin-right: 1rem; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #d9e2ec; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f0f4f8; }
.row { display: flex; flex-wrap: wrap; gap: 1rem; } .col { flex: 1 1 560px; min-width: 0; }
.wide { overflow-x: auto; }
pre { background: #f0f4f8; padding: 0.6rem; overflow-x: auto; }
"""


def note(text: str) -> str:
    """A paragraph of secondary text, escaped."""
    return f'<p class="note">{html.escape(text)}</p>'


def fmt(value, spec: str = ".3f") -> str:
    """A number as table text, ``-`` where there is none (None, NaN or infinite)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, spec)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], table_id: str = "") -> str:
    """A table: ``headers`` are text (escaped here), the cells of ``rows`` are HTML (escape text before)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    attr = f' id="{table_id}"' if table_id else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def fit_to_panel(fig: go.Figure) -> go.Figure:
    """Let a figure take its panel's width and widen its margins around long tick labels.

    A fixed margin cuts labels such as ``convs_per_level`` or ``residual_inception`` at the panel's
    edge; with automargin on every axis plotly widens the margins to fit them, whatever width the panel
    (half or all of a 1400-pixel page, less in a narrower window) gives the figure.
    """
    fig.update_layout(template="plotly_white", autosize=True, width=None, margin=MIN_MARGIN)
    fig.update_xaxes(automargin=True)
    fig.update_yaxes(automargin=True)
    return fig


def figure(fig: go.Figure, div_id: str, height: int = 460) -> str:
    """``fig`` as an HTML fragment fitted to its panel, drawn by the plotly.js that :func:`page` inlines."""
    fit_to_panel(fig).update_layout(height=height)
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOT_CONFIG)


def offline_plotlyjs() -> str:
    """plotly.js to inline in the page, with its one CDN address (the map-tile default) blanked.

    The bundle names ``https://cdn.plot.ly/un/`` as the default topojsonURL, fetched only by geographic
    maps, which these pages never draw; blanking it makes "no CDN anywhere in the file" checkable by grep.
    """
    return get_plotlyjs().replace('"https://cdn.plot.ly/un/"', '""')


def page(title: str, body: Sequence[str]) -> str:
    """A whole page: ``title`` (text), the style sheet and plotly.js in the head, the ``body`` fragments in order."""
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style>",
        f'<script type="text/javascript">{offline_plotlyjs()}</script>',
        "</head><body>",
        *body,
        "</body></html>",
    ]) + "\n"
