"""The shape of the house: which layer may import which, one source for every choice list."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from imgembed import config
from imgembed.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "imgembed"

GROUND = {"config", "atomic", "errors", "identity", "text", "head_file"}
BELOW = {  # layer -> the layers it may import (besides itself)
    "ground": set(),
    "ingest": {"ground"},
    "model": {"ground", "ingest"},
    "index": {"ground"},
    "learn": {"ground", "ingest", "model", "index"},
    "query": {"ground", "ingest", "model", "index"},
    "indexer": {"ground", "ingest", "model", "index"},
    "distributed": {"ground", "ingest", "model", "index"},
    # the Python API (imgembed.open_index): queries, and keeping a folder's index up to date
    "api": {"ground", "ingest", "model", "index", "query", "indexer"},
    # the HTTP API: a front end like the CLI, over the Python API
    "serve": {"ground", "ingest", "model", "index", "query", "api"},
    "cli": {"ground", "ingest", "model", "index", "learn", "query", "indexer", "distributed", "api", "serve"},
    # the Streamlit app's views, which only app.py imports
    "ui": {"ground", "ingest", "index", "query", "indexer"},
}


def layer(module: str) -> str:
    """``imgembed.index.store`` -> ``index``; ``imgembed.config`` -> ``ground``."""
    parts = module.split(".")
    if len(parts) < 2:
        return "package"
    return "ground" if parts[1] in GROUND else parts[1]


def module_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every ``imgembed`` module a file imports (at any depth of the file), and other top-level names."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            if node.module == "imgembed":
                out.update(f"imgembed.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


LIBRARY = sorted(PKG.rglob("*.py"))


def test_every_library_module_has_a_layer():
    for path in LIBRARY:
        mod = module_of(path)
        assert mod == "imgembed" or layer(mod) in BELOW, f"{mod} is in no layer of the layout"


@pytest.mark.parametrize("path", LIBRARY, ids=[module_of(p) for p in LIBRARY])
def test_imports_follow_the_layers(path):
    mod = module_of(path)
    if mod == "imgembed":
        return
    own = layer(mod)
    for target in imports(path):
        if target.split(".")[0] in ("app", "scripts", "tests", "conftest", "helpers"):
            pytest.fail(f"{mod} imports {target}: nothing imports the app, the scripts or the tests")
        if not target.startswith("imgembed.") or target == "imgembed":
            continue
        other = layer(target)
        assert other == own or other in BELOW[own], f"{mod} ({own}) imports {target} ({other})"


def test_nothing_imports_the_cli():
    for path in LIBRARY:
        if module_of(path) != "imgembed.cli":
            assert "imgembed.cli" not in imports(path), f"{module_of(path)} imports the CLI"
    for path in (ROOT / "scripts").glob("*.py"):  # scripts sit at the top: they import no app or script
        assert not {t for t in imports(path) if t.split(".")[0] in ("app", "scripts")}, path


def test_the_index_layer_never_imports_torch():
    code = ("import sys\n"
            "import imgembed.index.format, imgembed.index.store, imgembed.index.snapshot, "
            "imgembed.index.faiss_index, imgembed.index.verify\n"
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('imgembed.') and "
            "m.split('.')[1] not in ('index', 'config', 'atomic', 'errors', 'identity', 'head_file')]\n"
            "print(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def _choices(parser, command: str, option: str) -> tuple:
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    action = next(a for a in sub._actions if option in a.option_strings)
    return tuple(action.choices) if action.choices is not None else None


def test_argparse_choices_come_from_the_config_lists():
    p = build_parser()
    for command in ("index", "build-index"):
        assert _choices(p, command, "--index-type") == ("auto", *config.INDEX_TYPES)
    assert "ivf" in _choices(p, "build-index", "--index-type")  # what auto picks beyond 50k photos
    for command in ("index", "eval", "train-head"):
        assert _choices(p, command, "--pool") == config.POOLS
        assert _choices(p, command, "--compile") == config.COMPILE_MODES
        assert _choices(p, command, "--runtime") == config.RUNTIMES
    assert _choices(p, "train-head", "--labels") == config.LABEL_MODES
    assert _choices(p, "train-head", "--loss") == config.LOSSES
    assert _choices(p, "duplicates", "--preset") == config.DUPLICATE_PRESETS


def test_each_choice_list_is_what_its_implementation_accepts():
    from imgembed.index.faiss_index import choose_type
    from imgembed.learn.losses import create_loss
    from imgembed.model.embedder import compile_mode, pick_device, pick_dtype

    for kind in config.INDEX_TYPES:
        assert choose_type(config.IndexCfg(index_type=kind), 10) == kind
    with pytest.raises(ValueError, match="unknown index type"):
        choose_type(config.IndexCfg(index_type="annoy"), 10)
    for name in config.LOSSES:
        assert create_loss(name, 8, 3) is not None
    from imgembed.query.copies import PRESETS

    assert tuple(PRESETS) == config.DUPLICATE_PRESETS
    with pytest.raises(ValueError, match="unknown loss"):
        create_loss("arcface", 8, 3)
    for mode in config.COMPILE_MODES:
        assert compile_mode(mode) == mode
    for precision in config.PRECISIONS:
        pick_dtype(pick_device("cpu"), precision)
    assert config.check_device("cuda:1") == "cuda:1"
    for bad in ("nonsense", "cpu:1", "cuda:x"):
        with pytest.raises(ValueError, match="unknown device"):
            config.check_device(bad)


def test_one_default_index_folder(monkeypatch):
    monkeypatch.delenv("IMGEMBED_INDEX", raising=False)
    assert config.default_index() == config.DEFAULT_INDEX
    monkeypatch.setenv("IMGEMBED_INDEX", "/somewhere/ix")
    assert config.default_index() == "/somewhere/ix"
    index = next(a for a in next(a for a in build_parser()._actions if a.dest == "command").choices["search"]._actions
                 if "--index" in a.option_strings)
    assert index.default == "/somewhere/ix"
    assert "default_index" in (ROOT / "app.py").read_text()  # the app asks the same function
