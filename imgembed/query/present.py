"""How the app names and describes photos and queries: plain text for the page to show.

Nothing here renders; the app escapes every string it is given (file names are the user's, and may
hold Markdown or control characters).
"""

from __future__ import annotations

import os
import time

from imgembed.config import IMAGE_FORMATS, MAX_UPLOAD_MB
from imgembed.index.format import Meta, Row
from imgembed.query.search import Query


def shown_name(row: Row) -> str:
    """The photo's path inside its indexed folder (undecodable bytes as U+FFFD)."""
    return row.relpath.decode("utf-8", "replace")


def shown_path(row: Row) -> str:
    return os.fsdecode(row.path) if isinstance(row.path, bytes) else str(row.path)


def _size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"  # pragma: no cover


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def meta_line(meta: Meta | None) -> str:
    """``2023-06-01 · Apple iPhone 15``; a date from the file's modification time is marked ``~``."""
    if meta is None:
        return ""
    date = ("~" if meta.taken_from == "mtime" else "") + meta.taken[:10]
    return " · ".join(part for part in (date, meta.camera) if part)


def details(row: Row, meta: Meta | None = None) -> list[tuple[str, str]]:
    """``(label, value)`` facts of an indexed photo for its full-size view."""
    out = [
        ("Name", shown_name(row)),
        ("Folder", os.fsdecode(row.root)),
        ("Pixels", f"{row.width} × {row.height}"),
        ("File size", _size(row.size)),
    ]
    if meta is not None:
        taken = meta.taken.replace("T", " ")[:16]
        out.append(("Taken", taken + (" (file date: no capture time recorded)" if meta.taken_from == "mtime" else "")))
        if meta.camera:
            out.append(("Camera", meta.camera))
        if meta.lat is not None and meta.lon is not None:
            out.append(("Location", f"{meta.lat:.5f}, {meta.lon:.5f}"))
    out += [("Modified", _when(row.mtime_ns / 1e9)), ("Indexed", _when(row.indexed_at))]
    return out


def upload_problem(name: str, size: int, max_mb: int = MAX_UPLOAD_MB) -> str | None:
    """Why an uploaded file cannot be a query before it is even opened (its type, its size), or None."""
    ext = os.path.splitext(name)[1].lower()
    if ext not in IMAGE_FORMATS:
        kind = f"a {ext} file" if ext else "a file without a suffix"
        return f"it is {kind}; the app reads {', '.join(IMAGE_FORMATS)}"
    if size > max_mb * 2**20:
        return f"file is {size / 2**20:.0f} MB, above the {max_mb} MB upload limit"
    return None


def query_label(query: Query, rows: dict[int, Row] | None = None) -> str:
    """A short name of a query: the uploaded file, the indexed photo, or the text in quotes."""
    if query.kind == "image":
        return f"upload {query.name}" if query.name else "an uploaded photo"
    if query.kind == "id":
        row = (rows or {}).get(query.id)
        return shown_name(row) if row is not None else f"photo {query.id}"
    return f"“{query.text}”"


def itself_note(query: Query, itself: list[Row]) -> str | None:
    """What the page says about the query photo's own entries, which the results leave out."""
    if not itself:
        return None
    others = [shown_name(r) for r in itself if not (query.kind == "id" and r.id == query.id)]
    if query.kind == "image":
        where = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        return f"This photo is in the index as {where}; it is left out of its own results."
    if others:
        where = ", ".join(others[:3]) + (f" and {len(others) - 3} more" if len(others) > 3 else "")
        return f"Identical copies left out of the results: {where}."
    return None
