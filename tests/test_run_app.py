"""``make demo`` starts the app through scripts/run_app.py, which says where the app is, also when
the usual port is taken."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from helpers import REPO

pytestmark = pytest.mark.slow  # starts a real Streamlit server


def test_the_demo_says_which_address_the_app_took(tmp_path):
    with socket.socket() as busy:
        busy.bind(("localhost", 0))
        busy.listen()
        port = busy.getsockname()[1]  # taken, as 8501 is when another app runs
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "scripts" / "run_app.py"), "--index", str(tmp_path / "ix"),
             "--first-port", str(port), "--server.headless", "true", "--server.fileWatcherType", "none"],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            first = proc.stdout.readline().strip()
            m = re.fullmatch(r"imgembed: the app is at (http://localhost:(\d+))( \(port (\d+) is in use.*\))", first)
            assert m, first
            url, got, was = m.group(1), int(m.group(2)), int(m.group(4))
            assert got > port and was == port
            deadline = time.monotonic() + 90
            while True:  # the app answers at the address printed
                try:
                    with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                        assert r.read() == b"ok"
                        break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline, "the app did not start"
                    time.sleep(0.5)
        finally:
            proc.terminate()
            proc.wait(10)
