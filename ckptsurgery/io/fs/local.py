"""Local POSIX files: plain ``os`` calls, as ckptsurgery always did."""

from __future__ import annotations

import os
import shutil


class LocalReader:
    """A local file open for ``pread``; ``device`` lets the byte copier use ``copy_file_range``."""

    def __init__(self, path: str):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            self.device: int | None = os.fstat(self.fd).st_dev
        except OSError:
            os.close(self.fd)
            raise

    def read(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class LocalWriter:
    def __init__(self, path: str):
        self.path = path
        self._file = open(path, "wb")

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def close(self) -> None:
        self._file.close()


class LocalFS:
    """Today's code path: every operation is the ``os`` call it always was."""

    posix = True

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def isfile(self, path: str) -> bool:
        return os.path.isfile(path)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def makedirs(self, path: str) -> list[str]:
        missing = []
        folder = os.path.abspath(path)
        while not os.path.exists(folder) and folder != os.path.dirname(folder):
            missing.append(folder)
            folder = os.path.dirname(folder)
        os.makedirs(path, exist_ok=True)
        return missing

    def remove_empty_folders(self, paths: list[str]) -> None:
        for folder in paths:
            try:
                os.rmdir(folder)  # only ever an empty folder
            except OSError:
                return

    def remove(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def rmtree(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def rename(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def copy(self, src: str, dst: str) -> None:
        shutil.copyfile(src, dst)

    def size(self, path: str) -> int:
        return os.stat(path).st_size

    def mtime(self, path: str) -> float:
        return os.stat(path).st_mtime

    def read_bytes(self, path: str, offset: int = 0, size: int = -1) -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def write_bytes(self, path: str, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data)

    def open_reader(self, path: str) -> LocalReader:
        return LocalReader(path)

    def open_writer(self, path: str) -> LocalWriter:
        return LocalWriter(path)


LOCAL = LocalFS()
