"""imgembed: local image similarity search with a trainable projection head.

Data flow: :mod:`imgembed.ingest.fs` finds files -> :mod:`imgembed.ingest.reader` decodes them ->
:mod:`imgembed.model.backbones` turn pixels into features -> :mod:`imgembed.model.head` projects them ->
:mod:`imgembed.index.store` keeps vectors and metadata -> :mod:`imgembed.query.search` answers queries.
"""

__version__ = "0.1.0"
