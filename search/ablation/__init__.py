"""The ablation: the seed baseline against each course modification, by repeated cross-validation.

``python -m search.ablate`` parses its flags into :class:`AblationSettings` and :class:`AblationJob` and
calls :func:`run_ablation`. The modules, in the order the work flows:

- ``settings``: what every run shares (stored on the ablation's study) and what one invocation asks for;
- ``variants``: which architectures run, fitted to the input size, and a search study's best trial;
- ``runs``: one (variant, fold) run as one trial of the ablation's study, its record, the progress line;
- ``summary``: one summary row per variant, with the paired comparison against the baseline;
- ``outputs``: ablation.csv, runs.csv, the console table and verdicts, the HTML page;
- ``experiment``: the whole ablation, resumable, from the data to the written outputs.
"""

from search.ablation.experiment import AblationResult, run_ablation
from search.ablation.settings import AblationJob, AblationSettings

__all__ = ["AblationJob", "AblationResult", "AblationSettings", "run_ablation"]
