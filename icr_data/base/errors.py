"""The one base class of every error a user can cause and fix (a bad recipe, file, option or model).

The CLI turns any `IcrError` into one line on stderr naming what is wrong, and exits 2; anything
else is a bug and keeps its traceback. Each module defines its own subclass (RecipeError,
PromptError, ModelError, StoreError, ...), so callers can still catch the narrow kind.
"""

from __future__ import annotations


class IcrError(ValueError):
    """A user-fixable failure; the message names the row, file or option at fault."""
