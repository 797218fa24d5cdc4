"""search: the five commands and the library they call.

Commands (``python -m search.<name>``; the only modules with a ``main``): ``run`` (search and
confirmation), ``report`` (offline HTML page), ``export`` (ship and test the chosen model),
``predict`` (score scans, saliency), ``ablate`` (the seed against the course's modifications).
Each parses its flags with ``search.cli``, builds frozen settings and calls the library below it; the
docs/explanation/layout.md maps the library modules by concern.
"""
