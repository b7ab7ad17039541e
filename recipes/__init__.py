"""Recipes: YAML files in this folder plus the typed schema that loads them."""

from recipes.config import RecipeError, to_dict
from recipes.schema import Recipe, load_recipe, resolve_recipe_path

__all__ = ["Recipe", "RecipeError", "load_recipe", "resolve_recipe_path", "to_dict"]
