"""``bit recipes``: list the recipes, or print one fully."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from ..engine.config import dump
    from ..recipes import list_recipes, load_recipe

    if args.name:
        print(dump(load_recipe(args.name)), end="")
        return 0
    recipes = list_recipes()
    width = max(map(len, recipes))
    for name, desc in recipes.items():
        print(f"{name.ljust(width)}  {desc}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recipes", help="list training recipes, or show one with every setting")
    p.add_argument("name", nargs="?", help="show this recipe with the defaults filled in")
    p.set_defaults(func=run)
