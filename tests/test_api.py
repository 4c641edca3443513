"""The Python API (imgembed.open_index): the README's example runs as written, and each entry point
answers like the library underneath."""

import os
import re
import shutil
import subprocess
import sys

import pytest
from helpers import ASSETS, REPO, TINY, tiny_cfg, write_photos
from PIL import Image

import imgembed
from imgembed.index.format import StoreError
from imgembed.indexer import index_folder
from imgembed.ingest.reader import ImageSkipped


def readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs(tmp_path):
    code = readme_example()
    assert len(code.strip().splitlines()) <= 11  # the ten-line example, plus its import
    (tmp_path / "assets").symlink_to(ASSETS.parent)
    index_folder(ASSETS, tmp_path / "demo-index", tiny_cfg())  # `make demo`'s index, tiny backbone
    (tmp_path / "example.py").write_text(code)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "60 photos"
    assert len(lines) == 7 and "2a12baab-f020-42e3-8e6b-5d82e3ed0b55.jpg" in lines[1]
    assert lines[1].startswith("1.000")
    assert re.match(r"3 neighbours; \d+ groups of copies", lines[-1])


@pytest.fixture
def ix(tmp_path):
    folder = tmp_path / "photos"
    paths = write_photos(folder, 9, classes=True)
    shutil.copy(paths[0], folder / "copy.jpg")
    index_folder(folder, tmp_path / "ix", tiny_cfg())
    with imgembed.open_index(tmp_path / "ix") as index:
        yield index, paths, folder


def test_every_kind_of_image_query_agrees(ix):
    index, paths, _ = ix
    by_path = [h.id for h in index.search(paths[4], k=4)]
    by_str = [h.id for h in index.search(str(paths[4]), k=4)]
    by_bytes = [h.id for h in index.search(paths[4].read_bytes(), k=4)]
    by_pil = [h.id for h in index.search(Image.open(paths[4]), k=4)]
    me = index.photo(paths[4]).id
    by_id = [h.id for h in index.search(me, k=4)]
    assert by_path == by_str == by_bytes == by_id and by_id[0] == me
    assert by_pil[0] == me


def test_neighbours_duplicates_and_photos(ix):
    index, paths, folder = ix
    nb = index.neighbours(str(paths[0]), k=3)
    assert len(nb) == 3 and nb[0].path == str((folder / "copy.jpg").resolve())
    assert index.photo(paths[0]).id not in {h.id for h in nb}
    groups = index.duplicates(threshold=0.999)
    group = next(g for g in groups if str(paths[0].resolve()) in {p.path for p in g.photos})
    assert str((folder / "copy.jpg").resolve()) in {p.path for p in group.photos}  # (the tiny backbone
    assert group.score >= 0.999 and group.keeper == group.photos[0].id  # groups more than copies)
    copies = index.duplicates()  # the copies preset: the byte copy and nothing else
    pair = {str(paths[0].resolve()), str((folder / "copy.jpg").resolve())}
    assert [{p.path for p in g.photos} for g in copies] == [pair]
    assert copies[0].kind == "identical bytes" and copies[0].reason
    assert len(list(index.photos())) == index.info().count == 10
    assert index.filter_choices()["folders"] == ["", "c0", "c1", "c2"]


def test_filters_as_a_dict_or_object(ix):
    index, paths, _ = ix
    a = index.search(paths[1], k=10, filters={"under": "c1"})
    b = index.search(paths[1], k=10, filters=imgembed.Filters(under="c1"))
    assert [h.id for h in a] == [h.id for h in b] and len(a) == 3
    with pytest.raises(ValueError, match="unknown filter"):
        index.search(paths[1], filters={"folder": "c1"})


def test_errors_say_what_is_wrong(ix, tmp_path):
    index, _, _ = ix
    with pytest.raises(FileNotFoundError):
        index.search("holiday/missing.jpg")
    with pytest.raises(ValueError, match="text encoder"):
        index.search("a dog on a beach")
    with pytest.raises(ImageSkipped):
        index.search(b"not an image")
    with pytest.raises(StoreError):
        index.neighbours(999_999)
    with pytest.raises(StoreError, match="no index"):
        imgembed.open_index(tmp_path / "nowhere")


def test_text_queries_with_a_clip_backbone(tmp_path, tiny_clip):
    write_photos(tmp_path / "p", 5)
    from imgembed.config import BackboneCfg, IndexJobCfg

    cfg = IndexJobCfg(backbone=BackboneCfg(name=tiny_clip))
    cfg.embed.workers = 0
    index_folder(tmp_path / "p", tmp_path / "ix", cfg)
    with imgembed.open_index(tmp_path / "ix") as index:
        hits = index.search("a red square", k=3)
        assert len(hits) == 3
        many = list(index.search_many(["a red square", "stripes"], k=2, text=True))
        assert [h.id for h in many[0].hits] == [h.id for h in hits[:2]]


def test_open_folder_updates_the_cached_index(tmp_path):
    folder = tmp_path / "trip"
    write_photos(folder, 4)
    index, summary = imgembed.open_folder(folder, backbone=TINY)
    assert summary.indexed == 4 and index.info().count == 4
    index.close()
    write_photos(folder, 1, start=4)
    index, summary = imgembed.open_folder(folder, backbone=TINY)
    assert (summary.indexed, summary.unchanged) == (1, 4)
    assert str(index.path).startswith(os.environ["IMGEMBED_CACHE_DIR"])  # in the (test's) user cache
    assert index.info().count == 5
    index.close()
