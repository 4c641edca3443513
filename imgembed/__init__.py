"""imgembed: local image similarity search with a trainable projection head.

Data flow: :mod:`imgembed.ingest.fs` finds files -> :mod:`imgembed.ingest.reader` decodes them ->
:mod:`imgembed.model.backbones` turn pixels into features -> :mod:`imgembed.model.head` projects them ->
:mod:`imgembed.index.store` keeps vectors and metadata -> :mod:`imgembed.query.search` answers queries.
"""

import os as _os

# Before anything imports torch: OpenMP threads that wait for work sleep instead of spinning on a
# core that the other threads, the decode workers or other programs need (imgembed.ingest.cpu).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"

__all__ = ["open_index", "open_folder", "Filters"]


def __getattr__(name: str):
    """``imgembed.open_index`` and friends, imported on first use (``import imgembed`` stays light)."""
    if name in __all__:
        from imgembed import api

        return getattr(api, name)
    raise AttributeError(f"module 'imgembed' has no attribute {name!r}")
