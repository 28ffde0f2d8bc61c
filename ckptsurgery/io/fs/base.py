"""The interface every filesystem implements: whole files, byte ranges, listing, renames."""

from __future__ import annotations

from typing import Protocol


class RangeReader(Protocol):
    """A file open for ranged reads (``pread``): no shared position, safe across threads."""

    path: str
    #: An id shared by files where ``copy_file_range`` may work (local: ``st_dev``); None elsewhere.
    device: int | None

    def read(self, offset: int, size: int) -> bytes: ...

    def close(self) -> None: ...


class Writer(Protocol):
    """A file being written from its start, in order (all an object store can do)."""

    path: str

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class FileSystem(Protocol):
    """What ckptsurgery needs of a filesystem; every error is an ``OSError``."""

    #: True where renames are atomic and ``fsync``/``flock``/``fadvise`` exist (local POSIX).
    posix: bool

    def exists(self, path: str) -> bool: ...

    def isdir(self, path: str) -> bool: ...

    def isfile(self, path: str) -> bool: ...

    def listdir(self, path: str) -> list[str]: ...

    def makedirs(self, path: str) -> list[str]:
        """Create ``path`` and its missing parents; returns the folders created, deepest first
        (for :meth:`remove_empty_folders` when the run fails; none on stores without real folders)."""

    def remove_empty_folders(self, paths: list[str]) -> None:
        """Delete each folder, deepest first, stopping at the first one not empty (another file or writer)."""

    def remove(self, path: str) -> None:
        """Delete a file; a missing one is not an error."""

    def rmtree(self, path: str) -> None:
        """Delete a folder and everything in it; errors ignored (cleanup)."""

    def rename(self, src: str, dst: str) -> None:
        """Move a file, replacing ``dst`` (atomic only where :attr:`posix`)."""

    def copy(self, src: str, dst: str) -> None:
        """Copy a file, replacing ``dst`` (server-side where the store can)."""

    def size(self, path: str) -> int: ...

    def mtime(self, path: str) -> float: ...

    def read_bytes(self, path: str, offset: int = 0, size: int = -1) -> bytes:
        """``size`` bytes from ``offset`` (-1: to the end); short at the end of the file."""

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a whole file (on an object store the object appears whole or not at all)."""

    def open_reader(self, path: str) -> RangeReader: ...

    def open_writer(self, path: str) -> Writer: ...
