"""``python -m lungct.phantom``: runs :func:`lungct.phantom.cli.main`.

The command line lives in ``cli``, not here, so that ``lungct.phantom`` can re-export ``main`` without
importing this module: ``python -m`` warns when it finds ``__main__`` imported before it runs it.
"""

from lungct.phantom.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
