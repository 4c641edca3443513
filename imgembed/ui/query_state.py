"""The page's one current query and the inputs that set it (upload, pick, text, a click on the map),
kept in the session with the history that Back walks (:class:`imgembed.query.history.QueryHistory`)."""

from __future__ import annotations

import streamlit as st

from imgembed.query.history import QueryHistory
from imgembed.query.map_view import clicked_photo
from imgembed.query.search import Query


def history() -> QueryHistory:
    return st.session_state.setdefault("history", QueryHistory())


def go(query: Query | None) -> None:
    history().go(query)


def go_to_photo(file_id: int) -> None:
    go(Query("id", id=int(file_id)))
    st.session_state["view"] = "Search"


def on_upload() -> None:
    f = st.session_state.get(upload_key())
    if f is None:  # the user removed the file: its query goes (Back returns to it)
        go(None)
        return
    q = Query("image", image=f.getvalue(), name=f.name)
    st.session_state["upload_query"] = q
    go(q)


def on_pick() -> None:
    if st.session_state.get("pick") is not None:
        go(Query("id", id=int(st.session_state["pick"])))


def on_text() -> None:
    text = (st.session_state.get("text_query") or "").strip()
    go(Query("text", text=text) if text else None)


def on_map_click() -> None:
    file_id = clicked_photo(st.session_state.get("map"), st.session_state.get("map_ids", []))
    if file_id is not None:
        go_to_photo(file_id)


def upload_key() -> str:
    return f"upload-{st.session_state.get('upload_gen', 0)}"


def sync_inputs(names: dict[int, str]) -> None:
    """Make the inputs show the current query and nothing else: the uploader keeps only the upload
    that is the query, the list shows the photo that is, the text box the text that is."""
    h, ss = history(), st.session_state
    if ss.get("synced") == h.version:
        return
    q = h.current
    ss["pick"] = q.id if q is not None and q.kind == "id" and q.id in names else None
    ss["text_query"] = q.text if q is not None and q.kind == "text" else ""
    if ss.get(upload_key()) is not None and q != ss.get("upload_query"):
        ss.pop(upload_key(), None)
        ss["upload_gen"] = ss.get("upload_gen", 0) + 1  # a fresh, empty uploader
        ss.pop("upload_query", None)
    ss["synced"] = h.version
