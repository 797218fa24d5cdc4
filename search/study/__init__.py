"""The Optuna study's plumbing: storage, names, attribute names, dead-worker recovery, artifacts, reading trials.

``storage`` opens and creates studies (sampler, pruner, stored settings); ``schema`` names every attribute
a trial or study carries; ``names`` says what a study name may be; ``faults`` finds the storage fault behind
what Optuna raised; ``recovery`` fails and re-queues a dead worker's trial; ``trial_run`` is the one place
that maps a training failure to a trial's state; ``artifacts`` writes the dashboard's files; ``trials``
reads a finished study's ranking.
"""
