"""Streamlit front end: ``streamlit run app.py``. Thin: the page; its views are in :mod:`imgembed.ui`.

Three views over one index: search (upload, pick a photo, text with CLIP, "more like this"),
duplicates (groups of copies with a suggested keeper; ticked files can be downloaded as a list
or a script that moves them) and collection (what the index holds, a map to click). The page
answers one query at a time and can go back to the previous one; the open index and the view are
in the page's address, and the index opened last is remembered for new tabs
(:mod:`imgembed.query.recent`). The app only reads files recorded in the index, looked up by id,
and shows their names escaped. It never deletes or moves anything.
"""

from __future__ import annotations

import streamlit as st

from imgembed.config import default_index
from imgembed.query.history import QueryHistory
from imgembed.query.recent import index_for_page, opened
from imgembed.ui.collection_view import collection_view
from imgembed.ui.common import OPEN_ERRORS, load_searcher, md
from imgembed.ui.duplicates_view import duplicates_view
from imgembed.ui.index_forms import build_form, build_report, no_index_page, open_form
from imgembed.ui.search_view import filter_sidebar, search_view

VIEWS = ("Search", "Duplicates", "Collection")

st.set_page_config(page_title="imgembed: similar photos", page_icon="🔎", layout="wide")

# Result cards of one height: a square thumbnail, one line of name (cut with an ellipsis, in full on
# hover), the buttons. On a phone the grid keeps two cards a row instead of one.
CSS = """<style>
.ie-score { font-weight: 600; font-size: 0.9rem; line-height: 1.4; }
.ie-name { white-space: nowrap; overflow: hidden; text-overflow: ellipsis; font-size: 0.85rem;
           color: rgba(49, 51, 63, 0.7); line-height: 1.4; }
.st-key-results [data-testid="stImage"] img { aspect-ratio: 1 / 1; object-fit: contain; }
.st-key-fullview [data-testid="stImage"] img { max-height: 75vh; width: auto; max-width: 100%; object-fit: contain; }
h1 { font-size: 2.2rem !important; }
/* the uploader's own size hint names the browser's limit, above the app's (its label says the real one) */
[data-testid="stFileUploaderDropzoneInstructions"] span { display: none; }
@media (max-width: 640px) {
  h1 { font-size: 1.6rem !important; }
  /* the rows of cards become one flowing grid of two cards a row */
  .st-key-results { flex-flow: row wrap !important; gap: 0.75rem 0.5rem !important; }
  .st-key-results > div, .st-key-results > div > [data-testid="stHorizontalBlock"] { display: contents !important; }
  .st-key-results > div > [data-testid="stHorizontalBlock"] > [data-testid="stColumn"] {
      flex: 0 0 calc(50% - 0.25rem) !important; min-width: calc(50% - 0.25rem) !important; }
  .st-key-results > div > [data-testid="stHorizontalBlock"] > [data-testid="stColumn"]:empty { display: none !important; }
  /* inside a card, the name and the full-size icon stay on one line */
  .st-key-results [class*="st-key-card-"] [data-testid="stHorizontalBlock"] { flex-wrap: nowrap !important; }
  .st-key-results [class*="st-key-card-"] [data-testid="stColumn"] { min-width: 0 !important; flex: 1 1 0 !important; }
  .st-key-results [class*="st-key-card-"] [data-testid="stColumn"]:last-child { flex: 0 0 auto !important; }
  .st-key-query [data-testid="stImage"] { max-width: 50%; margin: 0 auto; }
  /* the collection's four figures: two a row */
  .st-key-facts [data-testid="stHorizontalBlock"] { flex-flow: row wrap !important; }
  .st-key-facts [data-testid="stColumn"] { flex: 0 0 calc(50% - 0.5rem) !important; min-width: calc(50% - 0.5rem) !important; }
}
</style>"""


def main() -> None:
    st.html(CSS)
    index_dir = index_for_page(st.query_params.get("index"), default_index())
    try:
        searcher = load_searcher(index_dir)
    except OPEN_ERRORS as e:
        no_index_page(index_dir, str(e))
        return
    opened(index_dir)
    if st.query_params.get("index") != index_dir:
        st.query_params["index"] = index_dir  # a reload keeps this index
    if st.session_state.get("history_of") != index_dir:  # another index: its own queries
        st.session_state["history"] = QueryHistory()
        st.session_state["history_of"] = index_dir
    info = searcher.info()
    st.title("imgembed: find similar photos")
    st.caption(f"{info.count:,} photos · {md(info.backbone)} · {info.dim}-d · index {md(info.path)}")
    build_report()
    with st.sidebar:
        st.header("Index")
        st.markdown(f"**{info.count:,}** photos  \nbackbone **{md(info.backbone)}**  \n"
                    f"{info.dim}-d · {info.index_type or 'empty'} · {info.disk_bytes / 2**20:.1f} MiB  \n"
                    f"{md(info.path)}")
        with st.expander("Open another index"):
            open_form(index_dir)
        with st.expander("Index another folder"):
            st.caption("New photos are added to the index; unchanged ones are skipped.")
            build_form(index_dir, "more", info.backbone)
    if info.count == 0:
        st.warning("This index is empty. Index a folder of photos (sidebar) to start.")
        return
    if st.session_state.get("view") not in VIEWS:
        wanted = st.query_params.get("view", "").capitalize()
        st.session_state["view"] = wanted if wanted in VIEWS else VIEWS[0]
    view = st.radio("View", VIEWS, horizontal=True, key="view", label_visibility="collapsed")
    if st.query_params.get("view") != view.lower():
        st.query_params["view"] = view.lower()
    if view == "Search":
        with st.sidebar:  # the filters narrow the search: shown with it
            filters = filter_sidebar(searcher)
        search_view(searcher, filters)
    elif view == "Duplicates":
        duplicates_view(searcher)
    else:
        collection_view(searcher)


main()
