"""The duplicates view: groups of copies found by a preset or a threshold, each with its suggested
keeper, and the ticked files as a CSV list or a script that moves them. It never deletes or moves
anything itself."""

from __future__ import annotations

import streamlit as st

from imgembed.query.copies import PRESETS, Group, Report, find_duplicates
from imgembed.query.duplicate_export import drop_csv, move_script
from imgembed.query.present import shown_name
from imgembed.query.search import Searcher
from imgembed.ui.common import md, show_photo

MAX_GROUPS = 60  # duplicate groups drawn at once
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
