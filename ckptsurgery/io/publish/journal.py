"""The publish journal and the roll-back it makes possible (see the package doc, steps 0-3)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path



JOURNAL = "PUBLISH.json"


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_durably(path: Path, obj: dict, fsync: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        fsync_path(path.parent)


ROLLBACK_FAILED = "failed"


@dataclass
class RollBack:
    """What :func:`roll_back` did to a destination."""

    destination: str
    committed: bool  # the dead run had published: nothing to undo
    removed: list[str]  # new data shards the run had moved in, now removed
    restored: list[str]  # previous checkpoint files moved back

    @property
    def changed(self) -> bool:
        return bool(self.removed or self.restored)


def read_journal(staging_path: Path) -> dict | None:
    try:
        journal = json.loads((staging_path / JOURNAL).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(journal, dict) or not isinstance(journal.get("destination"), str):
        return None
    return journal


def _plain_names(value) -> list[str]:
    """Journal file names, refusing anything that is not a bare file name."""
    if not isinstance(value, list):
        return []
    return [n for n in value if isinstance(n, str) and n and "/" not in n and n not in (".", "..")]


def roll_back(staging_path: str | os.PathLike) -> RollBack | str | None:
    """Undo an unfinished publish recorded in ``staging_path``'s journal.

    Returns None when no publish had started (the destination was never
    touched), a :class:`RollBack` otherwise, or ``ROLLBACK_FAILED`` when the
    previous checkpoint could not be put back (it is then left in
    ``previous/``).  Idempotent: safe to call again after a crash in here.
    """
    staging_path = Path(staging_path)
    journal = read_journal(staging_path)
    if journal is None:
        return None
    dest = Path(journal["destination"])
    folder = dest.parent
    try:
        if folder.resolve() != staging_path.parent.resolve():
            return ROLLBACK_FAILED  # a journal naming another folder is not ours to act on
    except OSError:
        return ROLLBACK_FAILED
    merged = staging_path / "merged"
    new_index = journal.get("new_index")
    if not (isinstance(new_index, str) and _plain_names([new_index])):
        new_index = dest.name + ".index"
    dest_index = folder / (dest.name + ".index")
    result = RollBack(str(dest), False, [], [])
    if not (merged / new_index).exists() and dest_index.exists():
        result.committed = True  # the new index is in place: the new checkpoint is whole
        return result
    previous = staging_path / "previous"
    try:
        for name in _plain_names(journal.get("new_data")):
            # Moved in by the run iff it has left the staging folder: all previous files left
            # the destination before any new one arrived, so a same-named file still at the
            # destination while the new one is staged belongs to the previous checkpoint.
            # Moved back (not deleted), so a second roll-back (after a crash in this one, or
            # the abort after an in-process one) never mistakes a restored previous file for it.
            if not (merged / name).exists() and (folder / name).is_file():
                os.replace(folder / name, merged / name)
                result.removed.append(str(folder / name))
        if previous.is_dir():
            files = sorted(previous.iterdir(), key=lambda f: (f.name.endswith(".index"), f.name))  # index last
            for f in files:
                target = folder / f.name
                if target.exists():
                    continue  # never overwrite; left in previous/
                os.replace(f, target)
                result.restored.append(str(target))
        if result.changed:
            try:
                fsync_path(folder)
            except OSError:
                pass
    except OSError:
        return ROLLBACK_FAILED
    if previous.is_dir() and any(previous.iterdir()):
        return ROLLBACK_FAILED
    (staging_path / JOURNAL).unlink(missing_ok=True)  # done: the destination is as it was
    return result
