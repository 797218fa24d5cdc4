"""``lungct-nas <command> [flags]`` (or ``python -m search <command>``): every command of the tool under one name.

Each command is its module's own ``main(argv)``: ``lungct-nas run --trials 50`` is ``python -m search.run
--trials 50``, with the same flags, defaults, messages and exit codes (both forms keep working). The
command's module is imported only when it runs, so ``lungct-nas --help`` answers at once.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from importlib.metadata import PackageNotFoundError, version

PROG = "lungct-nas"

# name -> (module whose main(argv) runs it, one line for --help)
COMMANDS = {
    "run": ("search.run", "search architectures in an Optuna study, then confirm the best against the seed baseline"),
    "report": ("search.report", "write a study's offline HTML report (confirmation, test part, importance, Pareto)"),
    "export": ("search.export", "retrain the recommendation and the baseline, test both once, write the model folder"),
    "predict": ("search.predict", "predict scans with a model folder: P, class, routing decision, saliency"),
    "ablate": ("search.ablate", "the seed baseline against the course's six modifications, repeated cross-validation"),
    "phantom": ("lungct.phantom.cli", "generate a synthetic phantom data set in MosMedData's layout"),
    "inspect": ("lungct.inspect", "what a data set holds, and which files would be skipped and why"),
    "download": ("lungct.download", "fetch the Keras tutorial's MosMedData archives"),
}


def usage() -> str:
    """The command list, one line each."""
    width = max(map(len, COMMANDS))
    lines = [f"usage: {PROG} <command> [flags]   ({PROG} <command> --help for a command's flags and defaults)", "",
             "Architecture search for 3D CNNs that classify chest CT scans (MosMedData, COVID-19 severity).", "",
             "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    modules = ", ".join(m.removesuffix(".cli") for m, _ in COMMANDS.values())
    lines += ["", f"Each command is also python -m <module> ({modules}).",
              "Exit codes: 0 done, 1 failed, 2 bad input (one line), 130 Ctrl-C, 143 SIGTERM; "
              "LUNGCT_DEBUG=1 shows every error's traceback."]
    return "\n".join(lines)


def _version() -> str:
    try:
        return version("lungct-nas")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    """Run ``argv[0]``'s command with the rest of ``argv``; its exit code is the dispatcher's."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    name, rest = argv[0], argv[1:]
    if name in ("-h", "--help"):
        print(usage())
        return 0
    if name == "--version":
        print(f"{PROG} {_version()}")
        return 0
    if name not in COMMANDS:
        near = difflib.get_close_matches(name, COMMANDS, n=1)
        hint = f" (did you mean {near[0]}?)" if near else ""
        print(f"{PROG}: error: unknown command {name!r}{hint}; commands: {', '.join(COMMANDS)} "
              f"(see {PROG} --help)", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
