"""Errors of the second tier (bad arguments, a mismatched or damaged index): raised at once, shown as
one line that says what to do. Bad images are the first tier: :class:`imgembed.ingest.reader.ImageSkipped`."""

from __future__ import annotations


class StoreError(RuntimeError):
    """The index cannot be opened or written as asked; the message says what to do."""
