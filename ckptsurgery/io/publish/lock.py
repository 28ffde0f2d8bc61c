"""The destination lock: one run at a time writes a destination; a dead run's lock is taken over."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from .liveness import owner_record, pid_alive
from ...errors import OutputError


LOCK_SUFFIX = ".ckptsurgery-lock"


class DestinationLock:
    """An exclusive lock file beside the destination prefix.

    Two runs writing one destination would otherwise race at publish time;
    the second one fails at once with a clear message instead.  A lock left
    by a dead process (SIGKILL) is taken over.  The file holds ``PID`` or
    ``PID START`` (START tells a reused pid from its original owner).
    """

    _held_here: set[str] = set()  # lock paths held by this process (any thread)

    def __init__(self, prefix: str):
        self.path = Path(prefix + LOCK_SUFFIX)
        self._held = False

    @staticmethod
    def read_owner(path: Path) -> tuple[int, str | None]:
        try:
            parts = path.read_text().split()
            return int(parts[0]) if parts else 0, (parts[1] if len(parts) > 1 else None)
        except (OSError, ValueError, UnicodeDecodeError):
            return 0, None

    def acquire(self) -> None:
        key = str(self.path.absolute())
        for _ in range(3):
            try:
                self._create()
            except FileExistsError:
                owner, start = self.read_owner(self.path)
                if owner == os.getpid() and key in self._held_here:
                    raise OutputError(
                        f"{self.path.with_suffix('')}: another ckptsurgery writer in this process is writing this destination"
                    ) from None
                if owner and owner != os.getpid() and pid_alive(owner, start):
                    raise OutputError(
                        f"{self.path.with_suffix('')}: another ckptsurgery run (pid {owner}) is writing this destination"
                    ) from None
                self._unlink_stale()  # its owner died (or the file is not a lock we can read)
                continue
            except OSError as exc:
                raise OutputError(f"{self.path.parent}: cannot write destination lock: {exc.strerror}") from None
            self._held = True
            self._held_here.add(key)
            return
        raise OutputError(f"{self.path.with_suffix('')}: could not take the destination lock (another run keeps taking it)")

    def _create(self) -> None:
        """Create the lock file with its content in one step: write a temp file,
        then hard-link it to the lock name (fails if the lock exists)."""
        rec = owner_record()
        text = f"{rec['pid']} {rec['start']}" if rec["start"] else str(rec["pid"])
        tmp = self.path.with_name(f"{self.path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            tmp.write_text(text)
            try:
                os.link(tmp, self.path)
                return
            except FileExistsError:
                raise
            except OSError:  # a filesystem without hard links
                pass
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        finally:
            tmp.unlink(missing_ok=True)

    def _unlink_stale(self) -> None:
        """Remove a dead owner's lock, atomically: rename it aside first, so two
        runs taking over the same stale lock cannot both remove a fresh one."""
        aside = self.path.with_name(f"{self.path.name}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        except OSError:
            return
        owner, start = self.read_owner(aside)
        if owner and owner != os.getpid() and pid_alive(owner, start):
            # Lost a race: a live run re-created the lock just now; put it back.
            try:
                os.link(aside, self.path)
            except OSError:
                pass
        aside.unlink(missing_ok=True)

    def release(self) -> None:
        if self._held:
            self.path.unlink(missing_ok=True)
            self._held = False
            self._held_here.discard(str(self.path.absolute()))

    def __enter__(self) -> "DestinationLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
