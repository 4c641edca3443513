"""Libraries' own warnings (FAISS clustering notes, Ray's start-up, plan and deprecation lines) stay off
the user's terminal; ``imgembed -v`` shows them."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from helpers import REPO, TINY, write_photos

from imgembed.cli import main


def test_ivfpq_training_prints_no_faiss_warnings(tmp_path, capfd, caplog):
    folder = tmp_path / "photos"
    write_photos(folder, 300)  # far fewer than the 39 x 256 points faiss asks of a PQ codebook
    with caplog.at_level(logging.INFO, logger="imgembed"):
        assert main(["index", str(folder), "--index", str(tmp_path / "ix"), "--backbone", TINY, "--workers", "0",
                     "--index-type", "ivfpq"]) == 0
    out, err = capfd.readouterr()  # file descriptors: faiss writes to fd 2 from C++
    assert "WARNING clustering" not in err and "index type ivfpq" in out, err
    assert err == ""
    notes = [r.getMessage() for r in caplog.records if r.name == "imgembed.index.faiss_index"]
    assert notes == ["IVF-PQ codebooks trained on 300 points (faiss suggests at least 9984)"]


def _cli(*argv: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "imgembed.cli", *argv], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=600)


@pytest.mark.slow
def test_the_ray_engine_keeps_rays_lines_off_the_terminal(tmp_path):
    pytest.importorskip("ray", reason="the Ray engine is the optional extra imgembed[ray]")
    folder = tmp_path / "photos"
    write_photos(folder, 8)
    run = _cli("index", str(folder), "--engine", "ray", "--shards-out", str(tmp_path / "shards"),
               "--index", str(tmp_path / "ix"), "--backbone", TINY, "--device", "cpu", "--batch-size", "4")
    assert run.returncode == 0, run.stderr
    assert run.stderr == "", run.stderr  # no start-up, token, plan, deprecation or actor lines
    assert "embedded 8, skipped 0 of 8 files" in run.stdout and "8 images in the index" in run.stdout
