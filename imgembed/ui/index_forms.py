"""Opening and building indexes from the page: the form that indexes a folder (with a progress bar and
the CLI's summary), the recent indexes, and the page shown when there is no index yet."""

from __future__ import annotations

import streamlit as st

from imgembed.config import DEFAULT_BACKBONE, BackboneCfg, EmbedCfg, IndexJobCfg
from imgembed.indexer import index_folder
from imgembed.query.recent import is_index, load_settings, recent_indexes
from imgembed.text import printable
from imgembed.ui.common import OPEN_ERRORS, md


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
