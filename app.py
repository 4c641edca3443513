"""Streamlit front end: ``streamlit run app.py``. Thin: it calls the library and renders."""

from __future__ import annotations

import os
import time

import streamlit as st

from imgembed.reader import ImageSkipped
from imgembed.search import Searcher
from imgembed.store import StoreError

st.set_page_config(page_title="imgembed", layout="wide")
INDEX = os.environ.get("IMGEMBED_INDEX", "demo-index")


@st.cache_resource
def load_searcher(index_dir: str) -> Searcher:
    s = Searcher(index_dir)
    _ = s.embedder  # load the model once per process
    return s


st.title("imgembed: find similar photos")
try:
    searcher = load_searcher(INDEX)
except StoreError as e:
    st.error(str(e))
    st.info("Build an index first: `imgembed index FOLDER --index DIR`, then `IMGEMBED_INDEX=DIR streamlit run app.py`.")
    st.stop()

k = st.slider("results", 1, 50, 12)
upload = st.file_uploader("Upload a photo", type=["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"])
if upload is not None:
    t0 = time.perf_counter()
    try:
        hits = searcher.search_image_bytes(upload.getvalue(), k)
    except ImageSkipped as e:
        st.error(f"That file cannot be used: {e}")
        st.stop()
    st.caption(f"{len(hits)} results in {1000 * (time.perf_counter() - t0):.0f} ms")
    cols = st.columns(4)
    for i, h in enumerate(hits):
        with cols[i % 4]:
            st.image(h.row.path.decode("utf-8", "replace"), caption=f"{h.score:.3f}")
