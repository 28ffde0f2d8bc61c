"""Every non-local filesystem, through ``tf.io.gfile`` (``gs://``, ``ram://``, ``hdfs://``, ``s3://``...).

TensorFlow's reader, ``SaveV2`` and ``MergeV2Checkpoints`` already work on
any filesystem registered with gfile; this makes ours do the same, with the
same calls for every scheme (so the ``ram://`` test suite covers ``gs://``,
which cannot be reached from the test machine).  Ranged reads are a seek and
a read on a gfile handle (on GCS: one ranged GET).  Renames and copies are
what the store offers: on GCS a server-side copy then a delete, not atomic.
TF's ``OpError`` s become ``OSError`` s here, and the named fault points
``remote-write`` and ``remote-copy`` (see :mod:`ckptsurgery.io.faults`) let
tests make a write or a rename fail half-way.
"""

from __future__ import annotations

import errno
import threading
import uuid
from contextlib import contextmanager

from .. import faults
from .gfile_names import TMP_INFIX
from ..._tf import tf


def registered_schemes() -> frozenset[str]:
    """The URL schemes TensorFlow has a filesystem for now (asked each time: importing tensorflow-io adds some)."""
    return frozenset(tf().io.gfile.get_registered_schemes())


@contextmanager
def _as_oserror(path: str):
    """Turn TensorFlow's ``OpError`` into the ``OSError`` the local code raises."""
    errors = tf().errors
    try:
        yield
    except errors.NotFoundError as exc:
        raise FileNotFoundError(errno.ENOENT, f"not found: {exc.message.splitlines()[0] if exc.message else path}",
                                path) from None
    except errors.AlreadyExistsError as exc:
        raise FileExistsError(errno.EEXIST, exc.message, path) from None
    except errors.PermissionDeniedError as exc:
        raise PermissionError(errno.EACCES, exc.message, path) from None
    except errors.ResourceExhaustedError as exc:
        raise OSError(errno.ENOSPC, exc.message, path) from None
    except errors.OpError as exc:
        raise OSError(errno.EIO, (exc.message or type(exc).__name__).splitlines()[0], path) from None


class GFileReader:
    """A remote file open for ranged reads (a lock makes the shared handle's seek+read one step)."""

    device = None  # never the same device as anything: no copy_file_range

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        with _as_oserror(path):
            self._file = tf().io.gfile.GFile(path, "rb")
            self._file.size()  # fail now (missing file), not at the first read

    def read(self, offset: int, size: int) -> bytes:
        with self._lock, _as_oserror(self.path):
            self._file.seek(offset)
            return self._file.read(size)

    def close(self) -> None:
        with _as_oserror(self.path):
            self._file.close()


class GFileWriter:
    """A remote file written in order; on an object store it appears when closed."""

    def __init__(self, path: str):
        self.path = path
        with _as_oserror(path):
            if tf().io.gfile.exists(path):
                tf().io.gfile.remove(path)  # some stores (ram://) append to an existing file opened "wb"
            self._file = tf().io.gfile.GFile(path, "wb")

    def write(self, data: bytes) -> None:
        faults.at("remote-write")
        with _as_oserror(self.path):
            self._file.write(data)

    def close(self) -> None:
        with _as_oserror(self.path):
            self._file.close()


class GFileFS:
    """``tf.io.gfile`` for any scheme TensorFlow has registered."""

    posix = False

    @property
    def _g(self):
        return tf().io.gfile

    def exists(self, path: str) -> bool:
        with _as_oserror(path):
            return self._g.exists(path)

    def isdir(self, path: str) -> bool:
        with _as_oserror(path):
            if not self._g.isdir(path):
                return False
            # ram:// calls any string prefix of a file name a folder ("x/ckpt" when "x/ckpt.index"
            # exists): a folder must also be listed in its parent (GCS lists it as "name/").
            head, _, name = path.rstrip("/").rpartition("/")
            if head.endswith(":/") or not name:
                return True  # a bucket or the store's root
            try:
                return name in {n.rstrip("/") for n in self._g.listdir(head)}
            except tf().errors.OpError:
                return True

    def isfile(self, path: str) -> bool:
        # stat, not exists/isdir: some stores (ram://) call any prefix of a file name a folder.
        try:
            with _as_oserror(path):
                return not self._g.stat(path).is_directory
        except OSError:
            return False

    def listdir(self, path: str) -> list[str]:
        with _as_oserror(path):
            return [n.rstrip("/") for n in self._g.listdir(path)]

    def makedirs(self, path: str) -> list[str]:
        with _as_oserror(path):
            self._g.makedirs(path)
        return []  # object stores: a "folder" is a name prefix, gone with its last object

    def remove_empty_folders(self, paths: list[str]) -> None:
        pass

    def remove(self, path: str) -> None:
        try:
            with _as_oserror(path):
                self._g.remove(path)
        except FileNotFoundError:
            pass

    def rmtree(self, path: str) -> None:
        try:
            with _as_oserror(path):
                self._g.rmtree(path)
        except OSError:
            pass

    def rename(self, src: str, dst: str) -> None:
        faults.at("remote-copy")
        with _as_oserror(src):
            self._g.rename(src, dst, overwrite=True)

    def copy(self, src: str, dst: str) -> None:
        faults.at("remote-copy")
        with _as_oserror(src):
            if self._g.exists(dst):
                self._g.remove(dst)  # ram:// appends to an existing target
            self._g.copy(src, dst, overwrite=True)

    def size(self, path: str) -> int:
        with _as_oserror(path):
            return int(self._g.stat(path).length)

    def mtime(self, path: str) -> float:
        with _as_oserror(path):
            return self._g.stat(path).mtime_nsec / 1e9

    def read_bytes(self, path: str, offset: int = 0, size: int = -1) -> bytes:
        with _as_oserror(path), self._g.GFile(path, "rb") as f:
            if offset:
                f.seek(offset)
            return f.read(size)

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a small file whole, replacing any old one in one step: a temp object, then a rename
        over the target (on GCS a copy, which replaces the object atomically; readers see old or new)."""
        tmp = f"{path}{TMP_INFIX}{uuid.uuid4().hex[:8]}"
        writer = GFileWriter(tmp)
        try:
            writer.write(data)
            writer.close()
            with _as_oserror(path):
                self._g.rename(tmp, path, overwrite=True)
        except BaseException:
            self.remove(tmp)
            raise

    def open_reader(self, path: str) -> GFileReader:
        return GFileReader(path)

    def open_writer(self, path: str) -> GFileWriter:
        return GFileWriter(path)


GFILE = GFileFS()
