"""`python -m space`: the seed baseline and the course's six modifications, with their costs."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from space.baseline import fit_to_size, same_padding, variants
from space.build import Size, SpecInputError
from space.cost import cost, count_keras_params, count_params
from space.spec import PADDINGS

# The seed's input: Keras's 128x128x64 (width, height, depth) volume, as (D, H, W).
DEFAULT_SIZE: Size = (64, 128, 128)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # A bad flag is expected input: one line, not a usage block.
        self.exit(2, f"{self.prog}: error: {message}\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    parser = _Parser(
        prog="python -m space",
        description="Print parameters and forward GFLOPs per sample of the seed baseline and the "
        "course's six modifications.",
    )
    parser.add_argument(
        "--size",
        nargs=3,
        type=_positive_int,
        metavar=("D", "H", "W"),
        default=DEFAULT_SIZE,
        help=f"input volume size, depth first (default: {' '.join(map(str, DEFAULT_SIZE))}, the seed's "
        "128x128x64 scans)",
    )
    parser.add_argument(
        "--padding",
        choices=PADDINGS,
        default="valid",
        help="convolution padding of every variant (default: %(default)s, as the seed)",
    )
    return parser


def format_table(size: Size, padding: str = "valid") -> str:
    """Return the cost table of the baseline and its six modifications at an input size.

    As in the search, a 'valid' variant whose maps vanish at `size` is costed with 'same' padding and
    its row says why; a variant that cannot run even then shows its parameter counts and the reason.

    Args:
        size: Input (D, H, W).
        padding: Padding of every variant before any fallback.
    """
    base = variants()["baseline"]
    base = same_padding(base) if padding == "same" else base
    lines = [
        f"Seed baseline and the course's modifications at input {'x'.join(map(str, size))} (D x H x W), "
        f"'{padding}' padding",
        f"{'variant':<20}{'params':>12}{'Keras params':>15}{'GFLOPs/sample':>15}",
    ]
    for name, spec in variants(base).items():
        counts = f"{name:<20}{count_params(spec):>12,}{count_keras_params(spec):>15,}"
        try:
            fitted, reason = fit_to_size(spec, size)
        except SpecInputError as error:
            lines.append(f"{counts}{'-':>15}   cannot run: {error}")
            continue
        note = f"   {reason}" if reason else ""
        lines.append(f"{counts}{cost(fitted, size).gflops:>15.2f}{note}")
    lines += [
        "params: trainable (PyTorch's count); Keras params: plus BatchNorm moving mean and variance,",
        "which Keras counts as non-trainable. GFLOPs: forward pass of one sample, convolutions and dense",
        "layers, 2 FLOPs per multiply-accumulate (torch.utils.flop_counter).",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the cost table; return the exit status.

    Args:
        argv: Command-line arguments without the program name; None reads `sys.argv`.
    """
    args = build_parser().parse_args(argv)
    print(format_table(tuple(args.size), args.padding))
    return 0


if __name__ == "__main__":
    sys.exit(main())
