"""Streamlit front end: ``streamlit run app.py``. Thin: it calls the library and renders.

Three views over one index: search (upload, pick a photo, text with CLIP, "more like this"),
duplicates (groups of copies with a suggested keeper; ticked files can be downloaded as a list
or a script that moves them) and collection (what the index holds, a map to click). The page
answers one query at a time and can go back to the previous one; the open index and the view are
in the page's address, and the index opened last is remembered for new tabs
(:mod:`imgembed.query.recent`). The app only reads files recorded in the index, looked up by id,
and shows their names escaped. It never deletes or moves anything.
"""

from __future__ import annotations

import html
import re
import time

import streamlit as st

from imgembed.config import (
    DEFAULT_BACKBONE,
    MAX_UPLOAD_MB,
    BackboneCfg,
    EmbedCfg,
    IndexJobCfg,
    ReaderCfg,
    default_index,
    query_reader_cfg,
)
from imgembed.errors import BackboneError, HeadError
from imgembed.index.filters import Filters
from imgembed.index.format import Meta, Row, StoreError
from imgembed.indexer import index_folder
from imgembed.ingest.cpu import use_query_threads
from imgembed.ingest.reader import ImageSkipped, open_image
from imgembed.query.copies import PRESETS, Group, Report, find_duplicates
from imgembed.query.duplicate_export import drop_csv, move_script
from imgembed.query.history import QueryHistory
from imgembed.query.map_view import CollectionMap, build_map, clicked_photo, map_figure
from imgembed.query.present import (
    details,
    itself_note,
    meta_line,
    query_label,
    shown_name,
    shown_path,
    upload_problem,
)
from imgembed.query.recent import index_for_page, is_index, load_settings, opened, recent_indexes
from imgembed.query.search import Answer, Hit, Query, Searcher
from imgembed.query.thumbnails import fit, jpeg_bytes, thumbnail
from imgembed.text import printable

GRID_COLS = 5
THUMB_PX = 256
FULL_PX = 1280  # the full-size view's longest side
MAP_MAX = 400  # photos drawn on the map (a fixed random sample of larger collections)
MAP_CELL = 64
PICK_MAX = 5000  # photos offered in the "pick from the index" list
MAX_GROUPS = 60  # duplicate groups drawn at once
VIEWS = ("Search", "Duplicates", "Collection")
OPEN_ERRORS = (StoreError, BackboneError, HeadError, ValueError, OSError)

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

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&])")


def md(text: str) -> str:
    """``text`` escaped for Streamlit Markdown: shown literally, never as markup."""
    return _MD_SPECIAL.sub(r"\\\1", printable(text))  # one line: control characters escaped


def attr(text: str) -> str:
    """``text`` escaped for HTML (element text or a quoted attribute)."""
    return html.escape(printable(text), quote=True)


# ---------------------------------------------------------------- cached resources and data


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


@st.cache_data(max_entries=4, show_spinner="Drawing the map…")
def collection_map(index_dir: str, generation: int, _searcher: Searcher) -> CollectionMap | None:
    return build_map(_searcher.snapshot, MAP_MAX, MAP_CELL)


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


# ---------------------------------------------------------------- the one current query


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


# ---------------------------------------------------------------- pieces


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


def build_form(target: str, key: str, backbone: str = DEFAULT_BACKBONE) -> None:
    """Index a folder typed into the page, with a progress bar and the CLI's summary; the index
    built becomes the open one."""
    with st.form(f"build-{key}"):
        folder = st.text_input("Folder of photos to index", key=f"{key}-folder",
                               placeholder="/home/me/Pictures")
        index_dir = st.text_input("Index folder", value=target, key=f"{key}-index")
        backbone = st.text_input(
            "Backbone", value=backbone, key=f"{key}-backbone",
            help="efficientnet-lite0 works offline; open_clip:ARCH:WEIGHTS adds text search")
        go_ = st.form_submit_button("Index this folder", type="primary")
    if not go_:
        return
    if not folder.strip():
        st.error("Type the path of a folder of photos first.")
        return
    bar = st.progress(0.0, text="Loading the model and scanning the folder…")

    verbs = {"hash": "Checking known files", "metadata": "Reading photo metadata", "copies": "Preparing copy detection"}

    def progress(stage: str, done: int, total: int) -> None:
        verb = verbs.get(stage, "Embedding photos")
        bar.progress(done / max(total, 1), text=f"{verb}: {done} / {total}")

    cfg = IndexJobCfg(backbone=BackboneCfg(name=backbone.strip()), embed=EmbedCfg(workers=0))
    try:
        summary = index_folder(folder.strip(), index_dir.strip(), cfg, progress=progress)
    except OPEN_ERRORS as e:
        bar.empty()
        st.error(f"Could not index that folder: {md(str(e))}")
        return
    bar.progress(1.0, text="Done")
    st.session_state["built"] = {"lines": summary.lines(), "skipped": summary.skipped}
    open_index(index_dir.strip())
    st.rerun()


def on_recent() -> None:
    if st.session_state.get("recent"):
        open_index(st.session_state.pop("recent"))


def open_index(index_dir: str) -> None:
    """Make ``index_dir`` the page's index: in its address, and remembered for new tabs."""
    st.query_params["index"] = index_dir
    st.session_state.pop("history", None)
    st.session_state["view"] = "Search"


def build_report() -> None:
    built = st.session_state.pop("built", None)
    if not built:
        return
    st.success("  \n".join(md(line) for line in built["lines"]))
    if built["skipped"]:
        with st.expander(f"{len(built['skipped'])} files skipped"):
            for path, reason in built["skipped"][:500]:
                st.markdown(f"- {md(path)}: {md(reason)}")


def open_form(current: str) -> None:
    """Open another index: one of the recent ones, or a folder typed in."""
    recent = [r for r in recent_indexes(load_settings()) if r.path != current]
    live = [r.path for r in recent if r.exists]
    if live:
        st.selectbox("Recent indexes", live, index=None, key="recent", placeholder=f"{len(live)} opened before",
                     format_func=printable, on_change=on_recent)
    with st.form("open-index", border=False):
        typed = st.text_input("Index folder", key="open-path", placeholder="/home/me/pictures-index")
        if st.form_submit_button("Open") and typed.strip():
            open_index(typed.strip())
            st.rerun()


def no_index_page(index_dir: str, problem: str) -> None:
    st.title("imgembed: find similar photos")
    if is_index(index_dir):  # an index that cannot be read: why
        st.error(f"Cannot open the index at {md(index_dir)}: {md(problem)}")
    else:  # none yet: nothing went wrong
        st.info(f"There is no index at {md(index_dir)} yet.")
    st.markdown(
        "An index holds the embeddings of a folder of photos. Build one here, or on the command line "
        "and point the app at it:\n\n"
        "```\nimgembed index ~/Pictures --index my-index\nIMGEMBED_INDEX=my-index streamlit run app.py\n```\n"
        "(`make demo` builds the demo index from `assets/photos`.)")
    build_form(index_dir, "first")
    with st.sidebar:
        st.header("Open an index")
        open_form(index_dir)


# ---------------------------------------------------------------- views


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


DUP_MODES = {"copies": "Copies (edited copies of one photo)", "exact": "Exact (same pixels)",
             "similar": "Similar (also near-identical scenes)", "threshold": "Custom similarity threshold"}


@st.cache_data(max_entries=8, show_spinner="Looking for duplicates (hashes, neighbours, keypoints)…")
def duplicate_report(index_dir: str, generation: int, mode: str, threshold: float, _searcher: Searcher) -> Report:
    if mode == "threshold":
        return find_duplicates(_searcher.snapshot, threshold=threshold)
    return find_duplicates(_searcher.snapshot, preset=mode)


def tick_all_but_keepers(groups: list[Group]) -> None:
    for g in groups:
        for m in g.members:
            st.session_state[f"drop-{m.row.id}"] = m.row.id != g.keeper.row.id


def clear_ticks(groups: list[Group]) -> None:
    for g in groups:
        for m in g.members:
            st.session_state[f"drop-{m.row.id}"] = False


def duplicates_view(searcher: Searcher) -> None:
    top = st.columns([3, 2], gap="large")
    with top[0]:
        mode = st.radio("Find", list(DUP_MODES), format_func=DUP_MODES.get, horizontal=True, key="dup_mode")
    threshold = 0.95
    with top[1]:
        if mode == "threshold":
            threshold = st.slider("Similarity threshold", 0.5, 1.0, 0.95, 0.005, key="dup_threshold", format="%.3f",
                                  help="embedding cosine; photos at least this similar are grouped, copies or not")
        elif mode in PRESETS:
            st.caption(f"**{mode}**: {md(PRESETS[mode].description)}; {md(PRESETS[mode].precision)}.")
    report = duplicate_report(str(searcher.dir), searcher.snapshot.generation, mode, threshold, searcher)
    groups = report.groups[:MAX_GROUPS]
    n_photos = sum(len(g.members) for g in report.groups)
    st.caption(f"{len(report.groups)} groups holding {n_photos} photos ({md(report.description)}), found in "
               f"{report.seconds:.1f} s. The suggested keeper of each group comes first. The app never deletes or "
               "moves anything: tick the files to drop, then download their list or a script that moves them.")
    missing = report.stats.get("missing copy data", 0)
    if missing:
        st.warning(f"{missing} photos have no copy-detection data yet; index their folder again to add it "
                   "(nothing is embedded again).")
    if not groups:
        st.info("No duplicates found. Try the similar preset, or a custom threshold.")
        return
    for n, g in enumerate(groups, 1):
        with st.container(border=True):
            label = " · **identical bytes**" if g.kind == "identical bytes" else f" · {md(g.kind)}"
            st.markdown(f"**Group {n}** · {len(g.members)} photos{label} · keep "
                        f"**{md(shown_name(g.keeper.row))}**: {md(g.reason)}")
            cols = st.columns(max(len(g.members), 4))
            for col, m in zip(cols, g.members):
                with col:
                    badge = "**keep** · " if m.row.id == g.keeper.row.id else ""
                    show_photo(m.row, f"{badge}{md(shown_name(m.row))}  \n{m.row.width}×{m.row.height} px · "
                               f"{m.row.size / 1024:.0f} KB · {md(m.kind)} · {md(m.evidence)} · "
                               f"cosine {m.score:.3f}", size=200)
                    st.checkbox("drop", key=f"drop-{m.row.id}")
    if len(report.groups) > MAX_GROUPS:
        st.caption(f"…and {len(report.groups) - MAX_GROUPS} more groups (the CLI lists them all: "
                   "imgembed duplicates --csv FILE).")
    drop_panel(searcher, groups)


def drop_panel(searcher: Searcher, groups: list[Group]) -> None:
    st.subheader("Files to drop")
    b = st.columns(2)
    b[0].button("Tick all but the suggested keepers", on_click=tick_all_but_keepers, args=(groups,), key="tick-all")
    b[1].button("Clear the ticks", on_click=clear_ticks, args=(groups,), key="tick-none")
    ticked = [m.row for g in groups for m in g.members if st.session_state.get(f"drop-{m.row.id}")]
    if not ticked:
        st.info("Tick the files to drop; their list and a script that moves them appear here.")
        return
    target = st.text_input("Move them to", value="~/imgembed-duplicates", key="drop_target",
                           help="the script moves the files there (it never deletes, never overwrites)")
    st.markdown(f"**{len(ticked)} files ticked**, {sum(r.size for r in ticked) / 2**20:.1f} MiB.")
    d = st.columns(2)
    d[0].download_button("Download the list (CSV)", drop_csv(ticked), file_name="duplicates-to-drop.csv",
                         mime="text/csv", key="dl-csv")
    d[1].download_button("Download a script that moves them", move_script(ticked, target.strip()),
                         file_name="move-duplicates.sh", mime="text/x-shellscript", key="dl-sh")
    st.caption("Read the script, then run it with `sh move-duplicates.sh` (or pass another folder).")


def collection_view(searcher: Searcher) -> None:
    info = searcher.info()
    with st.container(key="facts"):
        cols = st.columns(4)
    cols[0].metric("Photos", f"{info.count:,}")
    cols[1].metric("On disk", f"{info.disk_bytes / 2**20:.1f} MiB")
    cols[2].metric("Dimensions", info.dim)
    cols[3].metric("Generation", info.generation)
    st.markdown(f"**Backbone** {md(info.backbone)} · **index type** {md(info.index_type or 'empty')} · "
                f"**head** {md(info.head or 'none')} · **projection** {md(info.projection)} · "
                f"**database-side augmentation** {info.dba} · **metric** {info.metric}  \n"
                f"**Index folder** {md(info.path)}")
    st.subheader("Map of the collection")
    m = collection_map(str(searcher.dir), searcher.snapshot.generation, searcher)
    if m is None:
        st.info("The index is empty.")
        return
    st.caption(m.caption())
    st.session_state["map_ids"] = m.ids
    w, h = m.size
    st.html(f"<style>.st-key-mapbox {{ aspect-ratio: {w} / {h}; max-height: 85vh; }}</style>")
    with st.container(key="mapbox"):  # the chart takes the map's shape at any width
        st.plotly_chart(map_figure(m), key="map", on_select=on_map_click, selection_mode="points",
                        height="stretch", config={"displayModeBar": False, "scrollZoom": False, "responsive": True})


# ---------------------------------------------------------------- page


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
