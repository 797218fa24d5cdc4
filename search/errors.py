"""The errors that mean "the user asked for something this tool cannot do", as opposed to a bug.

:class:`UsageError` is raised by the checks of flags and settings (a value out of range, a flag that
contradicts the study's stored settings, a ``--space`` file that does not parse, a study that does not
exist or was not made by ``search.run``). ``search.cli.exit_code`` answers it, and the data, model-folder,
spec-input and storage errors, with one line and exit 2; any other exception, a plain ``ValueError``
included, is a bug and shows its traceback.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A flag, a setting or a named study the command cannot use; the message names it, in one line.

    A ``ValueError`` so that callers (and tests) that caught the plain ``ValueError`` these checks raised
    before keep working.
    """


class NoRecommendation(ValueError):
    """The confirmation finished without a candidate whose runs all finished: nothing can be recommended.

    Not a bug: every run of every candidate diverged or ran out of memory (each failure is recorded on
    its run); the search's trials are kept and the confirmation can be resumed with other settings.
    ``search.run`` says so in one line; a ``ValueError`` as the plain one raised before it was.
    """
