"""Where a cold ``imgembed search IMG`` spends its time, phase by phase, each in a fresh process.

    python scripts/bench_cold_query.py [INDEX] [--query IMG] [--rounds 3] [--checkout DIR]

INDEX defaults to an index of the 60 sample photos (assets/photos), built under /tmp on the first
run. Prints the best of ``--rounds`` fresh processes for:
  interpreter     ``python -c pass``
  --help          ``imgembed --help``
  info            ``imgembed info`` on the index
  search          ``imgembed search IMG`` on the index: the whole cold query
  search, no exported model   the same on a machine without the exported query model (an empty
                  cache folder): the backbone built in torch, and exported for the next query
and the phases inside one cold query (interpreter start, imports, index open, model build,
the query: decode, embed, search), and whether ``--help`` and ``info`` imported torch.
``--checkout DIR`` runs the same from another checkout (the commit before a change, say).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "assets" / "photos"

# Run in a fresh interpreter: times each phase of one query, as `imgembed search` goes through them.
PHASES = r"""
import time
t_start = time.time()
import json, sys
from pathlib import Path
out = {"interpreter": t_start - float(sys.argv[1])}
t = time.perf_counter()
import imgembed.cli
from imgembed.api import open_index
out["imports"] = time.perf_counter() - t
t = time.perf_counter()
ix = open_index(sys.argv[2])
ix.info()
out["index open"] = time.perf_counter() - t
t = time.perf_counter()
ix.searcher.embedder
out["model build"] = time.perf_counter() - t
t = time.perf_counter()
hits = ix.search(Path(sys.argv[3]), 10)
out["query"] = time.perf_counter() - t
assert hits
out["torch loaded"] = "torch" in sys.modules
out["imgembed from"] = imgembed.cli.__file__
print(json.dumps(out))
"""

TORCH_CHECK = "import runpy, sys; sys.argv = ['imgembed'] + sys.argv[1:]\ntry:\n    runpy.run_module('imgembed.cli', run_name='__main__')\nexcept SystemExit:\n    pass\nprint('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)"


CHECKOUT = [ROOT]  # the imgembed that the commands run: this one, or --checkout


def env(**extra: str) -> dict:
    return dict(os.environ, PYTHONPATH=str(CHECKOUT[0]), **extra)


# ``python -m`` and ``-c`` put the working directory first on sys.path: run them from one that holds
# no imgembed, so that PYTHONPATH decides which checkout runs.
CWD = tempfile.gettempdir()


def best_wall(cmd: list[str], rounds: int, empty_cache: bool = False) -> float:
    """The quickest of ``rounds`` runs; ``empty_cache``: each with an empty cache folder of its own."""
    times = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as empty:
            extra = {"IMGEMBED_CACHE_DIR": empty} if empty_cache else {}
            t = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, env=env(**extra), cwd=CWD)
        times.append(time.perf_counter() - t)
    return min(times)


def loads_torch(args: list[str]) -> bool:
    r = subprocess.run([sys.executable, "-c", TORCH_CHECK, *args], capture_output=True, text=True, env=env(),
                       cwd=CWD)
    return "NO-TORCH" not in r.stderr


def demo_index() -> Path:
    ix = Path(tempfile.gettempdir()) / "imgembed-bench-demo-index"
    if not (ix / "manifest.json").exists():
        print(f"indexing the sample photos into {ix} ...", flush=True)
        subprocess.run([sys.executable, "-m", "imgembed.cli", "index", str(SAMPLES), "--index", str(ix),
                        "--no-progress"], check=True, env=env(), capture_output=True, cwd=CWD)
    return ix


# The query model an index job writes (imgembed.model.onnx_export), written here for an index built
# before it existed; a checkout without it skips this.
EXPORT = r"""
import sys
from imgembed.config import BackboneCfg
from imgembed.index.format import read_manifest
from imgembed.identity import raw_identity
try:
    from imgembed.model.onnx_export import exported_model
except ImportError:
    sys.exit(0)
from imgembed.model.backbones import create_backbone
m = raw_identity(read_manifest(sys.argv[1]))
exported_model(create_backbone(BackboneCfg(name=m["backbone"], pool=m.get("pool") or "gem")))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("index", nargs="?", type=Path)
    p.add_argument("--query", type=Path, help="query image (default: the first sample photo)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--checkout", type=Path, help="run the imgembed of this checkout instead")
    a = p.parse_args(argv)
    if a.checkout:
        CHECKOUT[0] = a.checkout.resolve()
    ix = a.index or demo_index()
    subprocess.run([sys.executable, "-c", EXPORT, str(ix)], check=True, env=env(), cwd=CWD)
    query = a.query or sorted(SAMPLES.rglob("*.jpg"))[0]
    cli = [sys.executable, "-m", "imgembed.cli"]
    print(f"imgembed from {CHECKOUT[0]}; index {ix}; query {query}; best of {a.rounds} fresh processes; "
          f"load {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    rows = [("interpreter (python -c pass)", best_wall([sys.executable, "-c", "pass"], a.rounds)),
            ("imgembed --help", best_wall([*cli, "--help"], a.rounds)),
            ("imgembed info", best_wall([*cli, "info", "--index", str(ix)], a.rounds)),
            ("imgembed search IMG (cold)", best_wall([*cli, "search", str(query), "--index", str(ix)], a.rounds))]
    rows.append(("search, no exported model", best_wall([*cli, "search", str(query), "--index", str(ix)],
                                                         a.rounds, empty_cache=True)))
    for name, s in rows:
        print(f"{name:32s} {s:6.2f} s")
    phases = []
    for _ in range(a.rounds):
        r = subprocess.run([sys.executable, "-c", PHASES, repr(time.time()), str(ix), str(query)],
                           capture_output=True, text=True, env=env(), check=True, cwd=CWD)
        phases.append(json.loads(r.stdout.strip().splitlines()[-1]))
    timed = [{k: v for k, v in ph.items() if isinstance(v, float)} for ph in phases]
    quickest = min(timed, key=lambda ph: sum(ph.values()))
    print(f"phases of the quickest cold query (seconds; imgembed from {phases[0]['imgembed from']}):")
    for name, v in quickest.items():
        print(f"  {name:14s} {v:6.2f}")
    print(f"  {'total':14s} {sum(quickest.values()):6.2f}   (torch imported: {phases[0]['torch loaded']})")
    print(f"torch imported by --help: {loads_torch(['--help'])}; by info: "
          f"{loads_torch(['info', '--index', str(ix)])}; load {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
