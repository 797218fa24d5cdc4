"""Expected bad input (a flag or setting, a data set we cannot use, a scan we must skip), and how to show it.

File names, folder names and CSV cells come from whoever made the data; a control character in one
(an escape sequence, a newline, a right-to-left override) must not reach the terminal raw, and a
name that is not valid UTF-8 (held by Python as a lone surrogate) cannot be printed at all.
"""


def printable(text: str) -> str:
    """``text`` with every non-printable character escaped as ``repr`` escapes it (``\\x1b``, ``\\n``).

    Printable text, non-ASCII letters included, is left as it is, and so are backslashes: a repr'd
    part of a message (``'\\x1b'``) is already printable and passes unchanged.
    """
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class OneLineError(Exception):
    """An error whose message is shown to a user: ``str()`` of it is one printable line."""

    def __str__(self) -> str:
        return printable(super().__str__())


class DataError(OneLineError):
    """A data set cannot be used (missing root, unknown layout, too few scans in a class).

    Command-line entry points print its message as one line and exit non-zero, without a traceback.
    """


class ScanError(OneLineError):
    """One scan cannot be used; its message is the reason, shown next to the path when it is skipped."""


class UsageError(OneLineError, ValueError):
    """A flag, a setting or a named study a command cannot use; the message names it, in one line.

    Raised by the checks of flags and settings (a value out of range, a flag that contradicts a study's
    stored settings, a ``--space`` file that does not parse, a study that does not exist).
    ``search.cli.exit_code`` answers it, and the data, model-folder, spec-input and storage errors, with
    one line and exit 2; any other exception, a plain ``ValueError`` included, is a bug and shows its
    traceback. A ``ValueError`` so that callers that caught the plain ``ValueError`` these checks raised
    before keep working.
    """
