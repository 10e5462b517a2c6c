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

from ..base.choices import registering
from ..base.errors import ArgumentError
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
        return registering(_REGISTRY, name, "recipe", named=True)(cls)

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


def recipe_class(name: str) -> type[Recipe]:
    """The class registered as ``name`` (its ``traits`` read without making an instance)."""
    _load_entry_points()
    return _REGISTRY[name]


def describe_options(recipe: str | type[Recipe]) -> str:
    """``lambda1 (default (5.0, 0.0)), ...`` for messages; "no options" when it takes none."""
    cls = recipe if isinstance(recipe, type) else _REGISTRY[recipe]
    defaults = cls.option_defaults()
    return ", ".join(f"{k} (default {v!r})" for k, v in defaults.items()) or "no options"


def create_recipe(recipe: str | Recipe, **options: Any) -> Recipe:
    """A recipe instance from its registered name and options (or the instance itself).

    An option the recipe does not take, or a value it refuses, is an :class:`ArgumentError` (a
    ``ValueError``) naming the recipe and the options it accepts."""
    if isinstance(recipe, Recipe):
        if options:
            raise TypeError("options are given with a recipe name, not with a recipe instance")
        return recipe
    _load_entry_points()
    if recipe not in _REGISTRY:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {list_recipes()} or register your own "
                         "with @splitfx.register_recipe")
    cls = _REGISTRY[recipe]
    unknown = sorted(set(options) - set(cls.option_defaults()))
    if unknown:
        raise ArgumentError(f"recipe {recipe!r} has no option {', '.join(map(repr, unknown))}; it accepts: "
                            f"{describe_options(cls)}")
    try:
        return cls(**options)
    except (TypeError, ValueError) as err:
        if isinstance(err, ArgumentError):
            raise
        raise ArgumentError(f"recipe {recipe!r}: {err} (its options: {describe_options(cls)})") from err
