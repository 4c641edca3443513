"""The search view: the query inputs and options, the query, and the grid of results with their
full-size view; the filters in the sidebar."""

from __future__ import annotations

import time

import streamlit as st

from imgembed.config import MAX_UPLOAD_MB, query_reader_cfg
from imgembed.index.filters import Filters
from imgembed.index.format import Meta, Row, StoreError
from imgembed.ingest.reader import ImageSkipped, open_image
from imgembed.query.present import details, itself_note, meta_line, query_label, shown_name, shown_path, upload_problem
from imgembed.query.search import Answer, Hit, Query, Searcher
from imgembed.query.thumbnails import fit, jpeg_bytes
from imgembed.text import printable
from imgembed.ui.common import FULL_PX, THUMB_PX, attr, md, show_photo
from imgembed.ui.query_state import go_to_photo, history, on_pick, on_text, on_upload, sync_inputs, upload_key

GRID_COLS = 5
PICK_MAX = 5000  # photos offered in the "pick from the index" list


@st.cache_data(max_entries=4, show_spinner=False)
def filter_choices(index_dir: str, generation: int, _searcher: Searcher) -> dict:
    with _searcher.snapshot.read():
        return _searcher.snapshot.filter_choices()


@st.cache_data(max_entries=4, show_spinner=False)
def pick_list(index_dir: str, generation: int, _searcher: Searcher) -> dict[int, str]:
    out = {}
    for row in _searcher.snapshot.iter_rows():
        out[row.id] = shown_name(row)
        if len(out) >= PICK_MAX:
            break
    return out


@st.dialog("Photo", width="large")
def photo_dialog(row: Row, meta: Meta | None = None) -> None:
    """The full-size view of an indexed photo: the picture (never enlarged, never taller than the
    window), its facts and its path beside it (below it on a phone)."""
    picture, about = st.columns([3, 2], gap="medium")
    with picture, st.container(key="fullview"):
        show_photo(row, size=FULL_PX, square=False, stretch=False)
    with about:
        facts = details(row, meta)
        st.markdown("  \n".join(f"**{label}** {md(value)}" for label, value in facts))
        st.code(shown_path(row), language=None, wrap_lines=True)
        more_button(row.id)


def more_button(file_id: int) -> None:
    if st.button("More like this", key=f"dialog-more-{file_id}", type="primary", on_click=go_to_photo, args=(file_id,)):
        st.rerun()  # the whole page, not just this view, shows the new query


def filter_sidebar(searcher: Searcher) -> Filters:
    """The sidebar's filters (the CLI's --under, --after, --before, --camera, --min-width, --ext)."""
    choices = filter_choices(str(searcher.dir), searcher.snapshot.generation, searcher)
    st.header("Filters")
    if not searcher.snapshot.has_meta:
        st.caption("This index was made before imgembed recorded photo metadata: index its folder once "
                   "more to filter by date, camera and file type (nothing is embedded again).")
    folders = [f for f in choices["folders"] if f]
    under = st.selectbox("Folder", folders, index=None, key="f_under", placeholder="all folders",
                         help="photos in this folder and the folders inside it")
    after = st.date_input("Taken on or after", value=None, key="f_after", format="YYYY-MM-DD")
    before = st.date_input("Taken before", value=None, key="f_before", format="YYYY-MM-DD")
    camera = st.selectbox("Camera", choices["cameras"], index=None, key="f_camera", placeholder="any camera")
    min_width = st.number_input("Minimum width (pixels)", min_value=0, value=0, step=100, key="f_min_width")
    ext = st.multiselect("File types", choices["exts"], key="f_ext", placeholder="all types")
    return Filters(under=under, after=after.isoformat() if after else None,
                   before=before.isoformat() if before else None, camera=camera,
                   min_width=int(min_width) or None, ext=tuple(ext))


def search_view(searcher: Searcher, filters: Filters) -> None:
    backbone = searcher.snapshot.manifest["backbone"]
    has_text = searcher.embedder.has_text
    names = pick_list(str(searcher.dir), searcher.snapshot.generation, searcher)
    sync_inputs(names)
    left, right = st.columns(2, gap="large")
    with left:
        st.file_uploader(f"Upload a photo (up to {MAX_UPLOAD_MB} MB)", key=upload_key(), on_change=on_upload)
    with right:
        st.selectbox("…or pick a photo from the index", list(names), key="pick",
                     format_func=lambda i: names.get(i, str(i)), on_change=on_pick,
                     placeholder=f"choose one of {len(names)} photos")
        if has_text:
            st.text_input("…or describe a photo", key="text_query", on_change=on_text,
                          placeholder="a red dress")
        else:
            st.text_input("…or describe a photo", key="text_query", disabled=True,
                          placeholder="text search is unavailable for this index")
            st.caption(f"Text search needs a backbone with a text tower (CLIP). This index was built with "
                       f"**{md(backbone)}**, which only embeds images. Index with "
                       "`--backbone open_clip:ViT-B-32:laion2b_s34b_b79k` to search by words.")
    ss = st.session_state
    with st.expander(f"Options · {ss.get('k', 10)} results · minimum score {ss.get('min_score', 0.0):.2f} · "
                     f"query expansion {'on' if ss.get('qe') else 'off'}"):
        cols = st.columns(3, gap="large")
        k = cols[0].slider("Number of results (k)", 1, 50, 10, key="k")
        min_score = cols[1].slider("Minimum score", 0.0, 1.0, 0.0, 0.01, key="min_score",
                                   help="cosine similarity; 1.0 is the same photo, 0 shows every result")
        qe = cols[2].toggle("Query expansion", key="qe",
                            help="fold the 10 best matches into the query and search again: better at finding the "
                                 "same kind of subject, slower, and scores become similarities to the expanded query")

    query = history().current
    if query is None:
        st.info("Upload a photo, pick one from the index, or type a description to see the most similar photos.")
        back_button()
        return
    st.divider()
    t0 = time.perf_counter()
    try:
        if query.kind == "image":
            problem = upload_problem(query.name, len(query.image))
            if problem:
                raise ImageSkipped(problem)
        answer = searcher.answer(query, k, filters, qe=qe)
    except ValueError as e:  # a filter the index cannot apply
        st.error(md(str(e)))
        return
    except ImageSkipped as e:
        st.error(f"**{md(query.name)}** cannot be used as a query: {md(str(e))}. Try another photo.")
        back_button()
        return
    except StoreError as e:  # the photo left the index since
        st.warning(md(str(e)))
        back_button()
        return
    ms = 1000 * (time.perf_counter() - t0)
    shown = answer.above(min_score)

    qcol, rcol = st.columns([1, 5], gap="medium")
    with qcol, st.container(key="query"):
        st.markdown("**Query**")
        show_query(searcher, query, answer)
        back_button(stretch=True)
    with rcol:
        hidden = len(answer.hits) - len(shown)
        st.markdown(f"**{len(shown)} most similar photos** · query answered in **{ms:.0f} ms**"
                    + (f" · {hidden} below {min_score:.2f} hidden" if hidden else "")
                    + (f" · filters: {md(filters.describe())}" if filters else ""))
        result_grid(shown, filtered=bool(filters) and not answer.hits)


def back_button(stretch: bool = False) -> None:
    h = history()
    if h.can_go_back:
        st.button("← Back", key="back", on_click=h.back, width="stretch" if stretch else "content",
                  help=f"return to the previous query ({printable(query_label(h.previous()))})"
                  if h.previous() is not None else "return to the page without a query")


def show_query(searcher: Searcher, query: Query, answer: Answer) -> None:
    if query.kind == "image":
        try:
            im = fit(open_image(query.image, query_reader_cfg(), draft_to=THUMB_PX), THUMB_PX)
            st.image(jpeg_bytes(im), caption=md(query.name), width="stretch")
        except ImageSkipped:
            st.caption(md(query.name))
    elif query.kind == "id":
        row = searcher.snapshot.rows([query.id]).get(query.id)
        if row is not None:
            show_photo(row, md(shown_name(row)))
    else:
        st.markdown(f"“{md(query.text)}”")
    note = itself_note(query, answer.itself)
    if note:
        st.caption(md(note))


def result_grid(hits: list[Hit], filtered: bool = False) -> None:
    if not hits:
        st.info("No photo matches these filters." if filtered else
                "No photo reaches the minimum score; lower it to see more.")
        return
    with st.container(key="results"):
        for start in range(0, len(hits), GRID_COLS):
            cols = st.columns(GRID_COLS)
            for col, h in zip(cols, hits[start:start + GRID_COLS]):
                with col, st.container(key=f"card-{h.id}"):
                    result_card(h)


def result_card(h: Hit) -> None:
    """A thumbnail, the score, the name and the date and camera (a line each, cut with an ellipsis,
    in full on hover), "More like this"; the icon opens the full size."""
    name, about = shown_name(h.row), meta_line(h.meta)
    show_photo(h.row)
    text, view = st.columns([4, 1], gap="small", vertical_alignment="center")
    text.markdown(f'<div class="ie-score">{h.score:.3f}</div><div class="ie-name" title="{attr(name)}">'
                  f'{attr(name)}</div><div class="ie-name" title="{attr(about)}">{attr(about) or "&nbsp;"}</div>',
                  unsafe_allow_html=True)
    if view.button("", key=f"view-{h.id}", icon=":material/open_in_full:", type="tertiary",
                   help="full size, with its details and path"):
        photo_dialog(h.row, h.meta)
    st.button("More like this", key=f"more-{h.id}", on_click=go_to_photo, args=(h.id,), width="stretch")
