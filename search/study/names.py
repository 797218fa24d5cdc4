"""What a study name may be: a plain file-name component, since it names files and folders.

A study's name becomes ``<studies-dir>/<name>.db``, ``<name>-artifacts/`` and ``<name>/`` (reports, the
exported model), so a name holding a path separator, ``..``, a leading dot or dash, a control character
or a space would write elsewhere than ``--studies-dir``, hide a file, or read as a flag or two words in
the commands printed for the user. Every path made from a name goes through :func:`check_study_name`.
"""

from __future__ import annotations

import argparse

from lungct.errors import UsageError

MAX_LENGTH = 100  # "<name>-artifacts" stays far below the 255 bytes of a file name, in UTF-8 too
PUNCTUATION = "_.-+=@"  # beside letters and digits (any script)


def check_study_name(name: str) -> str:
    """``name`` if it is a plain file-name component, else a one-line ValueError naming ``--study``.

    Letters and digits of any script and ``_ . - + = @``, starting with a letter, a digit or ``_``, at most
    :data:`MAX_LENGTH` characters.

    Raises:
        ValueError: The name is empty, too long, or holds or starts with a character it may not.
    """
    shown = ascii(name)  # control characters, a right-to-left override: escaped, never printed raw
    if not isinstance(name, str) or not name.strip():
        raise UsageError(f"--study: a study name cannot be empty or blank, got {shown}")
    if len(name) > MAX_LENGTH:
        raise UsageError(f"--study: a study name has at most {MAX_LENGTH} characters, got {len(name)}")
    bad = sorted({c for c in name if not (c.isalnum() or c in PUNCTUATION)})
    if bad:
        raise UsageError(f"--study: {shown} holds {', '.join(ascii(c) for c in bad)}; a study name names files "
                         f"and folders, so it is letters, digits and {' '.join(PUNCTUATION)} only")
    if not (name[0].isalnum() or name[0] == "_"):
        raise UsageError(f"--study: {shown} starts with {name[0]!r}; a study name starts with a letter, a digit "
                         "or _ (a leading dot hides its files, a leading dash reads as a flag)")
    return name


def study_name(text: str) -> str:
    """The argparse type of ``--study``: :func:`check_study_name`, its refusal as argparse's own error."""
    try:
        return check_study_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("--study: ")) from None
