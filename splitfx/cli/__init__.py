"""The ``splitfx`` command line: ``splitfx COMMAND --help`` explains every option.

The error boundary is :func:`main`: every expected failure (a bad argument, file, model name or
device; a model splitfx cannot trace or split; a file it cannot write) is one line
``splitfx: error: ...`` on stderr and exit status 2. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import sys
from collections.abc import Sequence

from ..base.errors import SplitFXError, one_line
from .parser import build_parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; an expected failure prints one line and returns 2."""
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except SplitFXError as err:
        print(f"splitfx: error: {one_line(err)}", file=sys.stderr)
    except OSError as err:
        if err.filename is None:  # not about a file: unexpected
            raise
        print(f"splitfx: error: {err.filename}: {err.strerror or err}", file=sys.stderr)
    except KeyboardInterrupt:
        print("splitfx: interrupted (files written so far are whole: writes are atomic)", file=sys.stderr)
        return 130
    return 2


__all__ = ["build_parser", "main"]
