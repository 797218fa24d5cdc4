"""The whole of ``python -m search.export`` after its flags: choose, train (or assemble), test once, write, note.

:func:`run_export` chooses what ships (``models``), checks ``--out`` before anything trains, loads the
study's data with its locked test part, trains the model and the seed baseline beside it, tests both once
(``metrics``), writes the model folder whole or not at all (``writing``: weights, ONNX, metrics.json, the
pictures, the card, the MONAI bundle) and leaves the result on the study for optuna-dashboard (``dashboard``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import optuna

from lungct.errors import DataError, UsageError
from lungct.records import PreprocessConfig, get_task
from search.model.folder import CARD, METRICS, ONNX, ModelInfo, export_onnx, save_model, write_json
from search.shipping.bundle import BUNDLE_DIR, write_bundle
from search.shipping.dashboard import note_export, upload_pictures
from search.shipping.figures import write_model_figures
from search.shipping.metrics import data_entry, evaluate, metrics_json, print_test
from search.shipping.model_card import render_model_card
from search.shipping.models import ExportError, ExportSettings, Shipped, assemble, choose, epochs_for, retrain
from search.shipping.writing import (
    BASELINE_DIR,
    check_export,
    check_out_dir,
    check_out_writable,
    export_bytes,
    staged_folder,
)
from search.study import schema
from search.study.storage import redact
from search.study.trials import baseline_trial
from search.training.data import PreparedData, prepare_data, resolve_data_root
from space import ArchSpec, SpecInputError, baseline, baseline_train, fit_to_size


def run_export(study: optuna.Study, s: ExportSettings) -> Path:
    """Everything after parsing: choose, train (or assemble), test, write. Returns the folder written.

    Raises:
        UsageError, DataError: Bad flags, unusable data.
        ExportError: Training or the export check failed.
    """
    stored = study.user_attrs[schema.STUDY_SETTINGS]
    check_out_dir(s.out, s.force)
    choice = choose(study, s.trial, s.size)
    chosen, spec, train_spec = choice.trial, choice.spec, choice.train_spec
    # A kept seed baseline is not a search result: no maximum over noisy scores chose it, so nothing asks for
    # the fold models the confirmation scored, and the course trains it on all its scans. Measured on fresh
    # phantoms: its refit beat its own fold ensemble by +0.036 AUC (CI +0.008 to +0.067).
    ensemble = s.ensemble and not choice.is_baseline
    if ensemble and not choice.members:
        raise UsageError(f"--ensemble: the confirmation of {s.study!r} kept no fold models of its recommendation "
                         "(it was confirmed by an older lungct-nas); rerun python -m search.run --confirm-only, or "
                         "export without --ensemble")
    base_spec = None if choice.is_baseline else _baseline_spec(s.size)
    check_out_writable(s.out, export_bytes(spec, len(choice.members or ()) if ensemble else 1, base_spec))
    print(f"study {s.study!r} in {redact(s.storage)}: exporting {choice.how}")

    root, prepared = _load_data(study, s)
    trainval, test = prepared.tensors("train", "val"), prepared.tensors("test")
    print(f"data: {root}, task {s.task}, {'x'.join(map(str, s.size))} voxels; train+val {len(trainval)} scans, "
          f"locked test part {len(test)} scans (split {prepared.split_path.name})")

    base_trial = baseline_trial(study)
    epochs, rule = epochs_for(s, stored, choice.confirmation)
    if ensemble:
        # A confirmation's recommendation (checked above): it names its fold models.
        assert choice.members is not None and choice.confirmation is not None
        model = assemble("exported model", chosen.number if chosen else 0, spec, train_spec, choice.members,
                         choice.confirmation, test, s)
    else:
        model = retrain("exported model", chosen.number if chosen else 0, spec, train_spec, epochs, rule, trainval,
                        test, s)
    base: Shipped | None
    base_note: str | None
    if choice.is_baseline:
        base = model
        base_note = "the exported model is the seed baseline itself"
    else:
        try:
            base_spec, padding_note = fit_to_size(baseline(), s.size)
        except SpecInputError as e:
            base, base_note = None, f"the seed baseline cannot run at {'x'.join(map(str, s.size))}: {e}"
        else:
            # Beside an ensemble too, the baseline is the seed model as the course trains it, on all train+val
            # scans: the model a user would have without the search (its fold ensemble is weaker, and the
            # confirmation's paired difference already compares the two spec's fold models).
            base = retrain("seed baseline", base_trial.number if base_trial else 0, base_spec, baseline_train(),
                           epochs, rule, trainval, test, s, note=padding_note)
            base_note = padding_note

    info = ModelInfo.for_task(get_task(s.task), prepared.loaded.config)
    result = evaluate(model, base, test, s.bootstrap, seed=s.seed, classes=info.classes)
    print_test(result, info.classes)

    loaded_ids = set(prepared.loaded.study_ids)
    test_ids = [sid for sid in prepared.split.test if sid in loaded_ids]
    data = data_entry(prepared, root, stored, test_ids if s.include_scan_ids else None)
    with staged_folder(s.out, s.force) as tmp:  # a disk filled since the check: nothing is written
        save_model(tmp, model.model, spec, train_spec, info)
        if base is not None and base is not model:
            save_model(tmp / BASELINE_DIR, base.model, base.spec, base.train_spec, info)
        try:
            export_onnx(model.model, s.size, tmp / ONNX)
        except RuntimeError as e:
            raise ExportError(str(e)) from None
        check = check_export(tmp, model.model, s.size)
        metrics = metrics_json(study=study, s=s, info=info, choice=choice, result=result, model=model, base=base,
                               base_trial=base_trial, base_note=base_note, data=data, test=test, test_ids=test_ids,
                               check=check)
        write_json(tmp / METRICS, metrics)
        write_model_figures(metrics, tmp)
        (tmp / CARD).write_text(render_model_card(metrics))
        write_bundle(tmp, tmp / BUNDLE_DIR)  # the MONAI bundle, from the finished folder, before it is moved in
    note_export(study, chosen, result, s.out)
    try:
        upload_pictures(s, study, chosen, model, test, info)
    except KeyboardInterrupt:
        print(f"\ninterrupted while uploading pictures to optuna-dashboard; the model folder {s.out} is complete",
              file=sys.stderr)
    return s.out


def _load_data(study: optuna.Study, s: ExportSettings) -> tuple[Path, PreparedData]:
    """The study's data root and its train, validation and locked test parts, at the study's size, task and split.

    Raises:
        DataError: The data is not the data set the study searched on, so its test part is not the held-out one.
    """
    root = resolve_data_root(s.data, s.studies_dir, s.n_phantoms, 0)
    prepared = prepare_data(root, PreprocessConfig(size=s.size), parts=("train", "val", "test"), task=s.task,
                            seed=s.split_seed, studies_dir=s.studies_dir, workers=s.workers,
                            progress=sys.stderr.isatty())
    searched_on = Path((study.user_attrs.get(schema.STUDY_DATA_SUMMARY) or {}).get("split_file", "")).name
    if searched_on and searched_on != prepared.split_path.name:
        raise DataError(f"data: {root} is not the data set study {s.study!r} searched on (its split was "
                        f"{searched_on}, this data's is {prepared.split_path.name}), so its test part would not "
                        "be the held-out one; pass the study's --data")
    return root, prepared


def _baseline_spec(size: tuple[int, int, int]) -> ArchSpec | None:
    """The seed baseline at ``size``, or None where it cannot run there."""
    try:
        return fit_to_size(baseline(), size)[0]
    except SpecInputError:
        return None
