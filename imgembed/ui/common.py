"""What the app's views share: escaping for Markdown and HTML, the open index, thumbnails."""

from __future__ import annotations

import html
import re

import streamlit as st

from imgembed.config import ReaderCfg
from imgembed.errors import BackboneError, HeadError
from imgembed.index.format import Row, StoreError
from imgembed.ingest.cpu import use_query_threads
from imgembed.ingest.reader import ImageSkipped
from imgembed.query.present import shown_name
from imgembed.query.search import Searcher
from imgembed.query.thumbnails import jpeg_bytes, thumbnail
from imgembed.text import printable

THUMB_PX = 256
FULL_PX = 1280  # the full-size view's longest side
OPEN_ERRORS = (StoreError, BackboneError, HeadError, ValueError, OSError)

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&])")


def md(text: str) -> str:
    """``text`` escaped for Streamlit Markdown: shown literally, never as markup."""
    return _MD_SPECIAL.sub(r"\\\1", printable(text))  # one line: control characters escaped


def attr(text: str) -> str:
    """``text`` escaped for HTML (element text or a quoted attribute)."""
    return html.escape(printable(text), quote=True)


@st.cache_resource(show_spinner="Loading the index and its model…")
def load_searcher(index_dir: str) -> Searcher:
    """One Searcher (index + model) per index folder per process."""
    use_query_threads()
    s = Searcher(index_dir)
    s.warm_up()  # load the model now, and fail here if it does not match the index
    return s


@st.cache_data(max_entries=8192, show_spinner=False)
def thumb_jpeg(path: bytes, mtime_ns: int, size: int, square: bool = True) -> tuple[bytes | None, str]:
    """``(jpeg, "")`` preview of an indexed file, or ``(None, reason)``. Keyed by path and mtime."""
    try:
        return jpeg_bytes(thumbnail(path, size, ReaderCfg(), square)), ""
    except ImageSkipped as e:
        return None, str(e)


def show_photo(row: Row, caption: str | None = None, size: int = THUMB_PX, square: bool = True,
               stretch: bool = True) -> None:
    """The photo's thumbnail (``stretch``: to the column's width; else at most its own size)."""
    data, why = thumb_jpeg(row.path, row.mtime_ns, size, square)
    if data is None:
        st.warning(f"No preview of {md(shown_name(row))}: {md(why)}")
        if caption:
            st.caption(caption)
    else:
        st.image(data, caption=caption, width="stretch" if stretch else "content")
