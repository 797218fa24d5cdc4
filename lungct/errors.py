"""The two kinds of expected bad input: a whole data set we cannot use, and one scan we must skip."""


class DataError(Exception):
    """A data set cannot be used (missing root, unknown layout, too few scans in a class).

    Command-line entry points print its message as one line and exit non-zero, without a traceback.
    """


class ScanError(Exception):
    """One scan cannot be used; its message is the reason, shown next to the path when it is skipped."""
