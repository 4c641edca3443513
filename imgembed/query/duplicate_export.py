"""Duplicate groups as JSON, CSV, and a shell script that moves the files a user chose to drop.

Nothing here deletes or moves a file: the script is written for the user to read and run, and it
only ever moves (``mv -n``, which never overwrites) into a folder of their choosing, keeping each
file's path below its indexed folder so that two ``IMG_0001.jpg`` never collide.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Iterable

from imgembed.index.format import Row
from imgembed.query.copies import Report


def shown(path: bytes) -> str:
    """A path for people: undecodable bytes as U+FFFD."""
    return path.decode("utf-8", "replace")


def _member_dict(group_no: int, m, keeper: Row, reason: str) -> dict:
    keep = m.row.id == keeper.id
    return {"group": group_no, "path": shown(m.row.path), "keep": keep, "kind": m.kind,
            "score": round(m.score, 6), "evidence": m.evidence, "size": m.row.size, "width": m.row.width,
            "height": m.row.height, "reason": reason if keep else ""}


def report_dict(report: Report) -> dict:
    """Everything ``imgembed duplicates --json`` prints."""
    groups = []
    for n, g in enumerate(report.groups, 1):
        groups.append({"group": n, "kind": g.kind, "keeper": shown(g.keeper.row.path), "reason": g.reason,
                       "members": [_member_dict(n, m, g.keeper.row, g.reason) for m in g.members]})
    return {"preset": report.preset, "description": report.description, "photos": report.photos,
            "seconds": round(report.seconds, 3), "stats": report.stats, "groups": groups}


CSV_FIELDS = ["group", "path", "keep", "kind", "score", "evidence", "size", "width", "height", "reason"]


def report_csv(report: Report) -> str:
    """One row per member of each group, the suggested keeper first (``keep`` true)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    for n, g in enumerate(report.groups, 1):
        for m in g.members:
            w.writerow(_member_dict(n, m, g.keeper.row, g.reason))
    return buf.getvalue()


def drop_csv(rows: Iterable[Row]) -> str:
    """The files a user ticked to drop: path, size, resolution."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "size", "width", "height"])
    for r in rows:
        w.writerow([shown(r.path), r.size, r.width, r.height])
    return buf.getvalue()


def _sh_quote(b: bytes) -> bytes:
    """``b`` as one POSIX shell word: single quotes, any byte kept as it is."""
    return b"'" + b.replace(b"'", b"'\\''") + b"'"


def move_script(rows: Iterable[Row], target: str) -> bytes:
    """A ``sh`` script that moves ``rows``' files into ``target`` (or its first argument), under
    ``<indexed folder name>/<path below it>``. It never deletes, never overwrites, and says what it skipped."""
    rows = list(rows)
    out = [
        b"#!/bin/sh",
        b"# Moves the %d files picked in imgembed's Duplicates view into a folder. Nothing is deleted:" % len(rows),
        b"# each file keeps its path below its indexed folder, and a file already there is never overwritten.",
        b"# Usage: sh move-duplicates.sh [TARGET_FOLDER]",
        b"set -u",
        b"target=${1:-" + _sh_quote(os.fsencode(os.path.expanduser(target))) + b"}" if target
        else b"target=\"${1:?usage: sh move-duplicates.sh TARGET_FOLDER}\"",
        b"moved=0; skipped=0",
        b"move() {",
        b"  if [ ! -e \"$1\" ]; then echo \"not found, skipped: $1\" >&2; skipped=$((skipped+1)); return; fi",
        b"  if [ -e \"$target/$2\" ]; then echo \"already in the target, skipped: $1\" >&2; "
        b"skipped=$((skipped+1)); return; fi",
        b"  mkdir -p -- \"$(dirname -- \"$target/$2\")\" && mv -n -- \"$1\" \"$target/$2\" && moved=$((moved+1))",
        b"}",
    ]
    for r in rows:
        rel = os.path.join(os.path.basename(r.root.rstrip(b"/")) or b"root", r.relpath)
        out.append(b"move " + _sh_quote(r.path) + b" " + _sh_quote(rel))
    out.append(b"echo \"moved $moved files to $target, skipped $skipped\"")
    return b"\n".join(out) + b"\n"
