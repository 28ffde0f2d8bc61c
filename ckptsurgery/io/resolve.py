"""Where a checkpoint is: whatever the user typed -> a prefix; a training folder's checkpoints by step.

One place for "which checkpoint is newest": the trailing step number of a
prefix (``model.ckpt-1200``), see :func:`step_of`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..errors import BadCheckpointError, UsageError
from .fs import basename, dirname, filesystem, is_remote, join, normalize

_DATA_FILE = re.compile(r"^(?P<prefix>.+)\.data-\d{5}-of-\d{5}$")
_STEP = re.compile(r"-(\d+)$")


def step_of(prefix: str) -> int | None:
    """The training step a prefix names (``model.ckpt-1200`` -> 1200), or None."""
    match = _STEP.search(prefix)
    return int(match.group(1)) if match else None


def resolve_prefix(path: str | os.PathLike) -> str:
    """Turn whatever the user typed into a checkpoint prefix (see :func:`resolve_checkpoint`)."""
    return resolve_checkpoint(path)[0]


def resolve_checkpoint(path: str | os.PathLike) -> tuple[str, str]:
    """Turn whatever the user typed into ``(prefix, format)``, format ``"v2"`` or ``"v1"``.

    Accepts a prefix (``run/model.ckpt-1000``), a folder (its ``checkpoint``
    state file, else a SavedModel's ``variables/variables``, else its only or
    newest prefix), a ``checkpoint`` state file, or one of the checkpoint's own
    files (``.index`` or ``.data-*``).  A pre-0.12 (V1) checkpoint is accepted
    as its single file, one of its shards (``export-00000-of-00002``) or the
    shard pattern (``export-?????-of-00002``); its "prefix" is then what TF's
    reader is given: the file, or the pattern.
    """
    text = normalize(path)
    if is_remote(text):
        return _resolve_remote(text)
    p = Path(text)
    try:
        if Path(text + ".index").is_file():
            return text, "v2"
        if p.is_dir():
            return _prefix_in_folder(p)
        if p.name == "checkpoint" and p.is_file():
            return _prefix_from_state_file(p)
        if text.endswith(".index") and p.is_file():
            return text[: -len(".index")], "v2"
        match = _DATA_FILE.match(text)
        if match and p.is_file():
            prefix = match.group("prefix")
            if Path(prefix + ".index").is_file():
                return prefix, "v2"
            raise BadCheckpointError(text, f"data shard has no index file {prefix}.index beside it")
        v1 = _v1_pattern(text)
        if v1 is not None:
            return v1, "v1"
        exists = p.exists()
    except (OSError, ValueError) as exc:  # embedded NUL, name too long, unreadable folder
        raise BadCheckpointError(text, f"cannot open: {getattr(exc, 'strerror', None) or exc}") from None
    if exists:
        raise BadCheckpointError(text, "not a checkpoint: expected a prefix, a folder, a .index/.data file "
                                       "or a V1 checkpoint file")
    raise BadCheckpointError(text, "no such checkpoint (neither a file, a folder, nor a prefix with a .index file)")


def _v1_pattern(text: str) -> str | None:
    """The V1 reader's pattern for ``text`` when it names a V1 checkpoint (file, shard or pattern), else None."""
    from .v1 import SHARD_PATTERN, is_v1_checkpoint, pattern_for_shard

    if SHARD_PATTERN.match(text):
        return text if is_v1_checkpoint(text) else None
    if not Path(text).is_file() or not is_v1_checkpoint(text):
        return None
    return pattern_for_shard(text) or text


#: A ``checkpoint`` state file is a few lines per kept checkpoint; more than this is not one.
MAX_STATE_FILE_BYTES = 1 << 20


def _prefix_from_state_file(state_file: Path) -> tuple[str, str]:
    """Read a ``checkpoint`` state file ourselves: bounded in size, every failure one line.

    A relative ``model_checkpoint_path`` is taken relative to the folder, as
    TensorFlow does; the path it names must be a checkpoint itself (a V2
    prefix or a V1 file/pattern), never another folder or state file.
    """
    where = str(state_file)
    try:
        size = state_file.stat().st_size
        if not state_file.is_file():
            raise BadCheckpointError(where, "checkpoint state file is not a regular file")
        if size > MAX_STATE_FILE_BYTES:
            raise BadCheckpointError(where, f"checkpoint state file is {size} bytes, too large to be one")
        raw = state_file.read_bytes()[:MAX_STATE_FILE_BYTES + 1]
    except OSError as exc:
        raise BadCheckpointError(where, f"cannot read checkpoint state file: {exc.strerror or exc}") from None
    named = _state_model_path(where, raw)
    prefix = named if os.path.isabs(named) else os.path.join(str(state_file.parent), named)
    shown = named if len(named) <= 200 else named[:200] + "..."
    folder = state_file.parent
    try:
        nul = "\x00" in prefix
        is_v2 = not nul and Path(prefix + ".index").is_file()
        v1 = None if nul or is_v2 else _v1_pattern(prefix)
    except (OSError, ValueError):
        is_v2, v1 = False, None
    if _outside(prefix, folder):
        return _moved_checkpoint(where, prefix, folder, shown)
    if is_v2:
        return prefix, "v2"
    if v1 is not None:
        return v1, "v1"
    raise BadCheckpointError(where, f"state file points to {shown!r}, which is not a checkpoint "
                                    "(no .index file beside it, not a V1 checkpoint file)")


def _state_model_path(where: str, raw: bytes) -> str:
    """The ``model_checkpoint_path`` of a state file's bytes, as written (every failure one line)."""
    try:
        text = raw.decode("utf-8")
        if "\x00" in text:
            raise ValueError("NUL byte")
    except (UnicodeDecodeError, ValueError):
        raise BadCheckpointError(where, "checkpoint state file is not text") from None
    from google.protobuf import text_format

    from .protos import checkpoint_state_class

    state = checkpoint_state_class()()  # TF's CheckpointState, without importing TF
    try:
        text_format.Parse(text, state, allow_unknown_field=True)
    except Exception as exc:  # text_format.ParseError and friends
        detail = str(exc).splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        detail = "".join(c if c.isprintable() else "?" for c in detail)  # the file's bytes, quoted
        raise BadCheckpointError(where, f"unreadable checkpoint state file: {detail}") from None
    named = state.model_checkpoint_path
    if not named:
        raise BadCheckpointError(where, "checkpoint state file names no model_checkpoint_path")
    return named


def _outside(prefix: str, folder: Path) -> bool:
    """True when ``prefix`` does not lie in ``folder`` (after resolving symlinks and '..')."""
    try:
        return Path(os.path.realpath(os.path.dirname(prefix) or ".")) != Path(os.path.realpath(folder))
    except (OSError, ValueError):
        return True


def _moved_checkpoint(where: str, prefix: str, folder: Path, shown: str) -> tuple[str, str]:
    """A state file naming a checkpoint in another folder: the folder was copied or moved
    (TF writes absolute paths), so the same name inside this folder is meant; reading the
    other folder's checkpoint would silently read the wrong run."""
    local = str(folder / os.path.basename(prefix))
    if Path(local + ".index").is_file():
        return local, "v2"
    v1 = _v1_pattern(local)
    if v1 is not None:
        return v1, "v1"
    raise BadCheckpointError(where, f"state file points outside its folder, to {shown!r}, and the folder holds no "
                                    f"{os.path.basename(prefix)!r}; give the checkpoint's path instead")


def _prefix_in_folder(folder: Path) -> tuple[str, str]:
    if (folder / "checkpoint").is_file():
        return _prefix_from_state_file(folder / "checkpoint")
    saved_model = folder / "variables" / "variables"
    if Path(str(saved_model) + ".index").is_file():
        return str(saved_model), "v2"
    try:
        indexes = [f for f in folder.iterdir() if f.name.endswith(".index") and f.is_file()]
    except PermissionError:
        raise BadCheckpointError(str(folder), "folder is not readable (permission denied)") from None
    if not indexes:
        raise BadCheckpointError(str(folder), "folder holds no checkpoint (no .index file, no 'checkpoint' state file)")

    def newest_first(f: Path) -> tuple[int, float]:
        step = step_of(f.name[: -len(".index")])
        return (step if step is not None else -1, f.stat().st_mtime)

    return str(max(indexes, key=newest_first))[: -len(".index")], "v2"


def last_checkpoints(folder: str | os.PathLike, n: int) -> list[str]:
    """The prefixes of the ``n`` newest checkpoints in a training folder, oldest first.

    The folder's ``checkpoint`` state file decides (its
    ``all_model_checkpoint_paths``, which TF keeps oldest first); without one,
    the ``*.index`` files are ordered by the trailing step number of their
    prefix (``model.ckpt-1200``).  Fewer than ``n`` is a :class:`UsageError`
    that says how many there are.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise UsageError(f"--last needs a positive number of checkpoints, got {n!r}")
    folder = normalize(folder)
    if is_remote(folder):
        return _remote_last_checkpoints(folder, n)
    path = Path(folder)
    if not path.is_dir():
        raise UsageError(f"{folder}: not a folder (--last N DIR takes a training folder)")
    state_file = path / "checkpoint"
    if state_file.is_file():
        from .._tf import tf

        try:
            state = tf().train.get_checkpoint_state(str(path))
        except Exception as exc:  # TF raises ParseError subclasses of varied kinds
            raise BadCheckpointError(str(state_file), f"unreadable checkpoint state file: {exc}") from None
        listed = list(state.all_model_checkpoint_paths) if state is not None else []
        if state is not None and not listed and state.model_checkpoint_path:
            listed = [state.model_checkpoint_path]
        # get_checkpoint_state has already joined relative entries to the folder; absolute ones elsewhere
        # are this folder's checkpoints before it was copied or moved (see _moved_checkpoint)
        listed = [str(path / os.path.basename(p)) if _outside(p, path) else p for p in listed]
        prefixes = [p for p in listed if Path(p + ".index").is_file()]
        how = f"listed in {state_file} with an .index file"
    else:
        stepped = []
        for index in path.glob("*.index"):
            prefix = str(index)[: -len(".index")]
            step = step_of(prefix)
            if step is not None and index.is_file():
                stepped.append((step, prefix))
        prefixes = [p for _, p in sorted(stepped)]
        how = "with a step number (name-NNN.index) and no 'checkpoint' state file"
    if len(prefixes) < n:
        raise UsageError(f"{folder}: asked for the last {n} checkpoints but there {'is' if len(prefixes) == 1 else 'are'} "
                         f"only {len(prefixes)} ({how})")
    return prefixes[-n:]


def checkpoint_files(prefix: str) -> list[Path]:
    """The files of the checkpoint at ``prefix``: its index and data shards (URLs, as ``str``, for a remote one)."""
    if is_remote(prefix):
        return _remote_checkpoint_files(prefix)  # type: ignore[return-value]
    path = Path(prefix)
    if not path.parent.is_dir():
        return []
    base = path.name
    return sorted(
        f for f in path.parent.iterdir()
        if f.name == base + ".index" or (f.name.startswith(base + ".data-") and "-of-" in f.name)
    )


# -- remote checkpoints (gs://, ram://, ...): the same rules, through the filesystem layer ----------------------
def _resolve_remote(text: str) -> tuple[str, str]:
    """:func:`resolve_checkpoint` for a URL: a V2 prefix, its ``.index``/``.data-*`` file, a
    ``checkpoint`` state file or a folder (V1 checkpoints are read from local disk only)."""
    fs = filesystem(text)
    try:
        if fs.isfile(text + ".index"):
            return text, "v2"
        if text.endswith(".index") and fs.isfile(text):
            return text[: -len(".index")], "v2"
        match = _DATA_FILE.match(text)
        if match and fs.isfile(text):
            prefix = match.group("prefix")
            if fs.isfile(prefix + ".index"):
                return prefix, "v2"
            raise BadCheckpointError(text, f"data shard has no index file {prefix}.index beside it")
        if basename(text) == "checkpoint" and fs.isfile(text):
            return _remote_state_prefix(text.rstrip("/"))
        if fs.isdir(text):
            folder = text.rstrip("/")
            if fs.isfile(join(folder, "checkpoint")):
                return _remote_state_prefix(join(folder, "checkpoint"))
            if fs.isfile(join(folder, "variables/variables.index")):
                return join(folder, "variables/variables"), "v2"
            indexes = [n[: -len(".index")] for n in fs.listdir(folder) if n.endswith(".index")]
            if indexes:
                newest = max(indexes, key=lambda n: (step_of(n) if step_of(n) is not None else -1, n))
                return join(folder, newest), "v2"
            raise BadCheckpointError(text, "folder holds no checkpoint (no .index file, no 'checkpoint' state file)")
    except OSError as exc:
        raise BadCheckpointError(text, f"cannot open: {exc.strerror or exc}") from None
    raise BadCheckpointError(text, "no such checkpoint (no .index file at this prefix, not a folder holding one)")


def _remote_state_prefix(state_file: str) -> tuple[str, str]:
    fs = filesystem(state_file)
    try:
        if fs.size(state_file) > MAX_STATE_FILE_BYTES:
            raise BadCheckpointError(state_file, "checkpoint state file is too large to be one")
        raw = fs.read_bytes(state_file, 0, MAX_STATE_FILE_BYTES + 1)
    except OSError as exc:
        raise BadCheckpointError(state_file, f"cannot read checkpoint state file: {exc.strerror or exc}") from None
    named = _state_model_path(state_file, raw)
    folder = dirname(state_file)
    # Relative to the folder, as TF writes it; an absolute path elsewhere means a moved folder (see above).
    prefix = named if is_remote(named) else join(folder, named)
    if dirname(prefix) != folder:
        prefix = join(folder, basename(named))
    if fs.isfile(prefix + ".index"):
        return prefix, "v2"
    shown = named if len(named) <= 200 else named[:200] + "..."
    raise BadCheckpointError(state_file, f"state file points to {shown!r}, which is not a checkpoint "
                                         "(no .index file beside it)")


def _remote_checkpoint_files(prefix: str) -> list[str]:
    fs = filesystem(prefix)
    folder, base = dirname(prefix), basename(prefix)
    try:
        names = fs.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(join(folder, n) for n in names
                  if n == base + ".index" or (n.startswith(base + ".data-") and "-of-" in n))


def _remote_last_checkpoints(folder: str, n: int) -> list[str]:
    """:func:`last_checkpoints` for a URL folder (the state file's list, else step numbers)."""
    fs = filesystem(folder)
    folder = folder.rstrip("/")
    state_file = join(folder, "checkpoint")
    try:
        if not fs.isdir(folder):
            raise UsageError(f"{folder}: not a folder (--last N DIR takes a training folder)")
        if fs.isfile(state_file):
            from .._tf import tf

            try:
                state = tf().train.get_checkpoint_state(folder)
            except Exception as exc:
                raise BadCheckpointError(state_file, f"unreadable checkpoint state file: {exc}") from None
            listed = list(state.all_model_checkpoint_paths) if state is not None else []
            # an entry outside the folder (a local absolute path of the training machine: the folder was
            # uploaded) names the checkpoint of that name here, never a file of this machine
            listed = [p if is_remote(p) and dirname(p) == folder else join(folder, basename(p)) for p in listed]
            prefixes = [p for p in listed if fs.isfile(p + ".index")]
            how = f"listed in {state_file} with an .index file"
        else:
            stepped = sorted((step_of(name[:-6]), join(folder, name[:-6])) for name in fs.listdir(folder)
                             if name.endswith(".index") and step_of(name[:-6]) is not None)
            prefixes = [p for _, p in stepped]
            how = "with a step number (name-NNN.index) and no 'checkpoint' state file"
    except OSError as exc:
        raise UsageError(f"{folder}: cannot list folder: {exc.strerror or exc}") from None
    if len(prefixes) < n:
        raise UsageError(f"{folder}: asked for the last {n} checkpoints but there {'is' if len(prefixes) == 1 else 'are'} "
                         f"only {len(prefixes)} ({how})")
    return prefixes[-n:]
