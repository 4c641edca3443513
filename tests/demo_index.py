"""The demo index for the app's tests, built once per test session from ``assets/photos``.

A plain module (not a fixture file) so that AppTest and browser tests share one build: both call
:func:`demo_index` and the first call pays for it.
"""

from __future__ import annotations

from pathlib import Path

from helpers import ASSETS

from imgembed.config import EmbedCfg, IndexJobCfg

_built: dict[str, Path] = {}


def demo_index(tmp_path_factory) -> Path:
    """An index of the 60 sample photos with the real default backbone (efficientnet-lite0)."""
    if "demo" not in _built:
        from imgembed.indexer import index_folder

        ix = tmp_path_factory.mktemp("demo") / "demo-index"
        summary = index_folder(ASSETS, ix, IndexJobCfg(embed=EmbedCfg(workers=0)))
        assert summary.total == 60, summary.lines()
        _built["demo"] = ix
    return _built["demo"]
