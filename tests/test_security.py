"""Security: heads are never unpickled, and a hostile manifest gives a one-line error in every command."""

from __future__ import annotations

import json
import os
import pickle
import re

import pytest
from helpers import TINY
from helpers import tiny_cfg as cfg

from imgembed import cli
from imgembed.indexer import index_folder
from imgembed.model.head import HeadError, load_head


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_in_place_of_a_head_is_refused(tmp_path, photos, capsys):
    marker = tmp_path / "pwned"
    head = tmp_path / "evil.safetensors"
    head.write_bytes(pickle.dumps(_Evil(str(marker))))
    (tmp_path / "evil.json").write_text(json.dumps({"format": 1, "cfg": {"in_dim": 32, "out_dim": 8}}))
    with pytest.raises(HeadError, match="not a safetensors file"):
        load_head(head)
    import torch  # a torch.save checkpoint (a zip of pickles) is refused the same way

    torch.save({"proj.weight": torch.zeros(8, 32), "evil": _Evil(str(marker))}, head)
    with pytest.raises(HeadError, match="not a safetensors file"):
        load_head(head)
    rc = cli.main(["index", str(photos), "--index", str(tmp_path / "ix"), "--backbone", TINY,
                   "--head", str(head), "--workers", "0", "--no-progress"])
    assert rc == 1 and "not a safetensors file" in capsys.readouterr().err
    assert not marker.exists()


HOSTILE = [
    ("[1, 2, 3]", "expected a JSON object"),
    ('{"format_version": 1, "dim": true, "backbone": "test-tiny", "metric": "cosine", "preprocess": {}}', "dim must"),
    ('{"format_version": 1, "dim": -5, "backbone": "test-tiny", "metric": "cosine", "preprocess": {}}', "dim must"),
    ('{"format_version": 1, "dim": 1e999, "backbone": "x", "metric": "cosine", "preprocess": {}}', "dim must"),
    ('{"format_version": "1", "dim": 32}', "format_version"),
    ("PATCH", "head must be null"),
    ("CFG", "index_cfg has unknown or mistyped keys"),
    ("DIM", "holds 32-d vectors but the manifest says 16|differs in: dim"),  # verify: not repairable
    ('{"format_version": 1, "x": ' + "[" * 100_000, "not valid JSON"),  # nesting beyond recursion
    ("\udcff", "not valid JSON"),
]


@pytest.mark.parametrize("text,message", HOSTILE, ids=[str(i) for i in range(len(HOSTILE))])
def test_hostile_manifest_gives_a_clear_error_in_every_command(photos, tmp_path, capsys, text, message):
    ix = tmp_path / "ix"
    index_folder(photos, ix, cfg())
    good = json.loads((ix / "manifest.json").read_text())
    if text == "PATCH":
        text = json.dumps({**good, "head": "../../../etc/passwd"})
    elif text == "CFG":
        text = json.dumps({**good, "index_cfg": {"hnsw_m": "many", "__class__": 1}})
    elif text == "DIM":
        text = json.dumps({**good, "dim": 16})
    (ix / "manifest.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    capsys.readouterr()
    query = str(next(photos.rglob("*.jpg")))
    for argv in (["info"], ["search", query], ["verify"],
                 ["index", str(photos), "--backbone", TINY, "--workers", "0", "--no-progress"]):
        rc = cli.main(argv + ["--index", str(ix)])
        out, err = capsys.readouterr()
        assert rc == 1, (argv, out, err)
        assert re.search(message, out + err) and "Traceback" not in err, (argv, out, err)
