"""The one progress bar (bytes, on stderr), shared by writing, diff and verify."""

from __future__ import annotations

import sys

from .display import display_name


def progress_bar(total: int, enabled: bool | None, desc: str):
    """A tqdm bar in bytes; ``enabled=None`` means: only when stderr is a terminal."""
    from tqdm import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc=display_name(desc), disable=not enabled,
                dynamic_ncols=True, leave=False)
