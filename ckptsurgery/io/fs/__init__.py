"""Where checkpoint files live: a local POSIX folder, or any filesystem TensorFlow knows (``gs://``, ``ram://``...).

Every path a command takes may be a URL.  This package is the one place that
tells them apart and the one door to their files: :func:`filesystem` returns
:data:`LOCAL` (today's code: ``os``, renames, ``fsync``, ``fadvise``,
``copy_file_range`` stay possible) for a plain path or ``file:///x``, and a
:class:`~.gfile.GFileFS` (``tf.io.gfile``) for every other scheme.  TensorFlow
is imported only when a non-local path is actually used.

Both implement :class:`~.base.FileSystem`; errors come out as ``OSError``
(``FileNotFoundError`` for a missing file) whatever the filesystem, so the
code above does not care which one it talks to.  The layer only moves bytes:
what is atomic where (a local rename, an object write) is the publisher's
business (:mod:`ckptsurgery.io.publish.remote`).
"""

from __future__ import annotations

import os
import posixpath
import re

from .base import FileSystem, RangeReader
from .local import LOCAL

__all__ = ["FileSystem", "RangeReader", "LOCAL", "filesystem", "is_remote", "normalize", "join", "dirname",
           "basename"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def normalize(path: str | os.PathLike) -> str:
    """The path as this package uses it: ``file:///x`` is the plain path ``/x``; anything else unchanged."""
    text = os.fspath(path)
    if text.startswith("file://"):
        return text[len("file://"):] or "/"
    return text


def is_remote(path: str | os.PathLike) -> bool:
    """Does ``path`` name a file on a non-local filesystem (a URL other than ``file://``)?"""
    text = os.fspath(path)
    return bool(_SCHEME.match(text)) and not text.startswith("file://")


def filesystem(path: str | os.PathLike) -> FileSystem:
    """The filesystem holding ``path`` (imports TensorFlow only for a remote one)."""
    if not is_remote(path):
        return LOCAL
    from .gfile import GFILE

    return GFILE


def join(folder: str, name: str) -> str:
    """``folder/name`` for either kind of path (a URL joins with ``/``)."""
    return posixpath.join(folder, name) if is_remote(folder) else os.path.join(folder, name)


def dirname(path: str) -> str:
    """The folder holding ``path`` (``gs://bucket/run`` for ``gs://bucket/run/ckpt``)."""
    if not is_remote(path):
        return os.path.dirname(path)
    scheme_end = path.index("://") + 3
    head, tail = path[:scheme_end], path[scheme_end:].rstrip("/")
    return head + posixpath.dirname(tail)


def basename(path: str) -> str:
    return posixpath.basename(path.rstrip("/")) if is_remote(path) else os.path.basename(path)


def absolute(path: str | os.PathLike) -> str:
    """A plain path made absolute; a URL as it is (it is absolute already)."""
    text = normalize(path)
    return text if is_remote(text) else os.path.abspath(text)
