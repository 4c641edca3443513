"""The collection view: what the index holds, and a map of its photos to click."""

from __future__ import annotations

import streamlit as st

from imgembed.query.map_view import CollectionMap, build_map, map_figure
from imgembed.query.search import Searcher
from imgembed.ui.common import md
from imgembed.ui.query_state import on_map_click

MAP_MAX = 400  # photos drawn on the map (a fixed random sample of larger collections)
MAP_CELL = 64


@st.cache_data(max_entries=4, show_spinner="Drawing the map…")
def collection_map(index_dir: str, generation: int, _searcher: Searcher) -> CollectionMap | None:
    return build_map(_searcher.snapshot, MAP_MAX, MAP_CELL)


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
