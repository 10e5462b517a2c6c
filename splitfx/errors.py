"""Exceptions raised by splitfx. Every message says which model/module failed and what to do."""


class SplitFXError(Exception):
    """Base class for all splitfx errors."""


class TraceError(SplitFXError):
    """The model could not be traced by torch.fx."""


class PlanError(SplitFXError):
    """No split plan satisfies the request (too many blocks, illegal split point, ...)."""
