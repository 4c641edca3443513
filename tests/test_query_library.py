"""What the app shows comes from library functions a plain test can call: the neighbour graph and
map of an index, the suggested keeper, and one dispatch for every kind of query."""

from collections import namedtuple

import numpy as np
import pytest
from helpers import TINY, write_photos
from test_duplicates import reference_groups

from imgembed.config import BackboneCfg, IndexJobCfg
from imgembed.index.format import StoreError
from imgembed.indexer import index_folder
from imgembed.query import collection
from imgembed.query.collection import collection_map, neighbour_graph_of
from imgembed.query.duplicates import duplicate_groups, keeper_of
from imgembed.query.search import Query, Searcher


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    folder = tmp_path_factory.mktemp("p")
    write_photos(folder, 14)
    (folder / "copy.jpg").write_bytes((folder / "img0003.jpg").read_bytes())  # an exact copy
    cfg = IndexJobCfg(backbone=BackboneCfg(name=TINY))
    cfg.embed.workers = 0
    ix = tmp_path_factory.mktemp("ix") / "ix"
    index_folder(folder, ix, cfg)
    return ix


def _all(searcher):
    ids = searcher.snapshot.visible_ids()
    return searcher.snapshot.vectors_array(ids)


def test_neighbour_graph_of_an_index_matches_all_pairs(index):
    s = Searcher(index)
    ids, vecs = _all(s)
    graph = neighbour_graph_of(s.snapshot, k=len(ids) - 1)
    assert sorted(graph.ids.tolist()) == sorted(ids.tolist())
    for t in (0.9, 0.99, 0.9999):
        got = sorted(g.ids for g in duplicate_groups(graph, t))
        assert got == reference_groups(ids, vecs, t)
    copy = {r.id for r in s.snapshot.iter_rows() if r.relpath in (b"copy.jpg", b"img0003.jpg")}
    assert any(set(g.ids) == copy for g in duplicate_groups(graph, 0.9999))


def test_the_chunked_path_through_the_index_gives_the_same_graph(index, monkeypatch):
    s = Searcher(index)
    exact = neighbour_graph_of(s.snapshot, k=4)
    monkeypatch.setattr(collection, "EXACT_GRAPH_MAX", 0)
    monkeypatch.setattr(collection, "GRAPH_CHUNK", 4)
    chunked = neighbour_graph_of(s.snapshot, k=4)
    order_e, order_c = np.argsort(exact.ids), np.argsort(chunked.ids)
    assert np.array_equal(exact.ids[order_e], chunked.ids[order_c])
    assert np.allclose(exact.score[order_e], chunked.score[order_c], atol=1e-5)


def test_collection_map_places_every_photo(index):
    s = Searcher(index)
    canvas, n = collection_map(s.snapshot, max_photos=100, cell=16)
    assert n == 15 and canvas.width > 16 and canvas.height > 16
    canvas, n = collection_map(s.snapshot, max_photos=5, cell=16)
    assert n == 5  # a fixed sample of larger collections


Member = namedtuple("Member", "id width height size mtime_ns path")


def test_keeper_is_the_largest_resolution_then_file_then_oldest():
    def m(i, w, h, size, mtime=0, path=None):
        return Member(i, w, h, size, mtime, path or f"/p/{i}.jpg")

    assert keeper_of([m(1, 10, 10, 500), m(2, 20, 10, 100)]) == (2, "largest resolution (20x10)")
    assert keeper_of([m(1, 20, 10, 500), m(2, 20, 10, 100), m(3, 5, 5, 900)]) == (
        1, "largest file (0 KiB) at the largest resolution")
    i, why = keeper_of([m(1, 20, 10, 100, 2_000_000_000), m(2, 10, 20, 100, 1_000_000_000)])
    assert i == 2 and why.startswith("oldest (")  # same pixel count and size: the older one
    assert keeper_of([m(2, 20, 10, 100, 5, "/b.jpg"), m(1, 20, 10, 100, 5, "/a.jpg")])[0] == 1  # all equal
    assert keeper_of([m(7, 1, 1, 1)]) == (7, "the only photo")
    with pytest.raises(ValueError):
        keeper_of([])


def test_one_dispatch_for_every_kind_of_query(index):
    s = Searcher(index)
    row = next(r for r in s.snapshot.iter_rows() if r.relpath == b"img0005.jpg")
    with open(row.path, "rb") as f:
        by_image = s.search(Query("image", image=f.read()), k=3)
    assert by_image[0].id == row.id and by_image[0].score == pytest.approx(1.0, abs=1e-5)
    by_id = s.search(Query("id", id=row.id), k=3)
    assert row.id not in {h.id for h in by_id}  # a photo of the index is not its own neighbour
    assert [h.id for h in by_id] == [h.id for h in s.search_id(row.id, k=3)]
    with pytest.raises(StoreError, match="no photo with id"):
        s.search(Query("id", id=10**9))
    with pytest.raises(ValueError, match="unknown query kind"):
        s.search(Query("sound"))


def test_the_query_photo_is_left_out_however_it_is_asked(index):
    s = Searcher(index)
    rows = {r.relpath: r for r in s.snapshot.iter_rows()}
    photo, copy = rows[b"img0003.jpg"], rows[b"copy.jpg"]
    with open(photo.path, "rb") as f:
        by_upload = s.answer(Query("image", image=f.read(), name="img0003.jpg"), k=4)
    by_id = s.answer(Query("id", id=photo.id), k=4)
    # an upload of an indexed photo finds what a search from that photo finds, itself and copies left out
    assert [h.id for h in by_upload.hits] == [h.id for h in by_id.hits]
    assert not {photo.id, copy.id} & {h.id for h in by_upload.hits}
    assert {r.id for r in by_upload.itself} == {photo.id, copy.id} == {r.id for r in by_id.itself}
    assert len(by_upload.hits) == 4
    fresh = s.answer(Query("image", image=_new_jpeg()), k=3)  # not in the index: nothing left out
    assert fresh.itself == [] and len(fresh.hits) == 3
    assert fresh.above(0) == fresh.hits
    assert fresh.above(2.0) == []
    with pytest.raises(StoreError, match="no photo with id"):
        s.answer(Query("id", id=10**9))


def _new_jpeg() -> bytes:
    import io

    from helpers import make_photo

    buf = io.BytesIO()
    make_photo(999).save(buf, "JPEG")
    return buf.getvalue()
