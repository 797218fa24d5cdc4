"""The offline HTML pages: a small HTML/plot toolkit and the report's validation section.

``html`` builds self-contained pages with plotly figures; ``validation`` is the report's section that sets
the search's scores beside the confirmation and the locked test part. ``search.report`` assembles the
study report; ``search.ablation`` writes its own page with the same toolkit.
"""
