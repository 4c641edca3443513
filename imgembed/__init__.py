"""imgembed: local image similarity search with a trainable projection head.

Data flow: :mod:`imgembed.fs` finds files -> :mod:`imgembed.reader` decodes them ->
:mod:`imgembed.backbones` turn pixels into features -> :mod:`imgembed.head` projects them ->
:mod:`imgembed.store` keeps vectors and metadata -> :mod:`imgembed.search` answers queries.
"""

__version__ = "0.1.0"
