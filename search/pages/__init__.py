"""The offline HTML pages: a small HTML/plot toolkit and the study report's sections.

``html`` builds self-contained pages with plotly figures; ``plots`` draws the report's figures and
``tables`` its tables; ``validation`` is the report's section that sets the search's scores beside the
confirmation and the locked test part; ``report`` assembles the study report that ``python -m
search.report`` writes. ``search.ablation`` writes its own page with the same toolkit.
"""
