"""Command-line arguments shared by several commands: argparse types and flags.

`python -m libraries` (see `__main__`) builds one sub-command per module; the flags that mean
the same in several of them are defined once here.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable

from libraries.config import PRECISIONS


def add_precision_argument(parser: Any) -> None:
    """The `--precision` flag of the commands that run the network (an argparse parser)."""
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="override the config's precision: float32 (the authors' numbers), mixed_bfloat16 "
                             "(CPUs with AMX or AVX512-BF16, recent GPUs) or mixed_float16 (GPUs)")


def integer_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse `type`: an integer flag below `minimum` is a usage error naming the flag."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"  # argparse names the type in its message
    return parse

