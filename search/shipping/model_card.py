"""``MODEL_CARD.md`` of an exported model, written from its ``metrics.json`` alone.

Everything the card states comes from that one dict, so the card can be rebuilt from the folder and
never says more than the export measured. The card is shared with the folder, so it names the study's
storage by its kind and, for SQLite, its file name alone (:func:`storage_text`): never a host, socket path,
user or password. An ordinal (severity grading) export's card (:func:`render_grade_card`) reports the mean
"grade >= k" AUC, QWK and MAE with their intervals beside the baseline's, the K x K confusion matrix, the
"grade >= k" ROC curves and the routing decision of each grade.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from search.model.routing import CLINICAL_NOTE, DISCLAIMER, ROUTING, decision_text
from search.shipping.figures import CALIBRATION_PNG, CONFUSION_PNG, FIGURES, ORDINAL_FIGURES, ROC_PNG, is_ordinal
from search.stats.intervals import Interval

# SQLAlchemy's backend names, as their makers spell them.
BACKENDS = {"postgresql": "PostgreSQL", "mysql": "MySQL", "mariadb": "MariaDB", "oracle": "Oracle",
            "mssql": "SQL Server", "sqlite": "SQLite"}


def _card_header(title: str, model: dict, study: dict, phantoms: bool) -> list[str]:
    """The card's title, the research-use disclaimer and, for a phantom-trained model, what its numbers mean."""
    lines = [f"# Model card: {title} — trial {model['trial']} of study '{study['name']}'", "", f"> **{DISCLAIMER}**"]
    if phantoms:
        lines += [">", "> **Trained and tested on synthetic phantoms**, not on patients' scans: the numbers below "
                  "say how well the search worked on the phantom set, nothing about real chest CT."]
    return lines


def storage_text(url: str) -> str:
    """The study's storage as a shared file may name it: a SQLite file by its name, any other database by its kind.

    ``sqlite:////home/alice/studies/lungct.db?password=x`` is "`sqlite:///lungct.db`";
    ``postgresql://alice:pw@db.internal/optuna?host=/run/postgresql`` is "a PostgreSQL database": the host,
    port, socket path, user, password and database name stay on the machine that ran the study.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return "a database"
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return f"`sqlite:///{PurePosixPath(parsed.database).name}`"
    kind = BACKENDS.get(backend)
    return f"a{'n' if (kind or 'x')[0] in 'AEIOUaeiou' else ''} {kind} database" if kind else "a database"


def _ci(entry: dict | None, key: str) -> str:
    if not entry or entry.get(key) is None:
        return "-"
    return Interval(**entry[key]).text()


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def render_model_card(m: dict) -> str:
    """The model card as Markdown, from the ``metrics.json`` dict that ``search.export`` writes."""
    if is_ordinal(m):
        return render_grade_card(m)
    task, data, test, model, base = m["task"], m["data"], m["test"], m["model"], m["baseline"]
    study, check, classes = m["study"], m["export_check"], task["classes"]
    size = "x".join(map(str, data["size"]))
    phantoms = data.get("phantoms", False)
    base_test = test.get("baseline")
    lines = _card_header(f"{classes[0]} vs {classes[1]}", model, study, phantoms)
    lines += [
        "",
        "## Task",
        "",
        f"- {task['description']}: label 0 = **{classes[0]}**, label 1 = **{classes[1]}** (task `{task['name']}`).",
        f"- Output: P(label 1) = sigmoid(logit); predicted class = label 1 when P >= {task['threshold']} "
        "(not tuned or calibrated).",
        "- A binary model cannot tell the categories inside a class apart (for the course task: CT-2 from CT-3).",
        "- The course's routing table, which `python -m search.predict` applies to the predicted class:",
        "",
        "| grade | decision |",
        "| --- | --- |",
        *[f"| {c} | {d} |" for c, d in ROUTING.items()],
        "",
        f"- {CLINICAL_NOTE}",
        "",
        "## Model",
        "",
        f"- Architecture ({size} input): {model['architecture']}.",
        *_size_lines(model),
        f"- {_trained_on(model, data)} for {model['epochs']} "
        f"epochs ({model['epochs_rule']}), optimiser {model['train_spec']['optimizer']}, learning rate "
        f"{model['train_spec']['lr']:.3g}, weight decay {model['train_spec']['weight_decay']:g}, batch size "
        f"{model['train_spec']['batch_size']}, on {m['training']['device']}, with {m['training']['augmentation']}; "
        "batch-norm statistics recomputed over the training scans after training.",
        "",
        "## Data and split",
        "",
        f"- Data: `{data['root']}` ({data['layout']} layout); synthetic phantoms: {_yes(phantoms)}.",
        f"- Preprocessing: HU window {data['hu_window'][0]:g} to {data['hu_window'][1]:g} scaled to [0, 1], "
        f"resized to {size} voxels (D x H x W, RAS orientation); see `preprocess.json`.",
        f"- Split (seed {data['split_seed']}, stratified, saved in `{data['split_file']}`): {data['n_train']} train, "
        f"{data['n_val']} validation, {data['n_test']} test scans; {data['excluded']} scans outside the task, "
        f"{data['skipped']} unreadable scans skipped.",
        "- The search scored each trial by cross-validation over the train + validation parts and a confirmation "
        "stage re-evaluated the best specs against the seed baseline on fresh folds; the test part was read only "
        "by this export, once.",
        "",
        *_selection_lines(m.get("selection")),
        "## Locked test evaluation",
        "",
        f"{test['n']} test scans: {test['n_negative']} {classes[0]}, {test['n_positive']} {classes[1]}.",
        "",
        "| metric | exported model | seed baseline |",
        "| --- | --- | --- |",
        *[f"| {label} | {_ci(test['model'], key)} | {_ci(base_test, key)} |"
          for label, key in (("ROC AUC", "auc"), ("accuracy", "accuracy"), ("sensitivity", "sensitivity"),
                             ("specificity", "specificity"))],
    ]
    cm = [e["confusion_matrix"] if e else None for e in (test["model"], base_test)]
    cells = [f"{c['tn']} / {c['fp']} / {c['fn']} / {c['tp']}" if c else "-" for c in cm]
    lines.append(f"| confusion matrix (TN / FP / FN / TP) | {cells[0]} | {cells[1]} |")
    lines.append("")
    if test.get("auc_difference"):
        lines.append(f"Difference in AUC, exported model minus seed baseline: {_ci(test, 'auc_difference')}; "
                     "an interval that contains 0 means this test part cannot tell the two apart.")
        lines.append("")
    note = base.get("note")
    if base_test is None:
        lines += [f"Seed baseline: not trained ({note}).", ""]
    else:
        how = ("was trained the same way: same train + validation scans" if model.get("members", 1) == 1 else
               f"was trained as the course trains it, on all {data['n_train'] + data['n_val']} train + validation "
               "scans (the model you have without the search; the confirmation compared the two specs' fold "
               "models)")
        lines += [f"The seed baseline ({base['architecture']}) {how}, {base['epochs']} epochs ({base['epochs_rule']})"
                  + (f"; {note}" if note else "") + ".", ""]
    auc_method = test["model"]["auc"]["method"]
    lines += [
        f"Intervals are 95%: ROC AUC by {auc_method}; accuracy, sensitivity and specificity by Wilson score "
        "intervals. On a test part this small they are wide; read them before the point estimates.",
        "",
    ]
    if any(e and e["auc"]["estimate"] in (0.0, 1.0) for e in (test["model"], base_test)):
        lines += ["An AUC of exactly 0 or 1 ranks every test scan correctly (or wrongly), so every bootstrap "
                  "resample gives the same AUC and the interval collapses to a point: there it understates the "
                  "uncertainty, which only a larger test part can measure.", ""]
    lines += _figure_lines(test, task)
    lines += [
        "## Provenance",
        "",
        f"- Study `{study['name']}` in {storage_text(study['storage'])} ({study['n_trials']} trials, objectives "
        f"{', '.join(study['objectives'])}); exported trial {model['trial']}, cross-validated AUC "
        f"{model.get('search_cv_auc', float('nan')):.3f} in the search.",
        f"- Exported {m['created']}. Export check on a fixed input: reloaded weights differ by "
        f"{check['weights_max_abs_diff']:.1e}, ONNX by "
        + (f"{check['onnx_max_abs_diff']:.1e}" if check["onnx_max_abs_diff"] is not None else check["onnx_runtime"])
        + f" (tolerance {check['tolerance']:g}).",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        "",
        "## Files",
        "",
        "- `spec.json`, `weights.safetensors`: rebuild with `space.build(ArchSpec.from_json(...))` and "
        "`load_state_dict(safetensors.torch.load_file(...), strict=True)` (`search.model.folder.load_model`).",
        *(["- `ensemble.json`: the member count; `weights.safetensors` names each member's tensors "
            "`members.<i>.<layer>`, and `load_model` builds the `Ensemble` from the two."]
          if model.get("members", 1) > 1 else []),
        "- `model.onnx`: the same network for other runtimes; input `volume` (batch, 1, D, H, W) float32 "
        "preprocessed as `preprocess.json` describes, output `logit` (batch).",
        "- `preprocess.json`, `train_spec.json`, `metrics.json` ("
        + ("with each test scan's study id, label and probabilities, as asked for by --include-scan-ids"
           if m.get("test_predictions") else "counts, metrics and the curves behind the pictures only: no study id, "
           "no local path")
        + "), this card.",
        *([f"- {', '.join(f'`{name}`' for name in FIGURES)}: the pictures above, drawn from `metrics.json` alone; "
           "`search.shipping.figures.write_model_figures(metrics, folder)` "
           "redraws them."] if _has_figures(test) else []),
        "",
        "Predict: `python -m search.predict MODEL_DIR SCAN.nii.gz [...] [--json]`; add `--saliency OUT_DIR` for "
        "a Grad-CAM++ montage per scan of where the evidence for label 1 sits (coarse: the last level's map; on "
        "phantoms it tells which lung, not which lesion). Montages of the surest test scan of each outcome are "
        "in optuna-dashboard, as study artifacts named after this trial.",
        "",
        "## Limits",
        "",
        "- Research and teaching use only; not a medical device, not validated for clinical use.",
        "- MosMedData comes from Moscow hospitals in 2020; other scanners, protocols, populations and "
        "diseases than COVID-19 pneumonia are untested.",
        "- The model sees a heavily downsampled volume and has no out-of-distribution check: a scan that is "
        "not a chest CT still gets a probability.",
    ]
    if phantoms:
        lines.append("- Trained on synthetic phantoms: its outputs on real scans are meaningless.")
    return "\n".join(lines) + "\n"


def _has_figures(test: dict) -> bool:
    """Whether the export drew the pictures: a metrics.json of an older lungct-nas holds no curves."""
    return "roc" in test["model"]


def _figure_lines(test: dict, task: dict) -> list[str]:
    """The three pictures, each with one sentence on how to read it, and a warning on a small test part."""
    if not _has_figures(test):
        return []
    classes, threshold = task["classes"], task["threshold"]
    return [
        f"![ROC curves on the locked test part, with 95% bootstrap bands]({ROC_PNG})",
        "",
        f"`{ROC_PNG}`: each curve shows the share of {classes[1]} scans caught (sensitivity) against the share of "
        f"{classes[0]} scans flagged (1 - specificity) as the threshold is lowered; the shaded band spans, at each "
        "false positive rate, the middle 95% of the curves of bootstrap resamples of the test scans, the dot marks "
        f"the threshold {threshold:g} and the dashed diagonal is chance.",
        "",
        f"![Reliability diagrams and predicted probabilities per class]({CALIBRATION_PNG})",
        "",
        f"`{CALIBRATION_PNG}`: each dot is the observed fraction of {classes[1]} among test scans of similar "
        "predicted probability, with its 95% Wilson interval, so dots near the diagonal mean the probabilities can "
        "be read as frequencies; beneath, how each class's probabilities spread, and the Brier score (lower is "
        "better) in the title.",
        "",
        f"![Confusion counts at threshold {threshold:g}]({CONFUSION_PNG})",
        "",
        f"`{CONFUSION_PNG}`: the confusion counts of the table above as 2x2 tables, rows the true class and columns "
        f"the class predicted at P >= {threshold:g}, shaded by the share of the row.",
        "",
        f"> On a small test part (this one has {test['n']} scans) the bands and intervals in these pictures are "
        "wide: two models whose bands overlap are not shown to differ, and each step of a curve is one scan (or a "
        "few tied ones).",
        "",
    ]


def _size_lines(model: dict) -> list[str]:
    """Parameters and cost, per member and in all for an ensemble."""
    members = model.get("members", 1)
    one = (f"{model['params']:,} trainable parameters ({model['keras_params']:,} as Keras counts them), "
           f"{model['gflops']:.3f} GFLOPs per scan")
    if members == 1:
        return [f"- {one}."]
    return [f"- An ensemble of {members} copies of this architecture, trained on different folds; it outputs the "
            "logit of their mean probability (`search.model.folder.Ensemble`).",
            f"- Each member: {one}; in all {members * model['params']:,} parameters and "
            f"{members * model['gflops']:.3f} GFLOPs per scan."]


def _trained_on(model: dict, data: dict) -> str:
    n = data["n_train"] + data["n_val"]
    if model.get("members", 1) == 1:
        return f"Trained on the train + validation parts ({n} scans)"
    scans = "/".join(map(str, model.get("member_train_scans") or [])) or "most"
    return (f"Each member trained by the confirmation stage on one cross-validation fold's training scans ({scans} of "
            f"the {n} train + validation scans) and scored on the rest")


def _selection_lines(selection: dict | None, metric: str = "AUC", confirmed: str = "mean fold AUC on fresh folds"
                     ) -> list[str]:
    """How the model was chosen, and how optimistic its confirmed score (``confirmed``) was against the test part."""
    if not selection:
        return []
    lines = ["## How this model was chosen", "", f"- {selection['how'][0].upper()}{selection['how'][1:]}."]
    if selection.get("why"):
        lines.append(f"- Why: {selection['why']}.")
    if selection.get("rule"):
        lines.append(f"- Rule: {selection['rule']}.")
    if selection.get("confirmed_score") is not None:
        lines.append(f"- Confirmed score ({confirmed}): {selection['confirmed_score']:.3f}; "
                     f"locked test {metric}: {selection['test_auc']:.3f}; optimism (confirmed - test): "
                     f"{selection['optimism']:+.3f}.")
    if selection.get("baseline_confirmed_score") is not None and not selection.get("is_baseline"):
        lines.append(f"- The seed baseline's confirmed score: {selection['baseline_confirmed_score']:.3f}.")
    return [*lines, ""]


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def grade_title(task: dict) -> str:
    """``severity grading CT-0 < CT-1 < CT-2 < CT-3/CT-4``."""
    return "severity grading " + " < ".join("/".join(g) for g in task["grades"])


def _grade_table(test: dict) -> list[str]:
    """The ordinal metrics of the model beside the baseline's, one row each."""
    model, base = test["model"], test.get("baseline")
    rows = [("mean grade>=k ROC AUC (the selection metric)", _ci(model, "auc"), _ci(base, "auc"))]
    for i, threshold in enumerate(model["at_least"]):
        theirs = base["at_least"][i] if base else None
        rows.append((f"ROC AUC of {threshold['event']}", _ci(threshold, "auc"), _ci(theirs, "auc")))
    rows += [("quadratic weighted kappa (QWK)", _ci(model, "qwk"), _ci(base, "qwk")),
             ("mean absolute error (grades)", _ci(model, "mae"), _ci(base, "mae")),
             ("macro one-vs-rest AUC", _number(model["macro_auc"]), _number(base["macro_auc"]) if base else "-"),
             ("balanced accuracy", _number(model["balanced_accuracy"]),
              _number(base["balanced_accuracy"]) if base else "-"),
             ("accuracy (exact grade)", _ci(model, "accuracy"), _ci(base, "accuracy"))]
    return ["| metric | exported model | seed baseline |", "| --- | --- | --- |",
            *[f"| {a} | {b} | {c} |" for a, b, c in rows]]


def _confusion_table(title: str, entry: dict, grades: list[str]) -> list[str]:
    """A K x K confusion matrix as Markdown: each cell the count and its share of the row."""
    cm = entry["confusion_matrix"]
    lines = [f"{title} (rows: true grade; columns: predicted grade, the median; count and share of the row):", "",
             "| true \\ predicted | " + " | ".join(grades) + " |", "| --- |" + " --- |" * len(grades)]
    for name, counts, shares in zip(grades, cm["counts"], cm["row_normalised"], strict=True):
        lines.append(f"| {name} | " + " | ".join(f"{c} ({s:.0%})" for c, s in zip(counts, shares, strict=True)) + " |")
    return [*lines, ""]


def render_grade_card(m: dict) -> str:
    """The model card of an ordinal (severity grading) export, from its ``metrics.json`` dict."""
    task, data, test, model, base = m["task"], m["data"], m["test"], m["model"], m["baseline"]
    study, check, grades = m["study"], m["export_check"], task["classes"]
    size = "x".join(map(str, data["size"]))
    phantoms = data.get("phantoms", False)
    base_test = test.get("baseline")
    k = len(grades)
    lines = _card_header(grade_title(task), model, study, phantoms)
    lines += [
        "",
        "## Task",
        "",
        f"- {task['description']} (task `{task['name']}`): {k} ordered grades, "
        + ", ".join(f"grade {i} = **{name}**" for i, name in enumerate(grades)) + ".",
        f"- Output: {k - 1} cumulative logits, one per \"grade >= k\" (k = 1..{k - 1}): one severity score plus "
        "strictly decreasing cutpoints, so P(grade >= k) = sigmoid(logit) falls with k and the grade probabilities "
        "P(grade = k) = P(grade >= k) - P(grade >= k+1) sum to 1.",
        "- Predicted grade: the median of that distribution, the number of k with P(grade >= k) >= 0.5 (not tuned "
        "or calibrated); it is always one of the grades above.",
        "- The course's routing table, which `python -m search.predict` applies to the predicted grade (a pooled "
        "grade lists the decision of each of its categories):",
        "",
        "| grade | decision |",
        "| --- | --- |",
        *[f"| {name} | {decision_text(tuple(cats))} |" for name, cats in zip(grades, task["grades"], strict=True)],
        "",
        f"- {CLINICAL_NOTE}",
        "",
        "## Model",
        "",
        f"- Architecture ({size} input): {model['architecture']}, with an ordinal head of {k - 1} ordered "
        "cutpoints (`space.build(spec, grades=K)`).",
        *_size_lines(model),
        f"- {_trained_on(model, data)} for {model['epochs']} "
        f"epochs ({model['epochs_rule']}) with CORAL's loss (the sum of the binary cross-entropies of each "
        f"\"grade >= k\"), optimiser {model['train_spec']['optimizer']}, learning rate "
        f"{model['train_spec']['lr']:.3g}, weight decay {model['train_spec']['weight_decay']:g}, batch size "
        f"{model['train_spec']['batch_size']}, on {m['training']['device']}, with {m['training']['augmentation']}; "
        "batch-norm statistics recomputed over the training scans after training.",
        "",
        "## Data and split",
        "",
        f"- Data: `{data['root']}` ({data['layout']} layout); synthetic phantoms: {_yes(phantoms)}.",
        f"- Preprocessing: HU window {data['hu_window'][0]:g} to {data['hu_window'][1]:g} scaled to [0, 1], "
        f"resized to {size} voxels (D x H x W, RAS orientation); see `preprocess.json`.",
        f"- Split (seed {data['split_seed']}, stratified by grade, saved in `{data['split_file']}`): {data['n_train']} "
        f"train, {data['n_val']} validation, {data['n_test']} test scans; {data['excluded']} scans outside the task, "
        f"{data['skipped']} unreadable scans skipped.",
        "- The search scored each trial by cross-validation over the train + validation parts (mean \"grade >= k\" "
        "AUC) and a confirmation stage re-evaluated the best specs against the seed baseline on fresh folds; the test "
        "part was read only by this export, once.",
        "",
        *_selection_lines(m.get("selection"), "mean grade>=k AUC",
                          "the mean grade>=k AUC of the fold models on fresh folds, averaged"),
        "## Locked test evaluation",
        "",
        f"{test['n']} test scans: " + ", ".join(f"{n} {name}" for n, name in zip(test["n_per_grade"], grades,
                                                                               strict=True)) + ".",
        "",
        *_grade_table(test),
        "",
    ]
    if test.get("auc_difference") and not test.get("baseline_is_model"):
        lines += ["Difference in mean grade>=k AUC, exported model minus seed baseline: "
                  f"{_ci(test, 'auc_difference')}; an interval that contains 0 means this test part cannot tell the "
                  "two apart.", ""]
    note = base.get("note")
    if base_test is None:
        lines += [f"Seed baseline: not trained ({note}).", ""]
    else:
        how = ("was trained the same way, with the same ordinal head: same train + validation scans"
               if model.get("members", 1) == 1 else
               f"was trained as the course trains it (with the same ordinal head), on all "
               f"{data['n_train'] + data['n_val']} train + validation scans")
        lines += [f"The seed baseline ({base['architecture']}) {how}, {base['epochs']} epochs ({base['epochs_rule']})"
                  + (f"; {note}" if note else "") + ".", ""]
    lines += _confusion_table("Exported model", test["model"], grades)
    if base_test is not None and not test.get("baseline_is_model"):
        lines += _confusion_table("Seed baseline", base_test, grades)
    lines += [
        f"Intervals are 95%: the AUCs by {test['model']['auc']['method']}; QWK and MAE by percentile intervals over "
        "the same resamples; exact-grade accuracy by a Wilson score interval. On a test part this small they are "
        "wide; read them before the point estimates.",
        "",
        f"![\"grade >= k\" ROC curves on the locked test part, with 95% bootstrap bands]({ROC_PNG})",
        "",
        f"`{ROC_PNG}`: one curve per \"grade >= k\": the share of scans at or above the grade caught against the share "
        "of scans below it flagged, as P(grade >= k) is lowered; the shaded band spans the middle 95% of the curves "
        "of bootstrap resamples of the test scans, the dotted curves are the other model's, the dashed diagonal is "
        "chance.",
        "",
        f"![Confusion matrix of the predicted grade]({CONFUSION_PNG})",
        "",
        f"`{CONFUSION_PNG}`: the {k} x {k} confusion matrices above, rows the true grade and columns the median "
        "grade, shaded by the share of the row, with QWK and MAE in the titles.",
        "",
        f"> On a small test part (this one has {test['n']} scans) the bands and intervals are wide: two models whose "
        "bands overlap are not shown to differ, and each step of a curve is one scan (or a few tied ones).",
        "",
        "## Provenance",
        "",
        f"- Study `{study['name']}` in {storage_text(study['storage'])} ({study['n_trials']} trials, objectives "
        f"{', '.join(study['objectives'])}); exported trial {model['trial']}, cross-validated mean grade>=k AUC "
        f"{model.get('search_cv_auc', float('nan')):.3f} in the search.",
        f"- Exported {m['created']}. Export check on a fixed input: reloaded weights differ by "
        f"{check['weights_max_abs_diff']:.1e}, ONNX by "
        + (f"{check['onnx_max_abs_diff']:.1e}" if check["onnx_max_abs_diff"] is not None else check["onnx_runtime"])
        + f" (tolerance {check['tolerance']:g}) in any of the {k - 1} logits.",
        "- Versions: " + ", ".join(f"{name} {v}" for name, v in m["versions"].items()) + ".",
        "",
        "## Files",
        "",
        "- `spec.json`, `weights.safetensors`: rebuild with `space.build(ArchSpec.from_json(...), grades="
        f"{k})` and `load_state_dict(safetensors.torch.load_file(...), strict=True)` "
        "(`search.model.folder.load_model`); the weights hold the cutpoints `head.cuts.first` and `head.cuts.gaps`.",
        *(["- `ensemble.json`: the member count; `weights.safetensors` names each member's tensors "
            "`members.<i>.<layer>`, and `load_model` builds the `Ensemble` from the two (it averages each "
            "P(grade >= k) over the members)."]
          if model.get("members", 1) > 1 else []),
        "- `model.onnx`: the same network for other runtimes; input `volume` (batch, 1, D, H, W) float32 "
        f"preprocessed as `preprocess.json` describes, output `logit` (batch, {k - 1}): the cumulative logits.",
        "- `preprocess.json` (the grades, their categories and names), `train_spec.json`, `metrics.json` ("
        + ("with each test scan's study id, grade and P(grade >= k), as asked for by --include-scan-ids"
           if m.get("test_predictions") else "counts, metrics and the curves behind the pictures only: no study id, "
           "no local path")
        + "), this card.",
        f"- {', '.join(f'`{name}`' for name in ORDINAL_FIGURES)}: the pictures above, drawn from `metrics.json` alone; "
        "`search.shipping.figures.write_model_figures(metrics, folder)` redraws them.",
        "",
        "Predict: `python -m search.predict MODEL_DIR SCAN.nii.gz [...] [--json]` gives each grade's probability, the "
        "median grade and its routing decision; add `--saliency OUT_DIR` for a Grad-CAM++ montage per scan of where "
        "the evidence for a higher grade sits (the map of the one severity logit that every \"grade >= k\" shares; "
        "coarse: the last level's map). Montages of the surest correct scan of the lowest and of the highest grade "
        "and of the worst miss are in optuna-dashboard, as study artifacts named after this trial.",
        "",
        "## Limits",
        "",
        "- Research and teaching use only; not a medical device, not validated for clinical use.",
        "- MosMedData comes from Moscow hospitals in 2020; other scanners, protocols, populations and "
        "diseases than COVID-19 pneumonia are untested.",
        *[f"- Grade {name} pools {' and '.join(cats)}: the model cannot tell them apart, so that grade lists the "
          "decision of each." for name, cats in zip(grades, task["grades"], strict=True) if len(cats) > 1],
        "- The model sees a heavily downsampled volume and has no out-of-distribution check: a scan that is "
        "not a chest CT still gets a grade.",
    ]
    if phantoms:
        lines.append("- Trained on synthetic phantoms: its outputs on real scans are meaningless.")
    return "\n".join(lines) + "\n"
