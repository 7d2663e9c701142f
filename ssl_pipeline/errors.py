"""Errors every layer of the MLOps edge may raise; the CLI turns them into one sentence and a hint."""
from __future__ import annotations

import contextlib
from typing import Iterator

from ssl_core.recipes import RecipeError


class ConfigError(ValueError):
    """A params.yaml (or --set) value is wrong; the message names the key."""


class StageError(RuntimeError):
    """A stage cannot do its work; the message says why and what to do."""


@contextlib.contextmanager
def recipe_errors_as_stage_errors() -> Iterator[None]:
    """The training core says what cannot work (RecipeError, naming the knob); a stage reports it."""
    try:
        yield
    except RecipeError as err:
        raise StageError(str(err)) from None
