"""``--mmap`` on search and info: the memory-mapped index answers exactly like the loaded one."""

import json

from helpers import TINY

from imgembed.cli import main


def test_search_and_info_with_mmap(photos, tmp_path, capsys):
    ix = str(tmp_path / "ix")
    assert main(["index", str(photos), "--index", ix, "--backbone", TINY, "--workers", "0",
                 "--index-type", "ivf"]) == 0
    capsys.readouterr()
    q = str(photos / "c1" / "img0004.jpg")
    assert main(["search", q, "--index", ix, "-k", "5", "--json"]) == 0
    loaded = json.loads(capsys.readouterr().out)
    assert main(["search", q, "--index", ix, "-k", "5", "--json", "--mmap"]) == 0
    mapped = json.loads(capsys.readouterr().out)
    assert mapped == loaded and mapped[0]["path"].endswith("img0004.jpg")
    assert main(["info", "--index", ix, "--json", "--mmap"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["count"] == 12 and info["index_type"] == "ivf"
