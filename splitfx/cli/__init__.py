"""The ``splitfx`` command line: ``splitfx COMMAND --help`` explains every option."""
from __future__ import annotations

import sys
from collections.abc import Sequence

from ..base.errors import SplitFXError
from .parser import build_parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; an expected failure prints one line and returns 2."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SplitFXError as err:
        print(f"splitfx: error: {err}", file=sys.stderr)
        return 2


__all__ = ["build_parser", "main"]
