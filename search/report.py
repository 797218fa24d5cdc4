"""``python -m search.report``: one self-contained HTML page about a finished (or running) search.

Writes one HTML page about a study: a summary of the study, its data, task and split; the
confirmation stage's table and a figure of each candidate's search score against its confirmed fold
AUCs; the exported model's and the seed baseline's AUC from search to confirmation to the locked test
part, side by side, so the optimism of validation shows at a glance (read from the metrics.json of the
model folder, ``--model``); the top trials with their architecture in words; the optimisation history;
the learning curves (pruned trials visible); the parameter importances by PED-ANOVA and fANOVA side by
side; the Pareto front of validation AUC against parameters and against GFLOPs, computed from the
trials (so a pruned single-objective study gets one too), plus Optuna's own Pareto plot for a
multi-objective study; and parallel coordinates. plotly.js is embedded once, so the file opens offline
and can be mailed or handed in as it is. Every figure takes its panel's width and grows its margins
around its labels, so nothing is cut in a 1400-pixel-wide window. Every AUC is named for the study's
task: a severity study's score is the mean AUC of "grade >= k" over its cuts (``search.study.notes.ScoreName``),
and its labels are listed by grade.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import optuna

from lungct.errors import UsageError
from lungct.files import atomic_write_text
from search.cli import add_studies_dir_flag, add_study_flags, command_parser, exit_code, positive
from search.pages.plots import BAR_LABEL_HEADROOM as BAR_LABEL_HEADROOM  # re-exported: tests import it from here
from search.pages.report import MODEL_DIR, TOP_N, render_report
from search.pages.validation import validation_section as validation_section  # re-exported: tests import it here
from search.study.faults import StorageError, storage_fault
from search.study.storage import default_storage, load_existing_study


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m search.report``."""
    p = command_parser("search.report", __doc__, epilog="Exit code: 0 written, 2 bad input (flags, study, --out), "
                       "130 interrupted (nothing written).")
    add_study_flags(p)
    add_studies_dir_flag(p, "where studies live and reports go")
    p.add_argument("--out", metavar="FILE", help="HTML file to write (default: studies/<study>/report.html)")
    p.add_argument("--top", type=int, default=TOP_N, metavar="N",
                   help=f"trials in the top-trials table (default: {TOP_N})")
    p.add_argument("--model", metavar="DIR", help="model folder written by python -m search.export whose "
                   f"metrics.json gives the locked-test figures (default: <studies-dir>/<study>/{MODEL_DIR} when "
                   "it exists; otherwise the page says how to export one)")
    return p


def write_page(study: optuna.Study, storage: str, studies_dir: str, top: int, model: Path | None, out: Path) -> int:
    """Render the page and write it atomically; returns its size in bytes.

    Raises:
        UsageError: ``out`` cannot be written.
    """
    text = render_report(study, storage, studies_dir, top, model)
    try:
        atomic_write_text(out, text)
    except OSError as e:
        fault = storage_fault(e, out)
        if fault is not None:  # a full disk, a read-only folder: the line says what to do
            raise StorageError(fault.kind, out, fault.reason) from None
        raise UsageError(f"--out: cannot write {out}: {e.strerror or e}") from None
    return len(text.encode())


def main(argv: list[str] | None = None) -> int:
    """Write the report. Returns the exit code: 0 written, 2 bad input, 130 interrupted."""
    args = build_parser().parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    def body() -> None:
        positive("--top", args.top)
        if args.model is not None and not Path(args.model).is_dir():
            raise UsageError(f"--model: {args.model} is not a folder; pass the folder python -m search.export wrote")
        storage = args.storage or default_storage(args.study, args.studies_dir)
        study = load_existing_study(args.study, storage)
        out = Path(args.out) if args.out else Path(args.studies_dir) / args.study / "report.html"
        size = write_page(study, storage, args.studies_dir, args.top, args.model and Path(args.model), out)
        print(f"wrote {out} ({size / 1e6:.1f} MB, works offline); open it in a browser:\n  {out.resolve().as_uri()}")

    return exit_code(body, interrupted="interrupted: nothing was written")


if __name__ == "__main__":
    raise SystemExit(main())
