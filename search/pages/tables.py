"""The study report's tables: the study, its data, task and split, what happened to its trials, and the top trials."""

from __future__ import annotations

import html
from collections import Counter

from optuna.trial import FrozenTrial, TrialState

from lungct.records import get_task
from search.pages.html import fmt, note, table
from search.pages.plots import StudyView
from search.pages.validation import export_command
from search.study import schema
from search.study.artifacts import artifact_dir
from search.study.notes import ScoreName, study_task
from search.study.storage import redact
from space import describe_spec


def top_trials_table(s: StudyView, top: int) -> str:
    """The best complete trials: AUC, costs, epochs, validation rates, training settings, architecture."""
    if not s.complete:
        return note("No complete trial yet.")
    rows = []
    for rank, t in enumerate(s.complete[:top], start=1):
        a = t.user_attrs
        tags = [tag for tag, on in (("seed baseline", a.get("baseline")),
                                    ("Pareto: params", t.number in s.fronts["params"]),
                                    ("Pareto: GFLOPs", t.number in s.fronts["gflops"])) if on]
        train = a.get("train_spec") or {}
        rows.append([
            str(rank), str(t.number), f"<b>{t.values[0]:.3f}</b>", fmt(a.get(schema.SCORE_SE)),
            f"{a.get(schema.PARAMS, 0):,}", fmt(a.get(schema.GFLOPS)),
            " / ".join(fmt(v) for v in a.get(schema.FOLD_AUCS) or []) or "-",
            html.escape(f"{train.get('optimizer', '-')}, lr {fmt(train.get('lr'), '.2g')}, "
                        f"batch {train.get('batch_size', '-')}"),
            html.escape(describe_spec(a.get("spec"))), html.escape(", ".join(tags)),
        ])
    cells_table = table(["rank", "trial", s.score.cv, "+- SE", "params", "GFLOPs",
                         f"fold {s.score.short}s (final epoch)", "training", "architecture", "notes"], rows,
                        "top-trials")
    base = next((t for t in s.trials if t.user_attrs.get(schema.BASELINE)), None)
    if base is None:
        line = "The seed baseline is not in this study."
    elif base.state != TrialState.COMPLETE:
        line = f"The seed baseline (trial {base.number}) did not complete: {base.state.name.lower()}."
    else:
        rank = [t.number for t in s.complete].index(base.number) + 1
        line = (f"The seed baseline (trial {base.number}) ranks {rank} of {len(s.complete)} complete trials, "
                f"{s.score.cv} {base.values[0]:.3f}.")
    return cells_table + note(line)


def _reason_kind(trial: FrozenTrial, score: ScoreName) -> str:
    reason = trial.user_attrs.get(schema.PRUNE_REASON) or trial.user_attrs.get(schema.FAIL_REASON) or ""
    if trial.state == TrialState.PRUNED:
        if reason.startswith("too costly"):
            return "pruned before training: above the GFLOPs cap (--max-gflops)"
        if "non-finite" in reason:
            return "pruned: non-finite training loss"
        return f"pruned by the pruner (mean fold {score.short} behind other trials after the same fold)"
    if trial.state == TrialState.FAIL:
        return f"failed: {reason.split(' (')[0] or 'see optuna-dashboard'}"
    return trial.state.name.lower()


def _window(window: list | None) -> str:
    return f"{window[0]:g} to {window[1]:g} HU" if window else "-"


def _grade_names(task: str | None) -> list[str]:
    """The categories of each grade of an ordinal task, ``CT-3/CT-4`` where a grade pools two."""
    try:
        return ["/".join(grade) for grade in get_task(task or "").grades]
    except ValueError:
        return []


def _label(key: str, grades: list[str]) -> str:
    """``label 1`` of a binary task; ``grade 1 (CT-1)`` of an ordinal one."""
    if not grades:
        return f"label {key}"
    k = int(key) if str(key).isdigit() else None
    return f"grade {key} ({grades[k]})" if k is not None and k < len(grades) else f"grade {key}"


def summary_section(s: StudyView, storage_url: str, studies_dir: str) -> str:
    """Study, data, task and split as key-value tables, what happened to the trials, and the next commands."""
    settings = s.study.user_attrs.get(schema.STUDY_SETTINGS) or {}
    data = s.study.user_attrs.get(schema.STUDY_DATA_SUMMARY) or {}
    states = Counter(t.state.name.lower() for t in s.trials)
    starts = [t.datetime_start for t in s.trials if t.datetime_start]
    train_s = sum(t.user_attrs.get(schema.WALL_SECONDS, 0) for t in s.trials)
    devices = sorted({t.user_attrs[schema.DEVICE] for t in s.trials if "device" in t.user_attrs})
    size = "x".join(map(str, settings.get("size", []))) or "-"
    data_root = settings.get("data") or f"default synthetic phantom set ({settings.get('n_phantoms', '?')} phantoms)"
    loaded = data.get("loaded", {})
    grades = _grade_names(study_task(s.study)) if s.score.ordinal else []
    rows = [
        ("study", f"{s.study.study_name} in {redact(storage_url)}"),
        ("objectives", ", ".join(s.objectives) + (" (multi-objective: no pruning)" if s.multi else "")),
        ("trials", f"{len(s.trials)}: " + ", ".join(f"{n} {k}" for k, n in states.most_common())),
        ("run", (f"{min(starts):%Y-%m-%d %H:%M} to {max(starts):%Y-%m-%d %H:%M}, " if starts else "")
         + f"{train_s / 60:.1f} min of training on {', '.join(devices) or '-'}"),
        ("data", f"{data_root}" + (f" ({data['layout']} layout)" if "layout" in data else "")),
        ("task", f"{settings.get('task', '-')}: {data.get('task_description', '')}"),
        ("input", f"{size} voxels (D x H x W), HU window {_window(data.get('hu_window'))}"),
        ("score", f"{settings.get('folds', '-')}-fold cross-validation over the non-test scans, "
                  f"{settings.get('epochs', '-')} epochs per fold, scored at the last epoch"
                  + (f" by the {s.score.long}" if s.score.ordinal else "")),
        ("cost cap", f"{settings['max_gflops']:g} GFLOPs per scan (--max-gflops)" if settings.get("max_gflops")
         else "none"),
        ("seed", str(settings.get("seed", "-"))),
        ("split", f"{data.get('n_train', '-')} train / {data.get('n_val', '-')} validation / "
                  f"{data.get('n_test', '-')} test scans (seed {data.get('split_seed', '-')}); the test part is "
                  "held out: only python -m search.export reads it"),
        ("labels loaded", "; ".join(f"{part}: " + ", ".join(f"{_label(k, grades)}: {v}" for k, v in counts.items())
                                    for part, counts in loaded.items()) or "-"),
        ("excluded / skipped", f"{data.get('excluded', '-')} scans outside the task, "
                               f"{data.get('skipped', '-')} unreadable"),
        ("split file", str(data.get("split_file", "-"))),
    ]
    facts = table(["", ""], [[html.escape(k), html.escape(str(v))] for k, v in rows], "summary")
    kinds = Counter(_reason_kind(t, s.score) for t in s.trials if t.state != TrialState.COMPLETE)
    outcome = table(["what happened", "trials"], [[html.escape(k), str(n)] for k, n in kinds.most_common()]) \
        if kinds else ""
    artifacts = artifact_dir(studies_dir, s.study.study_name)
    commands = [export_command(s.study.study_name, studies_dir),
                f"optuna-dashboard {redact(storage_url)} --artifact-dir {artifacts}"]
    nxt = "<p>Next:</p><pre>" + html.escape("\n".join(commands)) + "</pre>"
    return facts + outcome + nxt
