"""The CLI's query commands: many queries in one process, filters, dates and cameras in the
output, CSV results, exports, and the one-shot `imgembed similar` with its cached folder index."""

import csv
import json

import numpy as np
import pytest
from helpers import TINY, encode, make_photo, tiny_cfg, write_photos
from PIL import Image

from imgembed.api import folder_index_dir
from imgembed.cli import main
from imgembed.indexer import index_folder


def _exif(model: str, taken: str) -> bytes:
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Apple", model
    exif.get_ifd(0x8769)[0x9003] = taken
    return exif.tobytes()


@pytest.fixture
def library(tmp_path):
    """12 plain JPEGs under old/, 4 iPhone HEICs of 2023 under phone/, indexed with the tiny backbone."""
    root = tmp_path / "lib"
    write_photos(root / "old", 12)
    (root / "phone").mkdir()
    for i in range(4):
        data = encode(make_photo(20 + i, size=(160, 120)), "HEIF", exif=_exif("iPhone 15", f"2023:0{i + 1}:10 09:00:00"))
        (root / "phone" / f"IMG_{i}.HEIC").write_bytes(data)
    index_folder(root, tmp_path / "ix", tiny_cfg())
    return root, tmp_path / "ix"


def run(capsys, *argv):
    code = main(list(map(str, argv)))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_search_shows_date_and_camera(library, capsys):
    root, ix = library
    code, out, _ = run(capsys, "search", root / "phone" / "IMG_0.HEIC", "--index", ix, "-k", "16")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 16
    phone = [line for line in lines if "IMG_" in line]
    assert len(phone) == 4 and all("Apple iPhone 15" in line and " 2023-0" in line for line in phone)
    assert all("~" in line for line in lines if "/old/" in line)  # no EXIF: the file's date, marked


def test_filters_combine(library, capsys):
    root, ix = library
    q = root / "old" / "img0001.jpg"
    code, out, _ = run(capsys, "search", q, "--index", ix, "-k", "10", "--json", "--camera", "iphone",
                       "--after", "2023-02", "--before", "2023-04", "--ext", "heic", "--min-width", "150")
    hits = json.loads(out)
    assert code == 0 and sorted(h["path"].rsplit("/", 1)[1] for h in hits) == ["IMG_1.HEIC", "IMG_2.HEIC"]
    assert all(h["camera"] == "Apple iPhone 15" and h["taken_from"] == "exif" for h in hits)
    code, out, _ = run(capsys, "search", q, "--index", ix, "-k", "20", "--json", "--under", root / "old")
    assert len(json.loads(out)) == 12
    code, out, _ = run(capsys, "search", q, "--index", ix, "--json", "--under", "phone", "-k", "3")
    assert [h["path"].split("/")[-2] for h in json.loads(out)] == ["phone"] * 3


def test_bad_filters_are_one_line_errors(library, capsys):
    root, ix = library
    code, _, err = run(capsys, "search", root / "old" / "img0001.jpg", "--index", ix, "--after", "last week")
    assert code == 1 and err.startswith("error: after: expected a date") and err.count("\n") == 1


def test_many_queries_in_one_process_grouped(library, capsys, tmp_path):
    root, ix = library
    listing = tmp_path / "queries.txt"
    listing.write_text(f"{root / 'old' / 'img0002.jpg'}\n\n# a comment\n{tmp_path / 'missing.jpg'}\n")
    code, out, err = run(capsys, "search", root / "phone", "--from-list", listing, "--index", ix, "-k", "2", "--json")
    groups = json.loads(out)
    assert code == 0
    assert [g["query"].rsplit("/", 1)[1] for g in groups] == [f"IMG_{i}.HEIC" for i in range(4)] + [
        "img0002.jpg", "missing.jpg"]
    assert all(len(g["results"]) == 2 for g in groups[:5]) and "error" in groups[5]
    assert groups[0]["results"][0]["path"].endswith("IMG_0.HEIC")  # each query finds itself first
    assert "skipped query" in err and "5 of 6 queries answered" in err
    code, out, _ = run(capsys, "search", root / "phone" / "IMG_1.HEIC", root / "old" / "img0003.jpg",
                       "--index", ix, "-k", "1")
    assert code == 0 and out.count("query ") == 2 and len(out.strip().splitlines()) == 5


def test_batched_answers_equal_single_ones(library, capsys):
    root, ix = library
    queries = sorted((root / "old").glob("*.jpg"))[:5]
    code, out, _ = run(capsys, "search", *queries, "--index", ix, "-k", "3", "--json")
    batched = json.loads(out)
    for q, group in zip(queries, batched):
        code, out, _ = run(capsys, "search", q, "--index", ix, "-k", "3", "--json")
        single = json.loads(out)
        assert [h["id"] for h in group["results"]] == [h["id"] for h in single]
        np.testing.assert_allclose([h["score"] for h in group["results"]], [h["score"] for h in single], atol=1e-5)


def test_search_csv(library, capsys, tmp_path):
    root, ix = library
    out_csv = tmp_path / "hits.csv"
    code, _, _ = run(capsys, "search", root / "phone" / "IMG_0.HEIC", root / "old" / "img0000.jpg", "--index", ix,
                     "-k", "3", "--csv", out_csv)
    rows = list(csv.DictReader(out_csv.open()))
    assert code == 0 and len(rows) == 6 and rows[0]["rank"] == "1" and rows[0]["camera"] == "Apple iPhone 15"
    assert {r["query"] for r in rows} == {str(root / "phone" / "IMG_0.HEIC"), str(root / "old" / "img0000.jpg")}


def test_all_queries_failing_is_an_error(library, capsys, tmp_path):
    _, ix = library
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    code, _, err = run(capsys, "search", bad, tmp_path / "gone.jpg", "--index", ix)
    assert code == 1 and err.count("skipped query") == 2


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".npy"])
def test_export(library, capsys, tmp_path, suffix):
    root, ix = library
    out = tmp_path / f"all{suffix}"
    code, text, _ = run(capsys, "export", out, "--index", ix)
    assert code == 0 and "exported 16 photos (32-d vectors)" in text
    from imgembed.query.search import Searcher

    s = Searcher(ix)
    stored = s.snapshot.vectors(s.snapshot.visible_ids())
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        t = pq.read_table(out).to_pylist()
        assert len(t) == 16 and {r["ext"] for r in t} == {"jpg", "heic"}
        for r in t:
            np.testing.assert_array_equal(np.array(r["vector"], np.float32), stored[r["id"]])
        heic = next(r for r in t if r["ext"] == "heic")
        assert heic["camera"] == "Apple iPhone 15" and heic["taken"].startswith("2023-0") and heic["folder"] == "phone"
    else:
        meta = list(csv.DictReader((out if suffix == ".csv" else out.with_suffix(".csv")).open()))
        assert len(meta) == 16 and {m["taken_from"] for m in meta} == {"exif", "mtime"}
        if suffix == ".npy":
            arr = np.load(out)
            assert arr.shape == (16, 32)
            for i, m in enumerate(meta):
                np.testing.assert_array_equal(arr[i], stored[int(m["id"])])


def test_export_refuses_unknown_formats(library, capsys, tmp_path):
    _, ix = library
    code, _, err = run(capsys, "export", tmp_path / "x.xlsx", "--index", ix)
    assert code == 1 and ".parquet" in err


def test_similar_keeps_a_folder_index_in_the_cache(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "trip"
    paths = write_photos(folder, 9)
    monkeypatch.chdir(folder)
    code, out, err = run(capsys, "similar", paths[4].name, "--backbone", TINY, "-k", "3")
    assert code == 0 and "9 new" in err
    lines = out.splitlines()
    assert len(lines) == 3 and not any(paths[4].name in line for line in lines)  # the photo itself left out
    assert folder_index_dir(".", TINY).is_dir()
    write_photos(folder, 2, start=9)  # the second call only embeds what is new
    code, out2, err = run(capsys, "similar", paths[4], folder, "--backbone", TINY, "-k", "3", "--json")
    assert code == 0 and "found 11 images: 2 new, 9 unchanged;" in err
    assert len(json.loads(out2)) == 3
    code, _, err = run(capsys, "similar", paths[4], folder, "--backbone", TINY)
    assert code == 0 and "found 11 images: 11 unchanged;" in err


def test_similar_with_a_photo_from_elsewhere(tmp_path, capsys):
    folder = tmp_path / "trip"
    paths = write_photos(folder, 6)
    outside = tmp_path / "query.heic"
    outside.write_bytes(encode(Image.open(paths[2]).convert("RGB"), "HEIF", quality=95))
    code, out, _ = run(capsys, "similar", outside, folder, "--backbone", TINY, "-k", "1")
    assert code == 0 and out.strip().endswith(str(paths[2].resolve()))


def test_similar_by_text_needs_a_clip_backbone(tmp_path, capsys, tiny_clip):
    folder = tmp_path / "trip"
    write_photos(folder, 4)
    code, _, err = run(capsys, "similar", "--text", "a red square", folder, "--backbone", TINY)
    assert code == 1 and "text encoder" in err
    code, out, _ = run(capsys, "similar", "--text", "a red square", folder, "--backbone", tiny_clip, "-k", "2")
    assert code == 0 and len(out.splitlines()) == 2


def test_a_second_similar_call_imports_no_model_code(tmp_path, capsys):
    """Nothing to embed (the photo is indexed and unchanged): torch is never imported, which is
    most of the start-up time of a call."""
    import os
    import subprocess
    import sys

    from helpers import REPO

    folder = tmp_path / "trip"
    paths = write_photos(folder, 5)
    assert run(capsys, "similar", paths[1], folder, "--backbone", TINY)[0] == 0  # builds the cached index
    code = ("import sys\nfrom imgembed.cli import main\n"
            f"rc = main(['similar', {str(paths[1])!r}, {str(folder)!r}, '--backbone', {TINY!r}, '-k', '2'])\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch', rc)\n")
    r = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "no torch 0" and "5 unchanged" in r.stderr
