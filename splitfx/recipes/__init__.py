"""Local-learning recipes, selected by name in ``convert(..., recipe=...)`` and on the CLI.

Importing this package registers the built-in recipes (each module registers its own)."""
from __future__ import annotations

from . import auglocal, dgl, ffr, glcan, hpff, infopro, man, mlaan, simple, tandem  # noqa: F401  (they register themselves)
from .base import Boundary, GraphInfo, Held, LossFn, Recipe, RecipeTraits, SplitParts
from .registry import create_recipe, list_recipes, register_recipe

__all__ = ["Boundary", "GraphInfo", "Held", "LossFn", "Recipe", "RecipeTraits", "SplitParts", "create_recipe",
           "list_recipes", "register_recipe"]
