"""Atomic file writes: write a temporary file beside the target, fsync, rename, fsync the folder.

The temporary file is created exclusively and never through a symbolic link (``O_EXCL``,
``O_NOFOLLOW``): whatever a hostile folder holds, a write lands in a new file of ours. It gets the
mode of any new file (0666 less the umask, so 0644 as a rule, readable by a service user).
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

# Flags that create a new regular file of our own: never an existing file, never through a link.
CREATE_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_synced(tmp: str | Path, path: str | Path) -> None:
    """Move a fully written temporary file onto ``path`` durably: fsync it, rename, fsync the folder."""
    fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def create_new(path: str | Path) -> int:
    """A file descriptor of ``path``, created now (mode 0666 less the umask). Raises OSError
    (FileExistsError, or ELOOP for a link) when anything is there already."""
    return os.open(path, CREATE_NEW, 0o666)


def atomic_write_bytes(path: str | Path, data: bytes, tmp_name: str | None = None) -> None:
    """Replace ``path`` with ``data`` atomically. ``tmp_name``: the temporary file's name in the same
    folder (a caller that records its temporary files names them); default: a fresh random name."""
    path = Path(path)
    tmp = path.with_name(tmp_name or f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = create_new(tmp)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: str | Path, obj: dict, tmp_name: str | None = None) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), tmp_name)
