"""The search and its confirmation: a study's settings, the trial objective, the time budget, the confirmation.

``settings`` holds what a study is run with (stored on it) and what one invocation asks for;
``objective`` trains a trial's spec on the search's folds and scores it; ``budget`` fits the study to the
machine's time; ``parallel`` runs ``--jobs`` workers; ``progress`` is the console output; ``confirm``
retrains the top ``candidates`` and the seed baseline on fresh folds, and the ``rule`` decides what to
recommend, stored on the study as a ``decision``. ``start`` opens the study and loads its data, and ``stages``
takes a started run through the budget, the search and the confirmation: what ``python -m search.run`` calls.
"""
