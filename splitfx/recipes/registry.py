"""The recipe registry, like timm's model registry: recipes register themselves by name.

    @splitfx.register_recipe("mine")
    class Mine(splitfx.Recipe): ...

    splitfx.convert(model, x, recipe="mine")                  # or recipe=splitfx.recipe("mine", lr=...)

Built-in recipes register when :mod:`splitfx.recipes` is imported. Recipes of installed packages
register through the ``splitfx.recipes`` entry-point group (``name = "package.module:Class"``), so
the command line lists and accepts them too.
"""
from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, TypeVar

from .base import Recipe

R = TypeVar("R", bound=type[Recipe])

ENTRY_POINT_GROUP = "splitfx.recipes"
_REGISTRY: dict[str, type[Recipe]] = {}
_entry_points_loaded = False


def register_recipe(name: str) -> Callable[[R], R]:
    """Class decorator: make a :class:`Recipe` subclass available as ``recipe=name``."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"recipe name must be an identifier such as 'my_recipe', got {name!r}")

    def decorate(cls: R) -> R:
        if not (isinstance(cls, type) and issubclass(cls, Recipe)):
            raise TypeError(f"@register_recipe({name!r}) decorates a subclass of splitfx.Recipe, got {cls!r}")
        known = _REGISTRY.get(name)
        if known is not None and known.__qualname__ != cls.__qualname__:
            raise ValueError(f"recipe {name!r} is already registered by {known.__module__}.{known.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()
        if ep.name not in _REGISTRY:
            register_recipe(ep.name)(cls)


def list_recipes() -> list[str]:
    """Names of every registered recipe, sorted."""
    _load_entry_points()
    return sorted(_REGISTRY)


def create_recipe(recipe: str | Recipe, **options: Any) -> Recipe:
    """A recipe instance from its registered name and options (or the instance itself)."""
    if isinstance(recipe, Recipe):
        if options:
            raise TypeError("options are given with a recipe name, not with a recipe instance")
        return recipe
    _load_entry_points()
    if recipe not in _REGISTRY:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {list_recipes()} or register your own "
                         "with @splitfx.register_recipe")
    return _REGISTRY[recipe](**options)
