"""search: command-line entry points, the Optuna study, training, reports, export, predict, ablation."""
