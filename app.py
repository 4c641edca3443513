"""Streamlit front end: ``streamlit run app.py``. Thin: it calls the library and renders.

Three views over one index: search (upload, pick a photo, text with CLIP, "more like this"),
duplicates (groups of copies with a suggested keeper; ticked files can be downloaded as a list
or a script that moves them) and collection (what the index holds, a 2-D map). The app only reads
files recorded in the index, looked up by id, and shows their names escaped. It never deletes or
moves anything.
"""

from __future__ import annotations

import re
import time

import streamlit as st

from imgembed.config import (
    DEFAULT_BACKBONE,
    IMAGE_FORMATS,
    MAX_UPLOAD_MB,
    BackboneCfg,
    EmbedCfg,
    IndexJobCfg,
    ReaderCfg,
    default_index,
    query_reader_cfg,
)
from imgembed.index.filters import Filters
from imgembed.index.format import Meta, Row, StoreError
from imgembed.indexer import index_folder
from imgembed.ingest.reader import ImageSkipped, open_image
from imgembed.model.backbones import BackboneError
from imgembed.model.embedder import use_query_threads
from imgembed.model.head import HeadError
from imgembed.query.collection import collection_map
from imgembed.query.copies import PRESETS, Group, Report, find_duplicates
from imgembed.query.duplicate_export import drop_csv, move_script
from imgembed.query.search import Hit, Query, Searcher
from imgembed.query.thumbnails import fit, jpeg_bytes, thumbnail
from imgembed.text import printable

UPLOAD_TYPES = [ext.lstrip(".") for ext in IMAGE_FORMATS]  # the reader opens only these formats (heic, avif too)
GRID_COLS = 5
THUMB_PX = 256
MAP_MAX = 400  # photos drawn on the map (a fixed random sample of larger collections)
MAP_CELL = 64
PICK_MAX = 5000  # photos offered in the "pick from the index" list
MAX_GROUPS = 60  # duplicate groups drawn at once
OPEN_ERRORS = (StoreError, BackboneError, HeadError, ValueError, OSError)

st.set_page_config(page_title="imgembed: similar photos", page_icon="🔎", layout="wide")

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~$:&])")


def md(text: str) -> str:
    """``text`` escaped for Streamlit Markdown: shown literally, never as markup."""
    return _MD_SPECIAL.sub(r"\\\1", printable(text))  # one line: control characters escaped


def shown_name(row: Row) -> str:
    return row.relpath.decode("utf-8", "replace")


def shown_meta(meta: Meta | None) -> str:
    """``2023-06-01 · Apple iPhone 15``; a date from the file's modification time is marked ``~``."""
    if meta is None:
        return ""
    date = ("~" if meta.taken_from == "mtime" else "") + meta.taken[:10]
    return " · ".join(md(part) for part in (date, meta.camera) if part)


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
def map_jpeg(index_dir: str, generation: int, _searcher: Searcher) -> tuple[bytes | None, int]:
    """A JPEG of up to MAP_MAX thumbnails placed by a PCA of their embeddings, and how many."""
    canvas, n = collection_map(_searcher.snapshot, MAP_MAX, MAP_CELL)
    return (jpeg_bytes(canvas, quality=80) if canvas is not None else None), n


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


# ---------------------------------------------------------------- pieces


def show_photo(row: Row, caption: str, size: int = THUMB_PX, square: bool = True) -> None:
    data, why = thumb_jpeg(row.path, row.mtime_ns, size, square)
    if data is None:
        st.warning(f"No preview of {md(shown_name(row))}: {md(why)}")
        st.caption(caption)
    else:
        st.image(data, caption=caption, width="stretch")


def set_query(query: dict | None) -> None:
    st.session_state["query"] = query


def on_pick() -> None:
    if st.session_state.get("pick") is not None:
        set_query({"kind": "id", "id": int(st.session_state["pick"])})


def on_text() -> None:
    text = (st.session_state.get("text_query") or "").strip()
    set_query({"kind": "text", "text": text} if text else None)


def current_query(upload) -> dict | None:
    """The query to answer: the newest of an upload, a picked photo, a text or a "more like this"."""
    ss = st.session_state
    if upload is not None and ss.get("seen_upload") != upload.file_id:
        ss["seen_upload"] = upload.file_id
        set_query({"kind": "upload"})
    elif upload is None and (ss.get("query") or {}).get("kind") == "upload":
        ss.pop("seen_upload", None)
        set_query(None)
    return ss.get("query")


def build_form(target: str, key: str, backbone: str = DEFAULT_BACKBONE) -> None:
    """Index a folder typed into the page, with a progress bar and the CLI's summary."""
    with st.form(f"build-{key}"):
        folder = st.text_input("Folder of photos to index", key=f"{key}-folder",
                               placeholder="/home/me/Pictures")
        index_dir = st.text_input("Index folder", value=target, key=f"{key}-index")
        backbone = st.text_input(
            "Backbone", value=backbone, key=f"{key}-backbone",
            help="efficientnet-lite0 works offline; open_clip:ARCH:WEIGHTS adds text search")
        go = st.form_submit_button("Index this folder", type="primary")
    if not go:
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
    except (*OPEN_ERRORS, NotADirectoryError) as e:
        bar.empty()
        st.error(f"Could not index that folder: {md(str(e))}")
        return
    bar.progress(1.0, text="Done")
    st.session_state["built"] = {"lines": summary.lines(), "skipped": summary.skipped}
    st.session_state["index_dir"] = index_dir.strip()
    st.rerun()


def build_report() -> None:
    built = st.session_state.pop("built", None)
    if not built:
        return
    st.success("  \n".join(md(line) for line in built["lines"]))
    if built["skipped"]:
        with st.expander(f"{len(built['skipped'])} files skipped"):
            for path, reason in built["skipped"][:500]:
                st.markdown(f"- {md(path)}: {md(reason)}")


def no_index_page(index_dir: str, problem: str) -> None:
    st.title("imgembed: find similar photos")
    st.error(f"Cannot open the index at {md(index_dir)}: {md(problem)}")
    st.markdown(
        "An index holds the embeddings of a folder of photos. Build one here, or on the command line "
        "and point the app at it:\n\n"
        "```\nimgembed index ~/Pictures --index my-index\nIMGEMBED_INDEX=my-index streamlit run app.py\n```\n"
        "(`make demo` builds the demo index from `assets/photos`.)")
    build_form(index_dir, "first")


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
    top = st.columns([3, 2], gap="large")
    with top[0]:
        upload = st.file_uploader(f"Upload a photo (up to {MAX_UPLOAD_MB} MB)", type=UPLOAD_TYPES, key="upload")
    with top[1]:
        k = st.slider("Number of results (k)", 1, 50, 10, key="k")
        min_score = st.slider("Minimum score", 0.0, 1.0, 0.0, 0.01, key="min_score",
                              help="cosine similarity; 1.0 is the same photo, 0 shows every result")
        qe = st.toggle("Query expansion", key="qe",
                       help="fold the 10 best matches into the query and search again: better at finding the "
                            "same kind of subject, slower, and scores become similarities to the expanded query")
    left, right = st.columns(2, gap="large")
    with left:
        names = pick_list(str(searcher.dir), searcher.snapshot.generation, searcher)
        st.selectbox("…or pick a photo from the index", list(names), index=None, key="pick",
                     format_func=lambda i: names.get(i, str(i)), on_change=on_pick,
                     placeholder=f"choose one of {len(names)} photos")
    with right:
        if has_text:
            st.text_input("…or describe a photo", key="text_query", on_change=on_text,
                          placeholder="a red dress")
        else:
            st.text_input("…or describe a photo", key="text_query", disabled=True,
                          placeholder="text search is unavailable for this index")
            st.caption(f"Text search needs a backbone with a text tower (CLIP). This index was built with "
                       f"**{md(backbone)}**, which only embeds images. Index with "
                       "`--backbone open_clip:ViT-B-32:laion2b_s34b_b79k` to search by words.")

    query = current_query(upload)
    if query is None:
        st.info("Upload a photo, pick one from the index, or type a description to see the most similar photos.")
        return
    st.divider()
    t0 = time.perf_counter()
    try:
        if query["kind"] == "upload":
            data = upload.getvalue()
            if len(data) > MAX_UPLOAD_MB * 2**20:
                raise ImageSkipped(f"file is {len(data) / 2**20:.0f} MB, above the {MAX_UPLOAD_MB} MB upload limit")
            hits = searcher.search(Query("image", image=data), k, filters, qe=qe)
        else:
            hits = searcher.search(Query(query["kind"], id=query.get("id", -1), text=query.get("text", "")), k,
                                   filters, qe=qe)
    except ValueError as e:  # a filter the index cannot apply
        st.error(md(str(e)))
        return
    except ImageSkipped as e:
        st.error(f"**{md(upload.name)}** cannot be used as a query: {md(str(e))}. Try another photo.")
        return
    except StoreError as e:  # the picked photo left the index since
        st.warning(md(str(e)))
        set_query(None)
        return
    ms = 1000 * (time.perf_counter() - t0)
    shown = [h for h in hits if h.score >= min_score] if min_score > 0 else hits

    qcol, rcol = st.columns([1, 5], gap="medium")
    with qcol:
        st.markdown("**Query**")
        show_query(searcher, query, upload)
    with rcol:
        st.markdown(f"**{len(shown)} most similar photos** · query answered in **{ms:.0f} ms**"
                    + (f" · {len(hits) - len(shown)} below {min_score:.2f} hidden" if len(shown) < len(hits) else "")
                    + (f" · filters: {md(filters.describe())}" if filters else ""))
        result_grid(shown, filtered=bool(filters) and not hits)


def show_query(searcher: Searcher, query: dict, upload) -> None:
    if query["kind"] == "upload":
        try:
            im = fit(open_image(upload.getvalue(), query_reader_cfg(), draft_to=THUMB_PX), THUMB_PX)
            st.image(jpeg_bytes(im), caption=md(upload.name), width="stretch")
        except ImageSkipped:
            st.caption(md(upload.name))
    elif query["kind"] == "id":
        row = searcher.snapshot.rows([query["id"]]).get(query["id"])
        if row is not None:
            show_photo(row, md(shown_name(row)))
    else:
        st.markdown(f"“{md(query['text'])}”")


def result_grid(hits: list[Hit], filtered: bool = False) -> None:
    if not hits:
        st.info("No photo matches these filters." if filtered else
                "No photo reaches the minimum score; lower it to see more.")
        return
    for start in range(0, len(hits), GRID_COLS):
        cols = st.columns(GRID_COLS)
        for col, h in zip(cols, hits[start:start + GRID_COLS]):
            with col:
                about = shown_meta(h.meta)
                show_photo(h.row, f"**{h.score:.3f}** · {md(shown_name(h.row))}" + (f"  \n{about}" if about else ""))
                st.button("More like this", key=f"more-{h.id}", on_click=set_query,
                          args=({"kind": "id", "id": h.id},), width="stretch")


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
    cols = st.columns([1, 3, 1, 1, 1, 1])
    cols[0].metric("Photos", f"{info.count:,}")
    cols[1].metric("Backbone", info.backbone)
    cols[2].metric("Dimensions", info.dim)
    cols[3].metric("Index type", info.index_type or "empty")
    cols[4].metric("On disk", f"{info.disk_bytes / 2**20:.1f} MiB")
    cols[5].metric("Generation", info.generation)
    st.caption(f"Backbone {md(info.backbone)} · head {md(info.head or 'none')} · projection {md(info.projection)} · "
               f"database-side augmentation {info.dba} · metric {info.metric} · "
               f"index folder {md(info.path)}")
    st.subheader("Map of the collection")
    data, n = map_jpeg(str(searcher.dir), searcher.snapshot.generation, searcher)
    if data is None:
        st.info("The index is empty.")
        return
    sample = f"a random sample of {n} of the {info.count} photos" if n < info.count else f"all {n} photos"
    st.caption(f"{sample.capitalize()}, placed by the two main directions (PCA) of their embeddings and "
               "snapped to a grid: similar photos sit together.")
    st.image(data, width="stretch")


# ---------------------------------------------------------------- page


def main() -> None:
    index_dir = st.session_state.get("index_dir") or default_index()
    try:
        searcher = load_searcher(index_dir)
    except OPEN_ERRORS as e:
        no_index_page(index_dir, str(e))
        return
    info = searcher.info()
    st.title("imgembed: find similar photos")
    st.caption(f"{info.count:,} photos · {md(info.backbone)} · {info.dim}-d · index {md(info.path)}")
    build_report()
    with st.sidebar:
        st.header("Index")
        st.markdown(f"**{info.count:,}** photos  \nbackbone **{md(info.backbone)}**  \n"
                    f"{info.dim}-d · {info.index_type or 'empty'} · {info.disk_bytes / 2**20:.1f} MiB")
        with st.expander("Index another folder"):
            st.caption("New photos are added to the index; unchanged ones are skipped.")
            build_form(index_dir, "more", info.backbone)
        filters = filter_sidebar(searcher) if info.count else Filters()
    if info.count == 0:
        st.warning("This index is empty. Index a folder of photos (sidebar) to start.")
        return
    view = st.radio("View", ["Search", "Duplicates", "Collection"], horizontal=True, key="view",
                    label_visibility="collapsed")
    if view == "Search":
        search_view(searcher, filters)
    elif view == "Duplicates":
        duplicates_view(searcher)
    else:
        collection_view(searcher)


main()
