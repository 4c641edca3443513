"""Text shown to people: whatever a file name or a decoder message holds, it prints as one line.

A file may be named ``"a.jpg\\n  1  0.9999  /etc/passwd"`` or carry terminal escape sequences; printed
raw, it forges a result line or rewrites the terminal. Every line the CLI prints and the app renders
goes through :func:`printable` (JSON output escapes these characters by itself).
"""

from __future__ import annotations

import re

# C0 and C1 control characters and DEL; line and paragraph separators; bidirectional overrides and
# isolates, which can make "gpj.exe" read as "exe.jpg".
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(m: re.Match) -> str:
    c = m.group()
    return _NAMED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def printable(text: object) -> str:
    """``text`` with every control, separator and bidi character escaped (``\\n``, ``\\x1b``, ``\\u202e``)."""
    return _UNSAFE.sub(_escape, str(text))
