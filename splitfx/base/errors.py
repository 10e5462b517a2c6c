"""Exceptions raised by splitfx. Every message says which model/module failed and what to do."""
from __future__ import annotations

import re


class SplitFXError(Exception):
    """Base class for all splitfx errors."""


class ArgumentError(SplitFXError, ValueError):
    """An argument has a value splitfx cannot use (the message names the argument and what to pass)."""


class ArgumentTypeError(SplitFXError, TypeError):
    """An argument has a type splitfx cannot use (a str where a list is expected, a numpy array, ...)."""


class CheckpointError(SplitFXError):
    """A file is missing, truncated, damaged or not a checkpoint written by ``splitfx train``, does not
    fit the model or data it would resume, or cannot be written (a full disk)."""


class NoGradientError(SplitFXError, RuntimeError):
    """A training step's loss reaches no trainable parameter (what torch reports as "does not require grad")."""


class TraceError(SplitFXError):
    """The model could not be traced by torch.fx."""


class PlanError(SplitFXError):
    """No split plan satisfies the request (too many blocks, illegal split point, ...).

    ``max_blocks`` is set when the request asked for more blocks than the model has cuts for."""

    def __init__(self, message: str, max_blocks: int | None = None):
        super().__init__(message)
        self.max_blocks = max_blocks


def one_line(err: BaseException) -> str:
    """The whole message on one line (for the command line's ``splitfx: error: ...``)."""
    return " ".join(line.strip() for line in str(err).splitlines() if line.strip()) or type(err).__name__


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def plain(text: str) -> str:
    """``text`` without terminal colour codes (torch.onnx colours its messages)."""
    return _ANSI.sub("", text)


def first_line(err: BaseException, limit: int = 300) -> str:
    """``Type: message`` cut to its first non-empty line: a reason that fits in a table cell."""
    lines = [line for line in plain(f"{type(err).__name__}: {err}").splitlines() if line.strip()]
    return lines[0][:limit] if lines else type(err).__name__


class DistributedError(SplitFXError):
    """A multi-process run cannot start (bad world size, stages, plans that differ across ranks) or a
    peer stopped answering (the message names the rank)."""
