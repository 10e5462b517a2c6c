"""Named choices and named extensions: the two ways splitfx names things a user picks or adds.

:class:`Choice` is an enum whose members compare equal to their names and print as them (timm's
``Format(str, Enum)``): layouts, balancing methods, stage balances, merge kinds. :func:`registering`
adds recipes, pipeline schedules and cut rules to their tables, refusing a name another one took.
"""
from __future__ import annotations

from collections.abc import Callable
from enum import Enum
from typing import TypeVar

T = TypeVar("T")


class Choice(str, Enum):
    """An option with a fixed set of names: ``Layout.NCHW == "NCHW"``, and ``str()`` gives the name."""

    def __str__(self) -> str:
        return self.value


def registering(table: dict[str, T], name: str, kind: str, named: bool = False) -> Callable[[T], T]:
    """A decorator putting what it decorates into ``table`` under ``name`` (and, ``named``, setting its
    ``name`` attribute to it). The same class or function again (a module imported twice: same module
    and qualified name) replaces itself; another one under a taken name is refused."""
    def add(item: T) -> T:
        known = table.get(name)
        if known is not None and (known.__module__, known.__qualname__) != (item.__module__, item.__qualname__):
            raise ValueError(f"{kind} {name!r} is already registered by {known.__module__}.{known.__qualname__}")
        if named:
            item.name = name
        table[name] = item
        return item

    return add
