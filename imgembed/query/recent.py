"""Which index the app opens, and the ones it opened recently: a small settings file.

An index opened or built from the page stays open: the page's address carries it (``?index=``, so a
reload keeps it) and the settings file (:func:`imgembed.config.settings_path`) remembers it for new
tabs and restarts, until the app is started with another ``$IMGEMBED_INDEX``, which then wins.
The file is JSON, written atomically; a missing or damaged one reads as empty, never as an error.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from imgembed.atomic import atomic_write_json
from imgembed.config import settings_path
from imgembed.index.format import MANIFEST

logger = logging.getLogger(__name__)

RECENT_MAX = 8  # indexes listed in the app's sidebar


@dataclass
class AppSettings:
    current: str | None = None  # the index last opened from the page
    launched_with: str | None = None  # $IMGEMBED_INDEX of the app that opened it
    recent: list[str] = field(default_factory=list)  # newest first, absolute paths


@dataclass
class RecentIndex:
    path: str
    exists: bool  # still an index (its manifest is there)


def load_settings(path: str | Path | None = None) -> AppSettings:
    """The settings at ``path`` (default :func:`settings_path`); defaults when absent or unreadable."""
    path = Path(path or settings_path())
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return AppSettings()
    if not isinstance(raw, dict):
        return AppSettings()
    recent = [p for p in raw.get("recent", []) if isinstance(p, str)] if isinstance(raw.get("recent"), list) else []
    text = {k: raw.get(k) if isinstance(raw.get(k), str) else None for k in ("current", "launched_with")}
    return AppSettings(text["current"], text["launched_with"], recent[:RECENT_MAX])


def save_settings(settings: AppSettings, path: str | Path | None = None) -> bool:
    """Write ``settings`` atomically; False (and a log line) when the file cannot be written."""
    path = Path(path or settings_path())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, asdict(settings))
    except OSError as e:
        logger.warning("cannot save the app's settings to %s: %s", path, e.strerror or e)
        return False
    return True


def remember(index_dir: str | Path, env_index: str | None, path: str | Path | None = None) -> AppSettings:
    """Record ``index_dir`` as the open index (first of the recent ones) and save; the new settings."""
    s = load_settings(path)
    full = os.path.abspath(index_dir)
    s.current, s.launched_with = full, env_index
    s.recent = [full, *(p for p in s.recent if p != full)][:RECENT_MAX]
    save_settings(s, path)
    return s


def index_to_open(url_index: str | None, settings: AppSettings, env_index: str | None, default: str) -> str:
    """The index a page opens: the one in its address; else the one last opened from the page, unless
    the app was started with another ``$IMGEMBED_INDEX``; else that variable's, else ``default``."""
    if url_index:
        return url_index
    if settings.current and settings.launched_with == env_index:
        return settings.current
    return env_index or default


def is_index(path: str | Path) -> bool:
    """Whether an index is there (its manifest), readable or not."""
    return (Path(path) / MANIFEST).is_file()


def recent_indexes(settings: AppSettings) -> list[RecentIndex]:
    """The recently opened indexes, newest first, each marked whether it is still there."""
    return [RecentIndex(p, is_index(p)) for p in settings.recent]


def index_for_page(url_index: str | None, fallback: str, path: str | Path | None = None) -> str:
    """:func:`index_to_open` with this process's ``$IMGEMBED_INDEX`` and the saved settings;
    ``fallback`` (:func:`imgembed.config.default_index`) when neither names one."""
    return index_to_open(url_index, load_settings(path), os.environ.get("IMGEMBED_INDEX") or None, fallback)


def opened(index_dir: str | Path, path: str | Path | None = None) -> AppSettings:
    """The page opened ``index_dir``: remember it (written only when something changed)."""
    s = load_settings(path)
    full = os.path.abspath(index_dir)
    env = os.environ.get("IMGEMBED_INDEX") or None
    if s.current == full and s.launched_with == env and s.recent[:1] == [full]:
        return s
    return remember(full, env, path)
