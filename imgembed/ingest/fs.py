"""Finding image files under a root: a recursive scan that never follows directory symlinks.

Paths are kept as ``bytes`` relative to the root (``os.fsencode``), so names that are not valid
UTF-8 survive a round trip through the store; :func:`display` makes a printable form.
"""

from __future__ import annotations

import os
import stat
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

from imgembed.config import ReaderCfg


class FileEntry(NamedTuple):
    relpath: bytes  # relative to the root, os.fsencode'd
    size: int
    mtime_ns: int


@dataclass
class ScanResult:
    files: list[FileEntry]
    skipped: list[tuple[bytes, str]]  # (relpath, reason)
    # Files that are not images, by lower-case suffix ("" for none): counted, never opened.
    unread: Counter = field(default_factory=Counter)
    hidden: list[bytes] = field(default_factory=list)  # hidden folders (".trip"), not entered

    def unread_line(self) -> str | None:
        """``not read: 12 .mov, 3 .cr2, 1 hidden folder (.trip)``: what the scan left alone, once."""
        kinds = [f"{n} {ext or 'without suffix'}" for ext, n in self.unread.most_common(_KINDS_SHOWN)]
        if len(self.unread) > _KINDS_SHOWN:
            rest = sum(self.unread.values()) - sum(n for _, n in self.unread.most_common(_KINDS_SHOWN))
            kinds.append(f"{rest} of {len(self.unread) - _KINDS_SHOWN} other kinds")
        if self.hidden:
            names = ", ".join(display(p) for p in self.hidden[:_KINDS_SHOWN])
            more = ", ..." if len(self.hidden) > _KINDS_SHOWN else ""
            kinds.append(f"{len(self.hidden)} hidden folder{'s' if len(self.hidden) > 1 else ''} ({names}{more})")
        return "not read: " + ", ".join(kinds) if kinds else None


_KINDS_SHOWN = 8


def display(relpath: bytes) -> str:
    """A printable form of a stored path (undecodable bytes become U+FFFD)."""
    return relpath.decode("utf-8", errors="replace")


def abspath(root: str | Path, relpath: bytes) -> bytes:
    return os.path.join(os.fsencode(root), relpath)


def scan(root: str | Path, cfg: ReaderCfg) -> ScanResult:
    """All image files under ``root`` with their size and mtime, sorted by path.

    Directory symlinks are not followed (they can loop or leave the root); each is reported. A file
    symlink is followed when ``cfg.follow_symlinks`` and it resolves inside the root; otherwise it is
    skipped with a reason. Unreadable directories and files that cannot be stat'ed (symlink loops,
    paths too long for the OS) are skipped with a reason. Names that are not images cost no ``stat``;
    they are counted by suffix, and hidden folders (a name starting with a dot) are listed, not entered.
    """
    root_b = os.fsencode(os.path.abspath(root))
    real_root = os.path.realpath(root_b)
    exts = tuple(e.encode() for e in cfg.extensions)
    files: list[FileEntry] = []
    skipped: list[tuple[bytes, str]] = []
    unread: Counter = Counter()
    hidden: list[bytes] = []
    stack: list[tuple[bytes, bytes]] = [(root_b, b"")]  # (absolute path, path relative to root)
    while stack:
        d, d_rel = stack.pop()
        try:
            it = os.scandir(d)
        except OSError as e:
            skipped.append((d_rel or b".", f"cannot list folder: {e.strerror or e}"))
            continue
        with it:
            for entry in it:
                rel = d_rel + b"/" + entry.name if d_rel else entry.name
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if entry.name.startswith(b"."):
                            hidden.append(rel)  # .git, .thumbnails, .Trash: counted, not entered
                        else:
                            stack.append((entry.path, rel))
                        continue
                    is_image = entry.name.lower().endswith(exts)
                    if entry.is_symlink():
                        if not is_image:
                            if _is_dir(entry):
                                skipped.append((rel, "symlink to a folder, not followed (it could loop or leave "
                                                     "the indexed folder); index its target directly"))
                            else:
                                unread[_suffix(entry.name)] += 1
                            continue
                        if not cfg.follow_symlinks:
                            skipped.append((rel, "symlink (not followed; see ReaderCfg.follow_symlinks)"))
                            continue
                        target = os.path.realpath(entry.path)
                        if os.path.commonpath([target, real_root]) != real_root:
                            skipped.append((rel, "symlink points outside the indexed folder"))
                            continue
                    elif not is_image:
                        unread[_suffix(entry.name)] += 1
                        continue
                    st = entry.stat(follow_symlinks=True)
                except OSError as e:
                    skipped.append((rel, f"cannot stat: {e.strerror or e}"))
                    continue
                if not stat.S_ISREG(st.st_mode):
                    skipped.append((rel, "not a regular file (a pipe, socket or device)"))
                    continue
                files.append(FileEntry(rel, st.st_size, st.st_mtime_ns))
    files.sort()
    hidden.sort()
    return ScanResult(files, skipped, unread, hidden)


def _suffix(name: bytes) -> str:
    """``b"IMG_1.MOV"`` -> ``".mov"``; ``""`` for a name without one (``README``, ``.DS_Store``)."""
    ext = os.path.splitext(name)[1]
    return display(ext.lower()) if 1 < len(ext) <= 12 else ""


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir(follow_symlinks=True)
    except OSError:  # a symlink loop or a dangling link is no folder
        return False


def iter_image_paths(root: str | Path, cfg: ReaderCfg) -> Iterator[tuple[bytes, bytes]]:
    """``(relpath, abspath)`` of every image under ``root`` in sorted order."""
    for f in scan(root, cfg).files:
        yield f.relpath, abspath(root, f.relpath)
