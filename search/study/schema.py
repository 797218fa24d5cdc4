"""What a trial records: the user-attribute names shared by the search, confirmation, export and report.

Every command that writes or reads a trial's attributes names them from here, so a rename happens in one
place and a reader cannot drift from its writer. Values are JSON primitives (Optuna stores user attrs
as JSON). The study-level attributes are at the end.
"""

from __future__ import annotations

# -- what was trained -------------------------------------------------------------------------------
BASELINE = "baseline"  # True on the seed baseline's trial
SPEC = "spec"  # ArchSpec.to_dict() of what was trained (after the size fit)
TRAIN_SPEC = "train_spec"  # TrainSpec.to_dict()
PADDING_FALLBACK = "padding_fallback"  # why 'same' padding replaced the sampled 'valid', if it did
COST_FALLBACK = "cost_fallback"  # how the sampled spec was narrowed to fit the cost cap, if it was (space.fit_cost)
PARAMS = "params"
KERAS_PARAMS = "keras_params"
GFLOPS = "gflops"
DEVICE = "device"
AMP_BF16 = "amp_bf16"  # bf16 autocast allowed by the fidelity (the probe may still train in float32)
PRECISION = "precision"  # what training actually used, per fold: "bf16" or "float32"

# -- the score ----------------------------------------------------------------------------------------
FOLD_AUCS = "fold_aucs"  # final-epoch validation AUC of each fold trained, in fold order
FOLD_SES = "fold_ses"  # bootstrap standard error of each of those AUCs
SCORE = "score"  # mean of FOLD_AUCS over all folds: the trial's value
SCORE_SE = "score_se"  # standard error of SCORE (scan sampling, folds independent)
N_VAL = "n_val"  # validation scans per fold (a confirmation or ablation run: of its one fold)
N_TRAIN = "n_train"  # training scans of a confirmation or ablation run's fold
FOLDS_FILE = "folds_file"

# -- how it went --------------------------------------------------------------------------------------
EPOCHS_RUN = "epochs_run"  # epochs trained, all folds together
WALL_SECONDS = "wall_seconds"
TRAIN_SECONDS = "train_seconds"
EPOCH_SECONDS = "epoch_seconds"
SAMPLES_PER_S = "samples_per_s"
TRAIN_LOSS = "train_loss"  # per fold: list of per-epoch mean training losses
VAL_AUC = "val_auc"  # per fold: list of per-epoch validation AUCs (learning curves)
PRUNE_REASON = "prune_reason"
FAIL_REASON = "fail_reason"
WORKER = "worker"  # who runs it: {"host", "boot_id", "pid"}, so a run on the same machine can tell it died
RETRY_OF = "retry_of"  # the trial this one runs again (its worker died, or Ctrl-C stopped the seed baseline)
RETRY_REASON = "retry_reason"  # why that trial was run again

# -- one run of a companion study: a confirmation's (candidate, repeat, fold), an ablation's (variant, ...) ----
REPEAT = "repeat"  # the repeat of the fresh cross-validation the run's fold belongs to
FOLD = "fold"  # the fold within that repeat
SEED = "seed"  # the run's training seed
AUC = "auc"  # its validation AUC after the last epoch (the run's score)
CANDIDATE = "candidate"  # confirmation: the candidate's key ("baseline" or "trial<n>")
SEARCH_TRIAL = "search_trial"  # confirmation: the search trial the candidate came from (None: the baseline)
LABELS = "labels"  # confirmation: the validation scans' labels, in order (for the paired bootstrap)
PROBS = "probs"  # confirmation: the model's probabilities for them
VARIANT = "variant"  # ablation: the variant's name
SPEC_KEY = "spec_key"  # ablation: a hash of the variant's spec and training settings
ORIGIN = "origin"  # ablation: where the variant's spec came from
PADDING = "padding"  # ablation: the variant's padding, and the seed's where it differs
ACCURACY = "accuracy"  # ablation: last-epoch validation accuracy at threshold 0.5
SENSITIVITY = "sensitivity"
SPECIFICITY = "specificity"
AUC_BEST_EPOCH = "auc_best_epoch"  # ablation: the best epoch's validation AUC, for reference only (never the score)
BEST_EPOCH = "best_epoch"  # ablation: that epoch (1-based)
BN_RECOMPUTED = "batchnorm_recomputed"  # its batch-norm statistics were recomputed before it was scored
WEIGHTS_ARTIFACT = "weights_artifact"  # artifact id of its trained weights (safetensors), for export --ensemble

# -- study-level attributes -----------------------------------------------------------------------------
STUDY_SETTINGS = "settings"
STUDY_OBJECTIVES = "objectives"
STUDY_DATA_SUMMARY = "data_summary"
STUDY_BOUNDS = "space_bounds"  # SpaceBounds.to_dict() the study samples from
STUDY_CONFIRMATION = "confirmation"  # the confirmation stage's result (see search.selection.confirm)
STUDY_TIME_PLAN = "time_plan"  # the last run's measured speed, budget and promised time (search.selection.budget)
STUDY_EXPORTED = "exported"  # what search.export shipped last and its locked-test AUC (search.export, dashboard note)
STUDY_BASELINE_NOTE = "baseline_note"  # why the seed baseline is not a trial (an input too small for it)
