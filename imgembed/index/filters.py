"""Filters on photo metadata, and the SQL that finds the photos they keep.

A :class:`Filters` is what a user asks for (``--under``, ``--after``, ``--before``, ``--camera``,
``--min-width``, ``--ext``); every given condition must hold. :func:`where` turns it into a SQL
condition over ``files f`` and ``photo_meta m`` for :meth:`imgembed.index.snapshot.Snapshot.matching_ids`;
the vector search then ranks only the photos that match (:mod:`imgembed.index.filtered_search`).
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass, fields

# Suffixes that name the same format: a filter on one keeps the other.
_EXT_ALIASES = {"jpg": ("jpg", "jpeg"), "jpeg": ("jpg", "jpeg"), "tif": ("tif", "tiff"), "tiff": ("tif", "tiff")}
_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2}))?)?)?)?$")


@dataclass(frozen=True)
class Filters:
    """Conditions on the photos a search may return; None (or empty) leaves one out."""

    under: str | None = None  # a folder: an absolute path, or one relative to the indexed roots ("2023/trip")
    after: str | None = None  # capture time on or after: 2023, 2023-06, 2023-06-01, 2023-06-01T14:00
    before: str | None = None  # capture time before (the same forms; --before 2024 keeps 2023 and earlier)
    camera: str | None = None  # a part of the camera's make or model, any case: "iphone", "canon eos"
    min_width: int | None = None  # at least this many pixels wide (as shown, after EXIF rotation)
    ext: tuple[str, ...] = ()  # file suffixes: ("jpg", "heic"); jpg keeps .jpeg too, tif .tiff

    def __post_init__(self) -> None:
        ext = self.ext.split(",") if isinstance(self.ext, str) else self.ext or ()
        object.__setattr__(self, "ext", tuple(sorted({e.strip().lstrip(".").lower() for e in ext if e.strip()})))
        for name in ("under", "after", "before", "camera"):
            value = getattr(self, name)
            if value is not None and not str(value).strip():
                object.__setattr__(self, name, None)
        if self.after is not None:
            bound(self.after, "after")
        if self.before is not None:
            bound(self.before, "before")
        if self.min_width is not None:
            if isinstance(self.min_width, bool) or not isinstance(self.min_width, int) or self.min_width < 0:
                raise ValueError(f"min_width must be a whole number of pixels, got {self.min_width!r}")

    @classmethod
    def of(cls, value: "Filters | dict | None") -> "Filters":
        """A Filters from itself, a dict of its fields (unknown keys are an error), or None."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, dict):
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"unknown filter {', '.join(unknown)}; use {', '.join(sorted(known))}")
            return cls(**value)
        raise ValueError(f"filters must be a Filters or a dict, got {type(value).__name__}")

    def __bool__(self) -> bool:
        return any(v not in (None, ()) for v in asdict(self).values())

    @property
    def needs_meta(self) -> bool:
        """Whether a condition reads photo metadata (capture time, camera, suffix)."""
        return bool(self.after or self.before or self.camera or self.ext)

    def describe(self) -> str:
        parts = [f"{k.replace('_', '-')} {','.join(v) if isinstance(v, tuple) else v}"
                 for k, v in asdict(self).items() if v not in (None, ())]
        return ", ".join(parts) or "none"


def bound(text: str, which: str) -> str:
    """A date bound as the ISO string it compares with: ``after 2023-06`` -> ``2023-06-01T00:00:00``;
    ``before`` is exclusive and takes the same start. Raises ValueError for anything else."""
    m = _DATE.match(str(text).strip())
    if not m:
        raise ValueError(f"{which}: expected a date like 2023, 2023-06, 2023-06-01 or 2023-06-01T14:30, got {text!r}")
    y, mo, d, hh, mm, ss = m.groups()
    mo, d = mo or "01", d or "01"
    try:
        from datetime import datetime

        t = datetime(int(y), int(mo), int(d), int(hh or 0), int(mm or 0), int(ss or 0))
    except ValueError as e:
        raise ValueError(f"{which}: {text!r} is not a valid date ({e})") from e
    return t.isoformat(timespec="seconds")


def _like(text: str) -> str:
    return "%" + text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _under(under: str, roots: list[tuple[int, bytes]]) -> tuple[str, list]:
    """SQL for "the file lies under this folder" over every indexed root."""
    raw = os.path.expanduser(under)
    if not os.path.isabs(raw):  # a folder inside the indexed roots, e.g. "2023/trip"
        rel = os.fsencode(raw).strip(b"/")
        conds, params = [], []
        for root_id, _ in roots:
            conds.append("(f.root_id = ? AND (f.relpath = ? OR substr(f.relpath, 1, ?) = ?))")
            params += [root_id, rel, len(rel) + 1, rel + b"/"]
        return "(" + (" OR ".join(conds) or "0") + ")", params
    target = os.fsencode(os.path.realpath(raw))
    conds, params = [], []
    for root_id, root in roots:
        r = root.rstrip(b"/")  # b"" for the file system's root
        if target == r or target.startswith(r + b"/"):
            rel = target[len(r):].strip(b"/")
            if not rel:
                conds.append("f.root_id = ?")
                params.append(root_id)
            else:
                conds.append("(f.root_id = ? AND (f.relpath = ? OR substr(f.relpath, 1, ?) = ?))")
                params += [root_id, rel, len(rel) + 1, rel + b"/"]
        elif root.startswith(target.rstrip(b"/") + b"/"):  # the whole root lies under the folder
            conds.append("f.root_id = ?")
            params.append(root_id)
    if not conds:
        shown = ", ".join(r.decode("utf-8", "replace") for _, r in roots) or "none"
        raise ValueError(f"under: no indexed folder contains {under!r} (indexed folders: {shown})")
    return "(" + " OR ".join(conds) + ")", params


def where(filters: Filters, roots: list[tuple[int, bytes]]) -> tuple[str, list]:
    """``(sql, params)``: a condition over ``files f`` and ``photo_meta m`` (joined on ``m.file_id = f.id``)
    that keeps the photos matching every filter. ``roots``: ``(id, absolute path)`` of the index's roots."""
    conds, params = ["1"], []
    if filters.under:
        sql, p = _under(filters.under, roots)
        conds.append(sql)
        params += p
    if filters.after:
        conds.append("m.taken >= ?")
        params.append(bound(filters.after, "after"))
    if filters.before:
        conds.append("m.taken < ?")
        params.append(bound(filters.before, "before"))
    if filters.camera:
        conds.append("lower(coalesce(m.make, '') || ' ' || coalesce(m.model, '')) LIKE ? ESCAPE '\\'")
        params.append(_like(" ".join(filters.camera.split())))
    if filters.min_width is not None:
        conds.append("f.width >= ?")
        params.append(int(filters.min_width))
    if filters.ext:
        exts = sorted({a for e in filters.ext for a in _EXT_ALIASES.get(e, (e,))})
        conds.append(f"m.ext IN ({','.join('?' * len(exts))})")
        params += exts
    return " AND ".join(conds), params
