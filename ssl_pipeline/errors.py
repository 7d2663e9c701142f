"""Errors every layer of the MLOps edge may raise; the CLI turns them into one sentence and a hint."""
from __future__ import annotations

import contextlib
from typing import Iterator

from ssl_core.recipes import RecipeError


class ConfigError(ValueError):
    """A params.yaml (or --set) value is wrong; the message names the key."""


class StageError(RuntimeError):
    """A stage cannot do its work; the message says why and what to do."""


def with_hint(err: Exception, hint: str) -> Exception:
    """Attach the hint the CLI prints under this error (one that fits the command that failed)."""
    err.hint = hint   # type: ignore[attr-defined]
    return err


@contextlib.contextmanager
def recipe_errors_as_stage_errors() -> Iterator[None]:
    """The training core says what cannot work (RecipeError, naming the knob); a stage reports it."""
    try:
        yield
    except RecipeError as err:
        raise StageError(str(err)) from None
