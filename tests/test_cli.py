"""The command line, called through ``main(argv)``."""

import json

import pytest
from conftest import ASSETS, TINY

from imgembed.cli import main


def test_index_search_info(photos, tmp_path, capsys):
    ix = str(tmp_path / "ix")
    assert main(["index", str(photos), "--index", ix, "--backbone", TINY, "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "indexed 12" in out and "images/s" in out
    assert main(["index", str(photos), "--index", ix, "--backbone", TINY, "--workers", "0"]) == 0
    assert "indexed 0" in capsys.readouterr().out
    q = photos / "c2" / "img0005.jpg"
    assert main(["search", str(q), "--index", ix, "-k", "3", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 3 and hits[0]["path"].endswith("img0005.jpg") and hits[0]["score"] > 0.999
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert main(["info", "--index", ix, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 12 and info["dim"] == 32 and info["backbone"] == TINY


def test_user_errors_are_one_line(tmp_path, capsys):
    assert main(["info", "--index", str(tmp_path / "none")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: no index at") and "Traceback" not in err
    assert main(["index", str(tmp_path / "nofolder"), "--index", str(tmp_path / "ix"), "--backbone", TINY]) == 1
    assert "not a folder" in capsys.readouterr().err
    assert main(["index", str(tmp_path), "--index", str(tmp_path / "ix"), "--backbone", "nosuch"]) == 1
    assert "unknown backbone" in capsys.readouterr().err


def test_text_search_needs_clip(photos, tmp_path, capsys):
    ix = str(tmp_path / "ix")
    main(["index", str(photos), "--index", ix, "--backbone", TINY, "--workers", "0"])
    capsys.readouterr()
    assert main(["search", "a red hat", "--text", "--index", ix]) == 1
    assert "no text encoder" in capsys.readouterr().err


def test_text_search_with_a_clip_backbone(photos, tmp_path, capsys, tiny_clip):
    ix = str(tmp_path / "ix")
    assert main(["index", str(photos), "--index", ix, "--backbone", tiny_clip, "--workers", "0"]) == 0
    capsys.readouterr()
    assert main(["search", "a striped photo", "--text", "--index", ix, "-k", "4", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 4


def test_skipped_files_are_named_and_counted(photos, tmp_path, capsys):
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (photos / "empty.png").write_bytes(b"")
    ix = str(tmp_path / "ix")
    assert main(["index", str(photos), "--index", ix, "--backbone", TINY, "--workers", "0"]) == 0
    cap = capsys.readouterr()
    assert "skipped 2" in cap.out and "indexed 12" in cap.out
    assert "broken.jpg" in cap.err and "empty.png: empty file" in cap.err


def test_eval_on_labelled_folders(photos, capsys, tmp_path):
    out = tmp_path / "eval.json"
    assert main(["eval", "--gallery", str(photos), "--queries", str(photos), "--backbone", TINY,
                 "--workers", "0", "--json", str(out)]) == 0
    assert "mAP" in capsys.readouterr().out
    m = json.loads(out.read_text())["metrics"]
    assert m["n_queries"] == 12 and m["n_gallery"] == 12 and 0.0 <= m["mAP"] <= 1.0


@pytest.mark.slow
def test_default_backbone_on_the_sample_photos(tmp_path, capsys):
    """The real default backbone on real photos: a hat finds hats."""
    ix = str(tmp_path / "ix")
    assert main(["index", str(ASSETS), "--index", ix]) == 0
    assert "indexed 60" in capsys.readouterr().out
    q = sorted((ASSETS / "hat").glob("*.jpg"))[0]
    assert main(["search", str(q), "--index", ix, "-k", "5", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["path"] == str(q)
    assert sum("/hat/" in h["path"] for h in hits[1:]) >= 2
    assert main(["eval", "--gallery", str(ASSETS), "--queries", str(ASSETS)]) == 0
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("mAP")][0]
    assert float(line.split()[1]) > 40.0  # 5 balanced classes: chance is about 20
