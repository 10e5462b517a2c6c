"""Module paths: the ``model.`` prefix of bound graphs and the inside-a-module test."""
from __future__ import annotations

PREFIX = "model."


def unprefix(target: str) -> str:
    """A bound graph's target as a path inside the user's model."""
    return target[len(PREFIX):] if target.startswith(PREFIX) else target


def inside(scope: str, module: str) -> bool:
    """Whether module path ``scope`` is ``module`` or one of its submodules ("" is the root)."""
    return module == "" or scope == module or scope.startswith(module + ".")
