"""Errors of the second tier (bad arguments, a mismatched or damaged index): raised at once, shown as
one line that says what to do. Bad images are the first tier: :class:`ImageSkipped`.

They live here, beside nothing heavy, so that catching them (the CLI does) imports no model code:
a command that embeds nothing never imports torch. Each is also importable from the module that
raises it (``imgembed.ingest.reader.ImageSkipped``, ``imgembed.model.backbones.BackboneError``,
``imgembed.model.head.HeadError``).
"""

from __future__ import annotations


class StoreError(RuntimeError):
    """The index cannot be opened or written as asked; the message says what to do."""


class ImageSkipped(Exception):
    """The file is not a usable image. ``str(e)`` is one line: the reason (and the option)."""

    def __init__(self, reason: str) -> None:
        super().__init__(" ".join(str(reason).split())[:500])  # decoder messages may span lines


class BackboneError(RuntimeError):
    """A backbone cannot be built: unknown name, or weights that cannot be had."""


def no_text_encoder(spec: str) -> BackboneError:
    return BackboneError(f"backbone '{spec}' has no text encoder; text search needs a CLIP backbone "
                         "such as open_clip:ViT-B-32:laion2b_s34b_b79k")


class HeadError(RuntimeError):
    """A head file is missing, malformed, or does not fit the backbone."""
