"""Start the Streamlit app on the first free port from 8501 and say where it is: ``make demo`` runs this.

    python scripts/run_app.py [--index DIR] [--first-port 8501] [streamlit options ...]

Streamlit itself moves to the next port when 8501 is taken, in a line among its others; this prints
the address first, in one line of its own, and names the port that was busy.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app.py"


def free_port(first: int, host: str = "localhost", tries: int = 100) -> int:
    """The first port from ``first`` that nothing listens on at ``host``."""
    for port in range(first, first + tries):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise SystemExit(f"run_app: no free port in {first}-{first + tries - 1}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--index", help="index folder to open (default: $IMGEMBED_INDEX, else ./imgembed-index)")
    p.add_argument("--first-port", type=int, default=8501)
    p.add_argument("--host", default="localhost")
    a, rest = p.parse_known_args()
    port = free_port(a.first_port, a.host)
    busy = f" (port {a.first_port} is in use{'' if port == a.first_port + 1 else f', and so are the next {port - a.first_port - 1}'})" \
        if port != a.first_port else ""
    print(f"imgembed: the app is at http://{a.host}:{port}{busy}", flush=True)
    if a.index:
        os.environ["IMGEMBED_INDEX"] = a.index
    argv = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
            "--server.address", a.host, *rest]
    os.execv(sys.executable, argv)


if __name__ == "__main__":
    main()
