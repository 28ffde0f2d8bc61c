"""What a recipe asks for: one API command and its arguments.

The recipe front end parses and checks a YAML recipe into a :class:`RecipeCall`;
:func:`ckptsurgery.api.run_recipe` makes the call.  So recipes only describe,
the API is the one place that runs a command, and neither imports the other
back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Command = Literal["edit", "transfer", "average", "merge"]


@dataclass(frozen=True)
class RecipeCall:
    """``api.<command>(*args, dry_run=..., **kwargs)``, and where a transfer writes its report."""

    command: Command
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    report_path: str | None = None
