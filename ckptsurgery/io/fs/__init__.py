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

from ...errors import UsageError
from .base import FileSystem, RangeReader
from .local import LOCAL

__all__ = ["FileSystem", "RangeReader", "LOCAL", "filesystem", "is_remote", "normalize", "join", "dirname",
           "basename"]

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SCHEME_ONE_SLASH = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/(?!/)")


def normalize(path: str | os.PathLike) -> str:
    """The path as this package uses it: ``file:///x`` (or ``file://localhost/x``) is the plain path ``/x``;
    anything else unchanged.

    A ``file:`` URL naming another host (``file://host/x``) or no absolute
    path (``file:x``, ``file:/x``) is refused, and so is a URL with one slash
    (``gs:/bucket/x``): taken as a plain path it would read or write
    ``host/x``, ``./file:x`` or ``./gs:/bucket/x`` under the current folder,
    not what the user meant.
    """
    text = os.fspath(path)
    if text.startswith("file://"):
        rest = text[len("file://"):]
        if rest.startswith("localhost/"):
            rest = rest[len("localhost"):]
        if rest and not rest.startswith("/"):
            raise UsageError(f"{text}: a file:// URL must name a local absolute path (file:///path); "
                             f"host {rest.partition('/')[0]!r} is not this machine")
        return rest or "/"
    if text.startswith("file:"):
        raise UsageError(f"{text}: not a file URL (write file:///absolute/path, or ./{text} for a local file "
                         "of that name)")
    typo = _SCHEME_ONE_SLASH.match(text)
    if typo:  # gs:/bucket/x would be written to ./gs:/bucket/x on local disk
        raise UsageError(f"{text}: looks like a {typo.group(1)}:// URL with a slash missing (write "
                         f"{typo.group(1)}://..., or ./{text} for a local path)")
    return text


def is_remote(path: str | os.PathLike) -> bool:
    """Does ``path`` name a file on a non-local filesystem (a URL other than ``file://``)?"""
    text = os.fspath(path)
    return bool(_SCHEME.match(text)) and not text.startswith("file://")


def filesystem(path: str | os.PathLike) -> FileSystem:
    """The filesystem holding ``path`` (imports TensorFlow only for a remote one)."""
    if not is_remote(path):
        return LOCAL
    from .gfile import GFILE, registered_schemes

    scheme = os.fspath(path).partition("://")[0]
    if scheme not in registered_schemes():
        known = ", ".join(f"{s}://" for s in sorted(registered_schemes()) if s not in ("", "file"))
        raise UsageError(f"{os.fspath(path)}: no filesystem for scheme {scheme + '://'!r} (TensorFlow knows "
                         f"{known}, file:// and plain paths; s3:// and hdfs:// need tensorflow-io imported)")
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
