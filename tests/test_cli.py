"""The command line, called through ``main(argv)``."""

import json
import os

import numpy as np
import pytest
from helpers import ASSETS, TINY, plain_metrics

from imgembed.cli import main
from imgembed.query.search import Searcher


def test_index_search_info(photos, tmp_path, capsys):
    ix = str(tmp_path / "ix")
    assert main(["index", str(photos), "--index", ix, "--backbone", TINY, "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "found 12 images: 12 new; 12 images in the index" in out and "images/s" in out
    assert main(["index", str(photos), "--index", ix, "--backbone", TINY, "--workers", "0"]) == 0
    assert "found 12 images: 12 unchanged; 12 images in the index" in capsys.readouterr().out
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
    assert "no such folder" in capsys.readouterr().err
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
    hits = json.loads(capsys.readouterr().out)
    # the four photos whose stored vectors are nearest the text's vector, best first, scores exact
    s = Searcher(ix)
    text = s.embedder.embed_text(["a striped photo"])[0]
    rows = {os.fsdecode(r.path): r.id for r in s.snapshot.iter_rows()}
    vecs = s.snapshot.vectors(rows.values())
    exact = sorted(((float(vecs[i] @ text), p) for p, i in rows.items()), reverse=True)[:4]
    assert [h["path"] for h in hits] == [p for _, p in exact]
    np.testing.assert_allclose([h["score"] for h in hits], [sc for sc, _ in exact], atol=1e-5)


def test_skipped_files_are_named_and_counted(photos, tmp_path, capsys):
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (photos / "empty.png").write_bytes(b"")
    ix = str(tmp_path / "ix")
    assert main(["index", str(photos), "--index", ix, "--backbone", TINY, "--workers", "0"]) == 0
    cap = capsys.readouterr()
    assert "found 14 images: 12 new, 2 skipped;" in cap.out
    assert "broken.jpg" in cap.err and "empty.png: empty file" in cap.err


def test_eval_on_labelled_folders(photos, capsys, tmp_path):
    out = tmp_path / "eval.json"
    assert main(["eval", "--gallery", str(photos), "--queries", str(photos), "--backbone", TINY,
                 "--workers", "0", "--json", str(out)]) == 0
    assert "mAP" in capsys.readouterr().out
    m = json.loads(out.read_text())["metrics"]
    assert m["n_queries"] == 12 and m["n_gallery"] == 12
    # the same figures from the photos' own vectors, each query's own file left out, by a plain loop
    ap, p5, r1 = plain_metrics(photos)
    assert m["mAP"] == pytest.approx(ap, abs=1e-6)
    assert m["P@5"] == pytest.approx(p5, abs=1e-6) and m["R@1"] == pytest.approx(r1, abs=1e-6)


@pytest.mark.slow
def test_default_backbone_on_the_sample_photos(tmp_path, capsys):
    """The real default backbone on real photos: a hat finds hats."""
    ix = str(tmp_path / "ix")
    assert main(["index", str(ASSETS), "--index", ix]) == 0
    assert "found 60 images: 60 new;" in capsys.readouterr().out
    q = sorted((ASSETS / "hat").glob("*.jpg"))[0]
    assert main(["search", str(q), "--index", ix, "-k", "5", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["path"] == str(q)
    assert sum("/hat/" in h["path"] for h in hits[1:]) >= 2
    assert main(["eval", "--gallery", str(ASSETS), "--queries", str(ASSETS)]) == 0
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("mAP")][0]
    assert float(line.split()[1]) > 40.0  # 5 balanced classes: chance is about 20


@pytest.mark.parametrize("command", ["index", "eval", "train-head"])
def test_progress_follows_one_rule(photos, tmp_path, capsys, monkeypatch, command):
    """Bars on stderr when $IMGEMBED_PROGRESS is 1 (stderr is no terminal here), never with --no-progress."""
    base = {"index": ["index", str(photos), "--index", str(tmp_path / "ix")],
            "eval": ["eval", "--gallery", str(photos), "--queries", str(photos)],
            "train-head": ["train-head", str(photos), "--out", str(tmp_path / "h"), "--dim", "4", "--epochs", "1"]}
    args = base[command] + ["--backbone", TINY, "--workers", "0"]
    monkeypatch.setenv("IMGEMBED_PROGRESS", "1")
    assert main(args) == 0
    assert "12/12" in capsys.readouterr().err  # the bar reached every photo
    monkeypatch.setenv("IMGEMBED_CACHE_DIR", str(tmp_path / "other-cache"))
    if command == "index":
        args[3] = str(tmp_path / "ix2")
    assert main(args + ["--no-progress"]) == 0
    assert "12/12" not in capsys.readouterr().err
    monkeypatch.delenv("IMGEMBED_PROGRESS")
    assert main(args) == 0
    assert "12/12" not in capsys.readouterr().err
