"""scripts/bench_cold_query.py: the phases of a cold query are measured and printed (no figure is
judged here), and commands that embed nothing are seen not to import torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY, write_photos

from imgembed.config import BackboneCfg, EmbedCfg, IndexJobCfg
from imgembed.indexer import index_folder

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_phases_script_runs_and_names_every_phase(tmp_path):
    photos = write_photos(tmp_path / "p", 4)
    ix = tmp_path / "ix"
    index_folder(tmp_path / "p", ix, IndexJobCfg(backbone=BackboneCfg(name=TINY), embed=EmbedCfg(workers=0)))
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_cold_query.py"), str(ix),
                          "--query", str(photos[0]), "--rounds", "1"],
                         capture_output=True, text=True, check=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    for phase in ("interpreter", "imports", "index open", "model build", "query", "total",
                  "imgembed --help", "imgembed search IMG (cold)"):
        assert phase in out.stdout, out.stdout
    assert "torch imported by --help: False; by info: False" in out.stdout
