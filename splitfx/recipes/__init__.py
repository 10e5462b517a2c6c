"""Local-learning recipes, selected by name in ``convert(..., recipe=...)``."""
from __future__ import annotations

from .base import Boundary, Recipe
from .linear import Linear

RECIPES: dict[str, type[Recipe]] = {cls.name: cls for cls in (Linear,)}


def get_recipe(recipe: str | Recipe) -> Recipe:
    """A recipe instance from its name (or the instance itself)."""
    if isinstance(recipe, Recipe):
        return recipe
    try:
        return RECIPES[recipe]()
    except KeyError:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}") from None


__all__ = ["Boundary", "Recipe", "RECIPES", "get_recipe"]
