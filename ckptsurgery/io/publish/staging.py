"""Staging folders: marked, beside the destination, removed (after a roll-back) when a run ends."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from .journal import roll_back, ROLLBACK_FAILED
from .liveness import owner_record
from ..fs import basename, is_remote
from ...errors import OutputError


STAGING_PREFIX = ".ckptsurgery-staging-"


MARKER = "CKPTSURGERY_STAGING"


class Staging:
    """A marked staging folder beside the destination prefix."""

    def __init__(self, dest_prefix: str):
        if is_remote(dest_prefix):
            # No atomic renames there: build locally, upload once (see :mod:`.remote`).
            self.dest_prefix = dest_prefix
            self.path = Path(tempfile.gettempdir()) / f"{STAGING_PREFIX}{basename(dest_prefix)}-{uuid.uuid4().hex[:8]}"
            return
        dest = Path(dest_prefix)
        self.dest_prefix = str(dest)
        self.path = dest.parent / f"{STAGING_PREFIX}{dest.name}-{uuid.uuid4().hex[:8]}"

    def create(self) -> "Staging":
        try:
            self.path.mkdir()
            (self.path / MARKER).write_text(json.dumps(
                {**owner_record(), "created": time.time(), "destination": self.dest_prefix}
            ))
        except OSError as exc:
            shutil.rmtree(self.path, ignore_errors=True)
            raise OutputError(f"{self.path.parent}: cannot create staging folder: {exc.strerror}") from None
        return self

    def group_prefix(self, index: int) -> str:
        return str(self.path / f"group-{index:05d}" / "part")

    @property
    def merged_prefix(self) -> str:
        return str(self.path / "merged" / basename(self.dest_prefix))

    def remove(self) -> None:
        """Discard the staging folder; if a publish had begun and not committed,
        first put the previous checkpoint back (never delete a user's checkpoint)."""
        if not self.path.exists():
            return
        if roll_back(self.path) is ROLLBACK_FAILED:
            return  # keep previous/ on disk; `ckptsurgery clean` retries
        shutil.rmtree(self.path, ignore_errors=True)


def is_our_staging(folder: Path) -> bool:
    return folder.is_dir() and folder.name.startswith(STAGING_PREFIX) and (folder / MARKER).is_file()


def staging_owner(entry: Path) -> tuple[dict, int, str | None]:
    try:
        marker = json.loads((entry / MARKER).read_text())
        if not isinstance(marker, dict):
            marker = {}
    except (OSError, ValueError, UnicodeDecodeError):
        marker = {}
    try:
        pid = int(marker.get("pid", 0))
    except (TypeError, ValueError):
        pid = 0
    start = marker.get("start")
    return marker, pid, start if isinstance(start, str) else None
