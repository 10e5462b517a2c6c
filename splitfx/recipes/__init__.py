"""Local-learning recipes, selected by name in ``convert(..., recipe=...)`` and on the CLI."""
from __future__ import annotations

from .auglocal import AugLocal
from .base import Boundary, GraphInfo, Recipe
from .cascade import HPFF, MLAAN
from .dgl import DGL
from .infopro import InfoPro, InfoProSupCon
from .man import MAN
from .simple import E2E, Linear

RECIPES: dict[str, type[Recipe]] = {
    cls.name: cls for cls in (E2E, Linear, DGL, InfoPro, InfoProSupCon, AugLocal, MAN, HPFF, MLAAN)
}


def get_recipe(recipe: str | Recipe) -> Recipe:
    """A recipe instance from its name (or the instance itself)."""
    if isinstance(recipe, Recipe):
        return recipe
    try:
        return RECIPES[recipe]()
    except KeyError:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}") from None


__all__ = ["Boundary", "GraphInfo", "Recipe", "RECIPES", "get_recipe"]
