"""The collection map as an interactive chart: a point on every thumbnail, named on hover, that
reports which photo a click picked; larger collections show a fixed sample and say so."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from helpers import TINY, write_photos
from PIL import Image

from imgembed.config import BackboneCfg, IndexJobCfg
from imgembed.indexer import index_folder
from imgembed.query.map_view import GAP, build_map, clicked_photo, map_figure
from imgembed.query.search import Searcher


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    folder = tmp_path_factory.mktemp("p")
    write_photos(folder, 12)
    cfg = IndexJobCfg(backbone=BackboneCfg(name=TINY))
    cfg.embed.workers = 0
    ix = tmp_path_factory.mktemp("ix") / "ix"
    index_folder(folder, ix, cfg)
    return ix


def test_every_photo_gets_a_named_clickable_point_on_its_thumbnail(index):
    snap = Searcher(index).snapshot
    m = build_map(snap, 400, 32)
    assert sorted(m.ids) == sorted(snap.visible_ids().tolist()) and not m.sampled
    by_id = {r.id: r.relpath.decode() for r in snap.iter_rows()}
    assert m.names == [by_id[i] for i in m.ids]
    w, h = m.size
    assert Image.open(io.BytesIO(m.jpeg)).size == (w, h)
    xy = m.centres()
    assert len({tuple(p) for p in xy.tolist()}) == len(m.ids)  # one cell each
    assert (xy[:, 0] > GAP).all() and (xy[:, 0] < w).all() and (xy[:, 1] > 0).all() and (xy[:, 1] < h).all()
    fig = map_figure(m)
    trace = fig["data"][0]
    assert [c[0] for c in trace["customdata"]] == m.ids and [c[1] for c in trace["customdata"]] == m.names
    assert "customdata[1]" in trace["hovertemplate"]  # hover names the photo
    assert "select" in fig["layout"]["clickmode"]  # a click is a selection event
    img = fig["layout"]["images"][0]
    assert base64.b64decode(img["source"].split(",", 1)[1]) == m.jpeg and (img["sizex"], img["sizey"]) == (w, h)
    lay = fig["layout"]  # the axes span the canvas exactly, however wide the page
    assert lay["xaxis"]["range"] == [0, w] and lay["yaxis"]["range"] == [0, h]
    assert lay["xaxis"]["autorange"] is False and lay["yaxis"]["autorange"] is False
    assert m.id_at(0) == m.ids[0] and m.id_at(len(m.ids)) is None and m.id_at(-1) is None
    assert m.caption().startswith("All 12 photos")


def test_a_larger_collection_shows_a_fixed_sample_and_says_so(index):
    snap = Searcher(index).snapshot
    a, b = build_map(snap, 5, 16), build_map(snap, 5, 16)
    assert a.sampled and len(a.ids) == 5 and a.total == 12
    assert a.ids == b.ids and np.array_equal(a.cells, b.cells)  # the same sample every time
    assert a.caption().startswith("A fixed random sample of 5 of the 12 photos")



def test_a_click_on_the_map_names_its_photo():
    ids = [7, 3, 9]
    assert clicked_photo({"selection": {"points": [{"point_index": 1, "customdata": [3, "b.jpg"]}]}}, ids) == 3
    assert clicked_photo({"selection": {"points": [{"point_index": 2}]}}, ids) == 9  # no customdata sent back
    assert clicked_photo({"selection": {"points": [{"point_number": 0}]}}, ids) == 7
    for nothing in (None, {}, {"selection": {"points": []}}, {"selection": {"points": [{"point_index": 5}]}}):
        assert clicked_photo(nothing, ids) is None
